"""Safe, cached extraction of dataset archives (zip, tar) downloaded from the internet.

Both formats get the same guarantees: members that would land outside the folder (absolute paths, '..', links;
for tar also devices) or have no name are refused before anything is written, and so is an archive larger than
the free space; extraction goes to a staging folder renamed into place at the end, so a failed or interrupted run
never leaves a half-extracted cache behind. A damaged archive or member raises a `DataError` naming it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from vlsafe.errors import DataError

logger = logging.getLogger(__name__)


def cache_root() -> Path:
    """Where vlsafe keeps extracted archives: $VLSAFE_CACHE, else ~/.cache/vlsafe."""
    return Path(os.environ.get("VLSAFE_CACHE", Path.home() / ".cache" / "vlsafe"))


def extract_zip(zip_path: str | Path) -> Path:
    """Extract `zip_path` once into the vlsafe cache and return the folder (see the module docstring).

    Keyed by the archive's path, size and modification time, so a re-downloaded archive is extracted again.
    """
    zip_path = Path(zip_path).resolve()
    target = _cache_folder(zip_path, zip_path.stem)
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
            _refuse(zip_path, info.filename, _unsafe_member_reason(info))
        _require_space(zip_path, sum(info.file_size for info in members), target.parent)
        logger.info("Extracting %s (%d files) to %s", zip_path.name, len(members), target)

        def unpack(staging: Path) -> None:
            for info in members:
                try:
                    archive.extract(info, staging)
                except Exception as error:  # bad CRC, unsupported or encrypted member, name clash, ...
                    raise DataError(
                        f"Cannot extract member {info.filename!r:.120} of {zip_path} ({_problem(error)}). "
                        "The archive is damaged or not a plain zip; delete it and download it again."
                    ) from None

        return _extract_once(target, unpack)


def extract_tar(tar_path: str | Path) -> Path:
    """Extract `tar_path` once into the vlsafe cache and return the folder (see the module docstring); Python's
    ``data`` extraction filter checks each member again while extracting."""
    tar_path = Path(tar_path).resolve()
    target = _cache_folder(tar_path, f"{tar_path.name.split('.')[0]}-tar")

    def unpack(staging: Path) -> None:
        try:
            with tarfile.open(tar_path) as archive:
                members = archive.getmembers()
                for member in members:
                    _refuse(tar_path, member.name, _unsafe_tar_member_reason(member))
                _require_space(tar_path, sum(member.size for member in members), target.parent)
                logger.info("Extracting %s (%d members) to %s", tar_path.name, len(members), target)
                archive.extractall(staging, members=members, filter="data")
        except DataError:
            raise
        except (tarfile.TarError, OSError, EOFError, ValueError) as error:  # ValueError: e.g. a NUL in a name
            raise DataError(
                f"{tar_path} is not a readable tar archive ({type(error).__name__}: {str(error)[:150]}); delete "
                "it and download it again."
            ) from None

    return _extract_once(target, unpack)


def _cache_folder(archive: Path, name: str) -> Path:
    """The cache folder of `archive`, keyed by its path, size and modification time."""
    status = archive.stat()
    key = hashlib.sha256(f"{archive}|{status.st_size}|{status.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_root() / "extracted" / f"{name}-{key}"


def _extract_once(target: Path, unpack: Callable[[Path], None]) -> Path:
    """`target`, filled by `unpack(staging)` in a staging folder beside it that is renamed into place when
    complete; when another process won the race, its folder is the answer."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        unpack(staging)
        staging.rename(target)
    except BaseException:
        if not target.is_dir():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _unsafe_member_reason(info: zipfile.ZipInfo) -> str | None:
    """Why a zip member may not be extracted (see `_unsafe_name_reason`; also symbolic links), else None."""
    if stat.S_ISLNK(info.external_attr >> 16):
        return _unsafe_name_reason(info.filename) or "symbolic link"
    return _unsafe_name_reason(info.filename)


def _unsafe_tar_member_reason(member: tarfile.TarInfo) -> str | None:
    """Why a tar member may not be extracted (see `_unsafe_name_reason`; also links and devices), else None."""
    special = None if member.isfile() or member.isdir() else "a link or special file"
    return _unsafe_name_reason(member.name) or special


def _unsafe_name_reason(name: str) -> str | None:
    """Why a member name would land outside the extraction folder (or names nothing), else None."""
    path = PurePosixPath(name.replace("\\", "/"))
    if not name.strip("/"):
        return "empty name"
    if path.is_absolute() or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in path.parts:
        return "path climbs out with '..'"
    return None


def _refuse(archive: Path, name: str, reason: str | None) -> None:
    """A `DataError` for a member with an unsafe `reason`; nothing when it has none."""
    if reason:
        raise DataError(
            f"Refusing to extract {archive.name}: member {name!r:.120} is unsafe ({reason}). The archive may be "
            "tampered with; download it again from a trusted source."
        )


def _require_space(archive: Path, needed: int, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise DataError(
            f"{archive.name} unpacks to {needed:,} bytes but {folder} has {free:,} bytes free; free some space "
            "or point VLSAFE_CACHE at a larger disk."
        )


def _problem(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"[:200]
