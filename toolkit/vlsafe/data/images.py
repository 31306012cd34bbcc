"""Checks that the images a dataset points at exist and decode, before any training starts."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image, UnidentifiedImageError

from vlsafe.errors import DataError

logger = logging.getLogger(__name__)


def resolve_image_path(root: Path, relative: str, *, record: str) -> Path:
    """`root / relative`, refusing paths that would leave `root` (absolute or with '..'): data is untrusted."""
    parts = PurePosixPath(relative.replace("\\", "/"))
    if parts.is_absolute() or ".." in parts.parts or (len(relative) > 1 and relative[1] == ":"):
        raise DataError(
            f"Record {record} names image {relative!r}, which points outside the image folder; "
            "image paths must be relative to it. Fix or remove the record."
        )
    return root / relative


def is_readable_image(path: Path) -> bool:
    """True when `path` exists and PIL recognises it as an image (reads the header only)."""
    try:
        with Image.open(path) as image:
            image.verify()
        return True
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError):
        return False


def unreadable_images(paths: Sequence[Path]) -> set[Path]:
    """The subset of `paths` that are missing or not decodable images (each path checked once)."""
    return {path for path in set(paths) if not is_readable_image(path)}


def require_images(paths: Sequence[Path], *, dataset: str, skip_missing: bool) -> set[Path]:
    """Raise a clear error naming the first bad paths, or (``skip_missing``) return them to be skipped."""
    bad = unreadable_images(paths)
    if not bad:
        return bad
    first = ", ".join(str(path) for path in sorted(bad)[:3])
    if not skip_missing:
        raise DataError(
            f"{len(bad)} of {len(set(paths))} images of {dataset} are missing or unreadable (first: {first}). "
            "Check that the image archive was downloaded and extracted completely, or pass "
            "skip_missing_images=True to leave those samples out (the count is reported)."
        )
    logger.warning(
        "Skipping samples of %d missing or unreadable images of %s (first: %s)", len(bad), dataset, first
    )
    return bad


def drop_unreadable(
    rows: list[dict[str, Any]],
    paths_of: Callable[[dict[str, Any]], Sequence[str | Path]],
    *,
    dataset: str,
    skip_missing: bool,
    noun: str = "samples",
) -> list[dict[str, Any]]:
    """`rows` whose images (`paths_of(row)`) all load; else the error of `require_images`, or with
    `skip_missing` the rows without a bad image, the count logged."""
    bad = require_images(
        [Path(p) for row in rows for p in paths_of(row)], dataset=dataset, skip_missing=skip_missing
    )
    if not bad:
        return rows
    kept = [row for row in rows if not any(Path(p) in bad for p in paths_of(row))]
    logger.warning(
        "%s: skipped %d of %d %s with an unusable image", dataset, len(rows) - len(kept), len(rows), noun
    )
    return kept
