"""MOSSBench (Li et al., 2024): is a VLM oversensitive to safe queries? GitHub ``xirui-li/MOSSBench``.

Layout of the repository (the folder to pass):

- ``data/images_information/information.json``: an object of 300 records keyed by their ``pid`` ("1".."300"),
  each with ``image`` (``images/<pid>.png``, relative to ``data/``), ``question``, ``short description``,
  ``description``, ``pid`` and ``metadata`` {``over``: "type 1" | "type 2" | "type 3", ``human``, ``child``,
  ``syn``, ``ocr`` (0/1), ``harm`` (a list of harm-type numbers 0-7, not a harmfulness flag)}. Every query is
  benign, shown with an image whose stimulus makes it look risky: subset ``oversensitivity`` (the publisher's
  name for it), harmful=False, scored as over-refusal (the paper's refusal rate).
- ``data_contrast/images_information/information.json``: the contrast set, the same layout with harmful
  questions on the same pictures (``metadata`` holds ``over`` only): subset ``contrast``, harmful=True, scored as
  ASR. Not a default: the paper's figure is the refusal rate on the 300 benign queries.
- Images: ``data/images/`` as the README's ``images.zip`` unpacks (or that zip left in ``data/``). The git
  repository itself holds ``.webp`` copies of many of them: an image named ``.png`` that is missing is taken from
  the same name with another raster extension (counted in the log). ``data_contrast/images/`` holds only part of
  the contrast pictures; the others are the benign set's picture of the same path (counted in the log).

The category is the stimulus type (``over``), named as the paper's tables name it: Exaggerated Risk (type 1),
Negated Harm (type 2), Counterintuitive Interpretation (type 3); another value is kept as written. Ids are the
records' keys. Licence: CC BY-SA 4.0, for use as a test set only (training on it is prohibited).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlsafe.data.sources import read_json_object, short_repr
from vlsafe.errors import DataError
from vlsafe.evaluation.benchmarks import _b_common as common
from vlsafe.evaluation.benchmarks.base import Benchmark, prompt_row

logger = logging.getLogger(__name__)

FOLDERS = {"oversensitivity": "data", "contrast": "data_contrast"}
INFORMATION = "images_information/information.json"
OVER_TYPES = {
    "type 1": "Exaggerated Risk",
    "type 2": "Negated Harm",
    "type 3": "Counterintuitive Interpretation",
}
_OTHER_EXTENSIONS = (".webp", ".png", ".jpg", ".jpeg")


def load_prompts(
    folder: Path, subsets: Sequence[str], *, revision: str | None = None, references: Path | None = None
) -> list[dict[str, Any]]:
    """The chosen subsets' prompts: one image, then the question."""
    if not (folder / "data").is_dir() and (folder / INFORMATION).is_file():
        folder = folder.parent if folder.name == "data" else folder  # the user passed data/ itself
    rows = []
    for subset in subsets:
        data = folder / FOLDERS[subset]
        path = common.find_json(data, [INFORMATION], title=BENCHMARK.title, url=BENCHMARK.url)
        records = read_json_object(path, "MOSSBench records keyed by pid")
        images = _images(folder, subset)
        chosen = [_row(key, record, subset, path, data, images) for key, record in records.items()]
        _substitute_missing(chosen, images, _benign_images(folder) if subset == "contrast" else None)
        rows += chosen
    return rows


def _images(folder: Path, subset: str) -> Path:
    """The subset's image folder; the contrast set falls back on the benign one (same pictures)."""
    published = ("images", "images.zip", "images.tar")
    if subset == "contrast" and not any((folder / "data_contrast" / name).exists() for name in published):
        return _images(folder, "oversensitivity")
    return common.images_folder(folder / FOLDERS[subset], "images", title=BENCHMARK.title, url=BENCHMARK.url)


def _benign_images(folder: Path) -> Path | None:
    """The benign set's image folder, where the contrast set's missing pictures are; None when it has none."""
    try:
        return _images(folder, "oversensitivity")
    except DataError:
        return None


def _row(key: str, record: Any, subset: str, where: Path, data: Path, images: Path) -> dict[str, Any]:
    name = short_repr(key)
    if not key.strip():
        raise DataError(f"Record {name} in {where} has an empty key (its pid); fix or remove the record.")
    record = common.as_object(record, where=where, name=name)
    metadata = record.get("metadata", {})
    if not isinstance(metadata, dict):
        raise DataError(
            f"Malformed record {name} in {where}: field 'metadata' must be an object, found "
            f"{short_repr(metadata)}. Fix or remove the record."
        )
    over = common.text(metadata, "over", where=where, name=f"{name} (metadata)", required=False)
    image = common.text(record, "image", where=where, name=name)
    return prompt_row(
        id=key,
        subset=subset,
        text=common.text(record, "question", where=where, name=name),
        images=[common.image_file(images, "images", data, image, record=f"{name} in {where}")],
        category=OVER_TYPES.get(over, over),
    )


def _substitute_missing(rows: list[dict[str, Any]], images: Path, benign: Path | None) -> None:
    """Point each missing image at its stand-in: the same name with another raster extension (the git copy's
    .webp), else (contrast set, `benign` given) the benign set's image of that name. Counted in the log."""
    moved = 0
    for row in rows:
        path = Path(row["images"][0])
        same = (
            [benign / path.relative_to(images)] if benign is not None and path.is_relative_to(images) else []
        )
        found = next(filter(_is_file, (c for p in (path, *same) for c in _other_extensions(p))), path)
        moved += found != path
        row["images"] = [str(found)]
    if moved:
        logger.info("MOSSBench %s: %d images taken from a stand-in file", rows[0]["subset"], moved)


def _other_extensions(path: Path) -> list[Path]:
    """`path` itself first, then with the other raster extensions."""
    try:
        return [path, *(path.with_suffix(extension) for extension in _OTHER_EXTENSIONS)]
    except ValueError:  # a name with no stem
        return [path]


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name the filesystem cannot look up (too long, NUL byte): untrusted data
        return False


BENCHMARK = Benchmark(
    name="mossbench",
    title="MOSSBench",
    subsets={"oversensitivity": False, "contrast": True},
    load=load_prompts,
    published="github:xirui-li/MOSSBench",
    licence="CC BY-SA 4.0 (test use only)",
    paper_judge="GPT-4-turbo judge scoring each answer 0 (complies) / 1 (refuses); refusal rate per stimulus type",
    default_subsets=("oversensitivity",),
    aliases=("MOSSBench",),
)
