"""Safe, cached extraction of dataset zip archives downloaded from the internet."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from vlsafe.errors import DataError

logger = logging.getLogger(__name__)


def cache_root() -> Path:
    """Where vlsafe keeps extracted archives: $VLSAFE_CACHE, else ~/.cache/vlsafe."""
    return Path(os.environ.get("VLSAFE_CACHE", Path.home() / ".cache" / "vlsafe"))


def _unsafe_member_reason(info: zipfile.ZipInfo) -> str | None:
    name = info.filename.replace("\\", "/")
    path = PurePosixPath(name)
    if path.is_absolute() or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in path.parts:
        return "path climbs out with '..'"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link"
    return None


def extract_zip(zip_path: str | Path) -> Path:
    """Extract `zip_path` once into the vlsafe cache and return the folder.

    Keyed by the archive's path, size and modification time, so a re-downloaded archive is extracted
    again. Members that would land outside the folder (absolute paths, '..', symlinks) are refused
    before anything is written; extraction goes to a temporary folder renamed into place at the end,
    so an interrupted run never leaves a half-extracted cache behind.
    """
    zip_path = Path(zip_path).resolve()
    status = zip_path.stat()
    key = hashlib.sha256(f"{zip_path}|{status.st_size}|{status.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_root() / "extracted" / f"{zip_path.stem}-{key}"
    if target.is_dir():
        return target
    try:
        archive = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile:
        raise DataError(
            f"{zip_path} is not a valid zip archive (corrupt or truncated download?); delete it and download again."
        ) from None
    with archive:
        for info in archive.infolist():
            reason = _unsafe_member_reason(info)
            if reason:
                raise DataError(
                    f"Refusing to extract {zip_path.name}: member {info.filename!r} is unsafe ({reason}). "
                    "The archive may be tampered with; download it again from a trusted source."
                )
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        logger.info("Extracting %s (%d files) to %s", zip_path.name, len(archive.infolist()), target)
        try:
            archive.extractall(staging)
            staging.rename(target)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            if not target.is_dir():  # another process may have won the race; otherwise re-raise
                raise
    return target
