"""Checks that the images a dataset points at exist and decode, before any training starts."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image, UnidentifiedImageError

from vlsafe.data.sources import short_repr
from vlsafe.errors import DataError

logger = logging.getLogger(__name__)
# Plain raster formats only: PIL hands EPS/PDF-like files to external programs (Ghostscript) when decoding.
RASTER_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")


def resolve_image_path(root: Path, relative: str, *, record: str) -> Path:
    """`root / relative`, refusing paths that would leave `root` (absolute or with '..'): data is untrusted."""
    parts = PurePosixPath(relative.replace("\\", "/"))
    if not parts.parts:
        raise DataError(
            f"Record {record} names no image file ({short_repr(relative)}); fix or remove the record."
        )
    if parts.is_absolute() or ".." in parts.parts or (len(relative) > 1 and relative[1] == ":"):
        raise DataError(
            f"Record {record} names image {short_repr(relative)}, which points outside the image folder; "
            "image paths must be relative to it. Fix or remove the record."
        )
    return root / relative


def image_problem(path: Path) -> str | None:
    """Why `path` cannot be a training image (missing, not an image, truncated, too large), or None.

    Decodes the whole image, as training will (JPEGs at reduced scale, which still reads all their data):
    a truncated JPEG or GIF passes PIL's header-only `verify()` and would only fail mid-training. Images
    over `PIL.Image.MAX_IMAGE_PIXELS` are refused, as decompression bombs are.
    """
    try:
        if not path.is_file():
            return "missing" if not path.exists() else "not a file"
    except (OSError, ValueError) as error:  # e.g. a name too long for the filesystem
        return f"cannot be opened ({getattr(error, 'strerror', None) or str(error)[:100]})"
    try:
        with Image.open(path, formats=RASTER_FORMATS) as image:
            pixels, limit = image.width * image.height, Image.MAX_IMAGE_PIXELS
            if limit is not None and pixels > limit:  # None: the user switched PIL's limit off
                return _too_large(pixels)
            image.draft(image.mode, (1, 1))
            image.load()
    except Image.DecompressionBombError as error:  # over twice the limit: PIL refuses to open it
        declared = re.search(r"\((\d+) pixels\)", str(error))
        return _too_large(declared[1] if declared else "over twice that many")
    except UnidentifiedImageError:
        return f"not an image file in a supported format ({', '.join(RASTER_FORMATS)})"
    except Exception as error:  # PIL's decoders raise many types on hostile bytes (OSError, SyntaxError, ...)
        return f"not a decodable image: {type(error).__name__}: {str(error)[:100]}"
    return None


def _too_large(pixels: object) -> str:
    return (
        f"too large ({pixels} pixels, over PIL.Image.MAX_IMAGE_PIXELS={Image.MAX_IMAGE_PIXELS}; raise that "
        "limit if you trust the data)"
    )


def is_readable_image(path: Path) -> bool:
    """True when `path` exists and decodes as an image of acceptable size (see `image_problem`)."""
    return image_problem(path) is None


def unreadable_images(paths: Sequence[Path]) -> dict[Path, str]:
    """{path: problem} for those of `paths` that are missing or unusable (each path checked once)."""
    unique = sorted(set(paths))
    workers = min(8, os.cpu_count() or 1, max(1, len(unique) // 64))  # PIL decodes without holding the GIL
    with ThreadPoolExecutor(workers) as pool:
        problems = pool.map(image_problem, unique)
    return {path: problem for path, problem in zip(unique, problems, strict=True) if problem}


def _report(
    bad: dict[Path, str], total: int, *, dataset: str, skip_missing: bool, records: Sequence[str] = ()
) -> None:
    """Raise the error naming the first bad images (and their records), or log that they are skipped."""
    first = "; ".join(f"{short_repr(str(path), 300)}: {bad[path]}" for path in sorted(bad)[:3])
    named = f" of records {', '.join(records[:3])}" if records else ""
    if not skip_missing:
        raise DataError(
            f"{len(bad)} of {total} images of {dataset} are missing or unreadable (first: {first}){named}. "
            "Check that the image archive was downloaded and extracted completely, or pass "
            "skip_missing_images=True to leave those samples out (the count is reported)."
        )
    logger.warning(
        "Skipping samples of %d missing or unreadable images of %s (first: %s)", len(bad), dataset, first
    )


def require_images(paths: Sequence[Path], *, dataset: str, skip_missing: bool) -> set[Path]:
    """Raise a clear error naming the first bad paths, or (``skip_missing``) return them to be skipped."""
    bad = unreadable_images(paths)
    if bad:
        _report(bad, len(set(paths)), dataset=dataset, skip_missing=skip_missing)
    return set(bad)


def drop_unreadable(
    rows: list[dict[str, Any]],
    paths_of: Callable[[dict[str, Any]], Sequence[str | Path]] | None = None,
    *,
    dataset: str,
    skip_missing: bool,
    noun: str = "samples",
) -> list[dict[str, Any]]:
    """`rows` whose images (`paths_of(row)`, by default the row's ``images``) all load; else an error naming
    the first bad images and their rows' ids, or with `skip_missing` the rows without a bad image, the count
    logged."""
    paths_of = paths_of or _row_images
    paths = [Path(p) for row in rows for p in paths_of(row)]
    bad = unreadable_images(paths)
    if not bad:
        return rows
    hit = [row for row in rows if any(Path(p) in bad for p in paths_of(row))]
    records = list(dict.fromkeys(short_repr(row.get("id")) for row in hit))
    _report(bad, len(set(paths)), dataset=dataset, skip_missing=skip_missing, records=records)
    kept = [row for row in rows if not any(Path(p) in bad for p in paths_of(row))]
    logger.warning(
        "%s: skipped %d of %d %s with an unusable image", dataset, len(rows) - len(kept), len(rows), noun
    )
    return kept


def _row_images(row: dict[str, Any]) -> Sequence[str | Path]:
    return row["images"]
