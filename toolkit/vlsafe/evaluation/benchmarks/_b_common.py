"""What the MOSSBench, VLSBench, SIUO and MSSBench loaders share: the benchmark's json found among the places
its publishers put it, record fields checked (an error names the file, the record and the fix), and the images
folder found as published: unpacked beside the json, or as a ``.zip`` / ``.tar`` archive there, extracted once
into the vlsafe cache.

Archives (VLSBench's Hub copy ships its images as a tar) are extracted by `vlsafe.data.archives`, which refuses
members that would land outside the folder and never leaves a half-extracted cache.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from vlsafe.data.archives import extract_tar, extract_zip
from vlsafe.data.images import resolve_image_path
from vlsafe.data.records import checked_record_id
from vlsafe.data.sources import short_repr
from vlsafe.errors import DataError


def find_json(folder: Path, candidates: Sequence[str], *, title: str, url: str) -> Path:
    """The first of `candidates` (paths relative to `folder`) that is a file, or an error naming them all."""
    for relative in candidates:
        if (folder / relative).is_file():
            return folder / relative
    raise DataError(
        f"{title}: {folder} has none of {', '.join(candidates)}; it is not a copy of the benchmark as published. "
        f"Pass the folder of a copy of {url} (its root)."
    )


def record_name(index: int, record_id: Any = None) -> str:
    """How an error names a record: its id when it has a usable one, and always its position."""
    return f"{short_repr(record_id)} (#{index})" if isinstance(record_id, str | int) else f"#{index}"


def as_object(record: Any, *, where: Path, name: str) -> Mapping[str, Any]:
    """`record` when it is a JSON object, else an error naming it."""
    if not isinstance(record, dict):
        raise DataError(
            f"Malformed record {name} in {where}: expected an object, found {short_repr(record)}. "
            "Fix or remove the record."
        )
    return record


def text(record: Mapping[str, Any], key: str, *, where: Path, name: str, required: bool = True) -> str | None:
    """Field `key` as a string: non-empty when `required`; else None when absent, null or blank."""
    value = record.get(key)
    if not required and (value is None or (isinstance(value, str) and not value.strip())):
        return None
    if not isinstance(value, str) or not value.strip():
        wanted = "a non-empty string" if required else "a string when present"
        raise DataError(
            f"Malformed record {name} in {where}: field {key!r} must be {wanted}, found {short_repr(value)}. "
            "Fix or remove the record."
        )
    return value


def record_id(record: Mapping[str, Any], key: str, *, where: Path, index: int) -> str:
    """Field `key` as the prompt id: an integer or a non-empty string (benchmarks publish both)."""
    return checked_record_id(record.get(key), record=f"record #{index} in {where}", field=key)


def images_folder(base: Path, name: str, *, title: str, url: str) -> Path:
    """The folder of images `base/name`, as published unpacked, or extracted from `name`.zip / `name`.tar.

    An archive may hold the images under `name`/, under one wrapping folder, or at its root.
    """
    if (base / name).is_dir():
        return base / name
    for suffix, extract in ((".zip", extract_zip), (".tar", extract_tar)):
        if (base / f"{name}{suffix}").is_file():
            extracted = extract(base / f"{name}{suffix}")
            subfolders = [p for p in extracted.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))]
            if (extracted / name).is_dir():
                return extracted / name
            if len(subfolders) == 1 and (subfolders[0] / name).is_dir():
                return subfolders[0] / name
            return extracted
    raise DataError(
        f"{title}: {base} has no images: neither {name}/ nor {name}.zip / {name}.tar. Download the images from "
        f"{url} and unpack them into {base / name}."
    )


def image_file(images: Path, folder_name: str, base: Path, relative: str, *, record: str) -> str:
    """The image a record names `relative` to the json's folder `base` (usually ``<folder_name>/<file>``), found
    in `images` (`images_folder`, which may be an extraction elsewhere). Paths leaving `base` are refused."""
    path = resolve_image_path(base, relative, record=record)
    parts = PurePosixPath(relative.replace("\\", "/")).parts
    return str(images.joinpath(*parts[1:]) if parts[0] == folder_name else path)
