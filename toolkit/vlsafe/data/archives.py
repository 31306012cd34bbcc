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
    if not name:
        return "empty name"
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
    again. Members that would land outside the folder (absolute paths, '..', symlinks) or have no name are
    refused before anything is written, and so is an archive larger than the free space; extraction goes to
    a temporary folder renamed into place at the end, so a failed or interrupted run never leaves a
    half-extracted cache behind. A corrupt archive or member raises a `DataError` naming it.
    """
    zip_path = Path(zip_path).resolve()
    status = zip_path.stat()
    key = hashlib.sha256(f"{zip_path}|{status.st_size}|{status.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_root() / "extracted" / f"{zip_path.stem}-{key}"
    if target.is_dir():
        return target
    try:
        archive = zipfile.ZipFile(zip_path)
    except Exception as error:  # zipfile raises many types on a damaged archive (BadZipFile, EOFError, ...)
        raise DataError(
            f"{zip_path} is not a valid zip archive ({_problem(error)}; corrupt or truncated download?); "
            "delete it and download again."
        ) from None
    with archive:
        members = archive.infolist()
        for info in members:
            reason = _unsafe_member_reason(info)
            if reason:
                raise DataError(
                    f"Refusing to extract {zip_path.name}: member {info.filename!r:.120} is unsafe ({reason}). "
                    "The archive may be tampered with; download it again from a trusted source."
                )
        target.parent.mkdir(parents=True, exist_ok=True)
        needed, free = sum(info.file_size for info in members), shutil.disk_usage(target.parent).free
        if needed > free:
            raise DataError(
                f"{zip_path.name} unpacks to {needed:,} bytes but {target.parent} has {free:,} bytes free; "
                "free some space or point VLSAFE_CACHE at a larger disk."
            )
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        logger.info("Extracting %s (%d files) to %s", zip_path.name, len(members), target)
        try:
            for info in members:
                try:
                    archive.extract(info, staging)
                except Exception as error:  # bad CRC, unsupported or encrypted member, name clash, ...
                    raise DataError(
                        f"Cannot extract member {info.filename!r:.120} of {zip_path} ({_problem(error)}). "
                        "The archive is damaged or not a plain zip; delete it and download it again."
                    ) from None
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            if not target.is_dir():  # another process may have won the race; otherwise re-raise
                raise
    return target


def _problem(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"[:200]
