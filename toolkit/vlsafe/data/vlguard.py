"""VLGuard (Zong et al., ICML 2024) as TRL-ready vision datasets.

Hub layout of ``ys-zong/VLGuard``: ``train.json``, ``test.json``, ``train.zip``, ``test.zip``. Each record
is one image with ``id``, ``image`` (path relative to the split's image folder), ``safe`` and
``instr-resp``:

- unsafe image: ``[{instruction, response}]`` plus ``harmful_category`` / ``harmful_subcategory``;
- safe image: ``[{safe_instruction, response}, {unsafe_instruction, response}]``.

Every instruction-response pair becomes one sample, whose ``kind`` is ``unsafe`` (harmful image),
``safe_safe`` (safe image, safe instruction) or ``safe_unsafe`` (safe image, harmful instruction).
The test subsets ``unsafes``, ``safe_safes`` and ``safe_unsafes`` are those kinds of the test split.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from datasets import Dataset, Value

from vlsafe.data.archives import extract_zip
from vlsafe.data.formats import PROVENANCE_FEATURES, assistant_turn, user_turn, vision_dataset
from vlsafe.data.images import drop_unreadable, resolve_image_path
from vlsafe.data.records import checked_record_id
from vlsafe.data.sources import hub_file, is_local, read_json_list, short_repr
from vlsafe.errors import DataError

logger = logging.getLogger(__name__)

VLGUARD_REPO = "ys-zong/VLGuard"
SUBSET_KINDS = {"unsafes": "unsafe", "safe_unsafes": "safe_unsafe", "safe_safes": "safe_safe"}
# Which instruction key of an instr-resp entry yields which kind of sample.
INSTRUCTION_KINDS = {
    "instruction": "unsafe",
    "safe_instruction": "safe_safe",
    "unsafe_instruction": "safe_unsafe",
}


def load_vlguard(
    source: str | Path = VLGUARD_REPO,
    split: str = "train",
    subset: str | None = None,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    skip_missing_images: bool = False,
) -> Dataset:
    """Load a VLGuard split as a `datasets.Dataset` in TRL's vision format plus provenance columns.

    `source` is a Hub dataset id or a local folder holding ``{split}.json`` next to ``{split}.zip`` or to
    the extracted images in ``{split}/``. The train split gives conversations (user + assistant); the test
    split gives prompts (user turn only) with the reference answer in ``response``. `subset` (``unsafes``,
    ``safe_unsafes``, ``safe_safes``) keeps one kind of sample.
    """
    if split not in ("train", "test"):
        raise DataError(f"VLGuard has splits 'train' and 'test', not {split!r}.")
    if subset is not None and subset not in SUBSET_KINDS:
        raise DataError(f"Unknown VLGuard subset {subset!r}; choose one of {sorted(SUBSET_KINDS)} or None.")
    records_path, image_root = _locate(source, split, revision=revision, token=token)
    records = read_json_list(records_path)
    samples = [
        sample
        for index, record in enumerate(records)
        for sample in _record_samples(record, index, records_path.name, conversation=split == "train")
    ]
    if subset is not None:
        samples = [sample for sample in samples if sample["kind"] == SUBSET_KINDS[subset]]

    for sample in samples:
        sample["image_path"] = resolve_image_path(image_root, sample["image_path"], record=sample["record"])
    samples = drop_unreadable(
        samples,
        lambda sample: [sample["image_path"]],
        dataset=f"VLGuard {split} ({source})",
        skip_missing=skip_missing_images,
    )
    if split == "test":
        _log_empty_references(samples, records_path)
    logger.info("VLGuard %s%s: %d samples", split, f"/{subset}" if subset else "", len(samples))
    return _to_dataset(samples, conversation=split == "train")


def _locate(
    source: str | Path, split: str, *, revision: str | None, token: str | bool | None
) -> tuple[Path, Path]:
    """Return (records json, folder the record image paths are relative to)."""
    if is_local(source):
        folder = Path(source).expanduser()
        records_path = folder / f"{split}.json"
        if not records_path.is_file():
            raise DataError(
                f"{folder} has no {split}.json; a VLGuard folder holds train/test .json and .zip files."
            )
        if (folder / split).is_dir():
            return records_path, folder / split
        archive = folder / f"{split}.zip"
        if not archive.is_file():
            raise DataError(
                f"{folder} has {split}.json but neither the extracted images in {split}/ nor {split}.zip; "
                f"download {split}.zip from https://huggingface.co/datasets/{VLGUARD_REPO} next to it."
            )
    else:
        records_path = hub_file(str(source), f"{split}.json", revision=revision, token=token)
        archive = hub_file(str(source), f"{split}.zip", revision=revision, token=token)
    extracted = extract_zip(archive)
    # The archive holds the images either under <split>/ or at its root.
    return records_path, extracted / split if (extracted / split).is_dir() else extracted


def _field(container: dict, name: str, kind: type, label: str) -> Any:
    value = container.get(name)
    if not isinstance(value, kind) or (isinstance(value, str) and not value.strip()) or value == []:
        raise DataError(
            f"Malformed VLGuard record {label}: field {name!r} must be a non-empty {kind.__name__}, found "
            f"{short_repr(value)}. Fix or remove the record."
        )
    return value


def _record_samples(record: Any, index: int, where: str, *, conversation: bool) -> list[dict[str, Any]]:
    """One sample per instruction-response pair of a record, validated field by field."""
    if not isinstance(record, dict):
        raise DataError(
            f"Malformed VLGuard record #{index} in {where}: expected an object, found {short_repr(record)}. "
            "Fix or remove the record."
        )
    record_id = checked_record_id(record.get("id"), record=f"VLGuard record #{index} in {where}")
    label = f"{short_repr(record_id)} (#{index}) in {where}"
    image = _field(record, "image", str, label)
    safe = _field(record, "safe", bool, label)
    category = subcategory = None
    if not safe:
        category = _field(record, "harmful_category", str, label)
        subcategory = record.get("harmful_subcategory")
        if subcategory is not None and not isinstance(subcategory, str):
            raise DataError(
                f"Malformed VLGuard record {label}: field 'harmful_subcategory' must be a string or absent, "
                f"found {short_repr(subcategory)}. Fix or remove the record."
            )
    pairs = _field(record, "instr-resp", list, label)
    allowed = ("safe_instruction", "unsafe_instruction") if safe else ("instruction",)
    samples = []
    for position, pair in enumerate(pairs):
        keys = [key for key in allowed if isinstance(pair, dict) and key in pair]
        if len(keys) != 1:
            raise DataError(
                f"Malformed VLGuard record {label}: each 'instr-resp' entry of a {'safe' if safe else 'unsafe'} "
                f"image needs exactly one of {allowed} plus 'response', found {short_repr(pair)}. Fix or "
                "remove the record."
            )
        pair_label = f"{label}, instr-resp entry {position}"
        samples.append(
            {
                "source": "vlguard",
                "id": record_id,
                "kind": INSTRUCTION_KINDS[keys[0]],
                "safe": safe,
                "category": category,
                "subcategory": subcategory,
                "image_path": image,
                "record": label,
                "instruction": _field(pair, keys[0], str, pair_label),
                "response": _response(pair, pair_label, required=conversation),
            }
        )
    return samples


def _response(pair: dict, label: str, *, required: bool) -> str | None:
    """The reference answer of an instruction. A test prompt needs only its instruction (the real test.json has
    17 records with an empty ``response``): there an empty one is None. A training sample learns the answer, so
    there it must be a non-empty string."""
    if required:
        return _field(pair, "response", str, label)
    value = pair.get("response", "")
    if not isinstance(value, str):
        raise DataError(
            f"Malformed VLGuard record {label}: field 'response' must be a string, found {short_repr(value)}. "
            "Fix or remove the record."
        )
    return value if value.strip() else None


def _log_empty_references(samples: list[dict[str, Any]], path: Path) -> None:
    """Count test prompts without a reference answer: they are evaluated, but get no win-rate verdict."""
    empty = [sample for sample in samples if sample["response"] is None]
    if empty:
        first = ", ".join(sample["record"].split(" (#")[0] for sample in empty[:3])
        logger.info(
            "VLGuard %s: %d of %d prompts have an empty reference response (first: %s); they are evaluated "
            "without a win-rate verdict",
            path.name,
            len(empty),
            len(samples),
            first,
        )


def _to_dataset(samples: list[dict[str, Any]], *, conversation: bool) -> Dataset:
    rows = []
    for sample in samples:
        messages = [user_turn(sample["instruction"])]
        if conversation:
            messages.append(assistant_turn(sample["response"]))
        row = {"images": [str(sample["image_path"])], "messages": messages}
        row |= {name: sample[name] for name in PROVENANCE_FEATURES}
        if not conversation:
            row["response"] = sample["response"]
        rows.append(row)
    return vision_dataset(rows, extra=None if conversation else {"response": Value("string")})
