"""vlsafe.data.archives: zip and tar archives are extracted with the same guarantees (once, into the cache;
unsafe members refused before anything is written; nothing half-extracted left behind)."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from vlsafe.data.archives import extract_tar, extract_zip
from vlsafe.errors import DataError


def _archive(path: Path, members: dict[str, bytes]) -> Path:
    if path.suffix == ".zip":
        with zipfile.ZipFile(path, "w") as archive:
            for name, data in members.items():
                archive.writestr(name, data)
    else:
        with tarfile.open(path, "w") as archive:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return path


EXTRACT = {".zip": extract_zip, ".tar": extract_tar}


@pytest.mark.parametrize("suffix", EXTRACT)
def test_an_archive_is_extracted_once_and_again_when_it_changes(
    suffix: str, tmp_path: Path, isolated_vlsafe_cache: Path
) -> None:
    path = _archive(tmp_path / f"images{suffix}", {"images/a.png": b"one"})
    folder = EXTRACT[suffix](path)
    assert folder.is_relative_to(isolated_vlsafe_cache / "extracted")
    assert (folder / "images" / "a.png").read_bytes() == b"one"
    (folder / "images" / "a.png").write_bytes(b"kept")  # a second call reuses the folder: no new extraction
    assert EXTRACT[suffix](path) == folder and (folder / "images" / "a.png").read_bytes() == b"kept"
    _archive(path, {"images/a.png": b"two, re-downloaded"})
    again = EXTRACT[suffix](path)
    assert again != folder and (again / "images" / "a.png").read_bytes() == b"two, re-downloaded"


@pytest.mark.parametrize("suffix", EXTRACT)
@pytest.mark.parametrize(
    ("member", "reason"),
    [
        ("../escape.txt", "path climbs out with '..'"),
        ("/etc/escape.txt", "absolute path"),
        ("/", "empty name"),
    ],
)
def test_unsafe_members_are_refused_before_anything_is_written(
    suffix: str, member: str, reason: str, tmp_path: Path, isolated_vlsafe_cache: Path
) -> None:
    path = _archive(tmp_path / f"bad{suffix}", {"fine.txt": b"x", member: b"escaped"})
    with pytest.raises(DataError, match=rf"bad{suffix}: member '{member}' is unsafe \({reason}\)"):
        EXTRACT[suffix](path)
    extracted = isolated_vlsafe_cache / "extracted"
    written = list(extracted.rglob("*")) if extracted.is_dir() else []
    assert not [p for p in written if p.name in ("fine.txt", "escape.txt") or p.name.startswith(".bad")]
    assert not (tmp_path / "escape.txt").exists()


@pytest.mark.parametrize("suffix", EXTRACT)
def test_a_truncated_archive_is_named_and_leaves_no_cache(
    suffix: str, tmp_path: Path, isolated_vlsafe_cache: Path
) -> None:
    path = _archive(tmp_path / f"cut{suffix}", {"images/a.png": b"x" * 5000})
    path.write_bytes(path.read_bytes()[:700])
    with pytest.raises(DataError, match=rf"cut{suffix}"):
        EXTRACT[suffix](path)
    extracted = isolated_vlsafe_cache / "extracted"
    assert not list(extracted.glob("cut*")) and not list(extracted.glob(".cut*"))  # nor a staging folder
