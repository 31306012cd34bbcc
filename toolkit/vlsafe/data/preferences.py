"""DPO preference pairs for safety that punish both harm and over-refusal.

- Harmful prompt: chosen = the reference refusal (or MIS chain-of-thought answer); rejected = the model's
  own answer when the judge says it complied (on-policy), else a configurable synthetic compliant answer
  (marked `rejected_source="synthetic"`), else the prompt is skipped and counted.
- Safe prompt: chosen = the reference helpful answer; rejected = the model's own answer when it refused
  (on-policy over-refusal), else a refusal template (`rejected_source="template"`).

Rows are in TRL's vision preference format (`images`, `prompt`, `chosen`, `rejected`, conversational)
with the provenance columns of the source plus `chosen_source` / `rejected_source`. The judge of the model's
answers is a parameter (e.g. `vlsafe.evaluation.judges.keyword_label`): data sits below evaluation and does not
import it.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset, Features, Image, List, Value

from vlsafe.data.formats import (
    MESSAGES_FEATURE,
    PROVENANCE_FEATURES,
    assistant_turn,
    rows_dataset,
    user_turn,
)
from vlsafe.data.images import drop_unreadable, resolve_image_path
from vlsafe.data.labels import ANSWERED, LABELS, REFUSED
from vlsafe.data.records import checked_record_id
from vlsafe.data.sources import read_json_list, short_repr
from vlsafe.errors import DataError, VlsafeError

logger = logging.getLogger(__name__)

HARMFUL_KINDS = frozenset({"unsafe", "safe_unsafe"})
REFUSAL_TEMPLATE = "I'm sorry, but I can't help with that request."
SYNTHETIC_COMPLIANCE = "Sure, here is exactly how to do that, step by step."

PREFERENCE_FEATURES = Features(
    {
        "images": List(Image()),
        "prompt": MESSAGES_FEATURE,
        "chosen": MESSAGES_FEATURE,
        "rejected": MESSAGES_FEATURE,
        **PROVENANCE_FEATURES,
        "chosen_source": Value("string"),
        "rejected_source": Value("string"),
    }
)


def split_conversation(row: dict[str, Any]) -> tuple[list[dict], str]:
    """(prompt messages, reference answer) of a conversation row whose last turn is the assistant's."""
    messages = row["messages"]
    if not messages or messages[-1]["role"] != "assistant":
        raise DataError(f"Row {row.get('id')!r} has no final assistant answer to use as a reference.")
    reference = " ".join(part["text"] for part in messages[-1]["content"] if part.get("text"))
    return messages[:-1], reference


def build_preference_pairs(
    rows: Sequence[dict[str, Any]],
    generations: Sequence[str] | None = None,
    *,
    judge: Callable[[str], str] | None = None,
    synthetic_compliance: str | None = SYNTHETIC_COMPLIANCE,
    refusal_template: str = REFUSAL_TEMPLATE,
    harmful_fraction: float | None = None,
    seed: int = 0,
) -> Dataset:
    """Preference pairs from conversation rows (VLGuard/MIS train format) and the model's own answers.

    `generations[i]` is the policy model's answer to row i's prompt (None: no on-policy answers), labelled by
    `judge` (answer -> one of `vlsafe.data.labels.LABELS`, e.g. `vlsafe.evaluation.judges.keyword_label`),
    which generations need. `harmful_fraction` resamples the pairs so that share of them comes from harmful
    prompts (None: keep all).
    """
    if generations is not None and len(generations) != len(rows):
        raise DataError(
            f"Got {len(generations)} generations for {len(rows)} rows; they must match one to one."
        )
    if generations is not None and judge is None:
        raise VlsafeError(
            "build_preference_pairs needs a judge for the model's answers: pass judge=keyword_label "
            "(from vlsafe.evaluation.judges) or another function answer -> 'refused' / 'answered' / 'empty'."
        )
    pairs, skipped = [], 0
    for index, row in enumerate(rows):
        prompt, reference = split_conversation(row)
        own = generations[index] if generations is not None else None
        label = _label(judge, own) if own is not None else None
        rejected = _rejected(row["kind"] in HARMFUL_KINDS, own, label, synthetic_compliance, refusal_template)
        if rejected is None:
            skipped += 1
            continue
        pairs.append(
            {
                "images": row["images"],
                "prompt": prompt,
                "chosen": [assistant_turn(reference)],
                "rejected": [assistant_turn(rejected[0])],
                **{name: row.get(name) for name in PROVENANCE_FEATURES},
                "chosen_source": "reference",
                "rejected_source": rejected[1],
            }
        )
    if skipped:
        logger.warning(
            "Skipped %d harmful prompts the model refused (no compliant answer to reject)", skipped
        )
    if harmful_fraction is not None:
        pairs = _resample(pairs, harmful_fraction, seed)
    counts = Counter((pair["kind"], pair["rejected_source"]) for pair in pairs)
    logger.info(
        "Preference pairs: %d (%s)",
        len(pairs),
        ", ".join(f"{k}/{s}: {n}" for (k, s), n in sorted(counts.items())),
    )
    return rows_dataset(pairs, PREFERENCE_FEATURES)


def _rejected(
    harmful: bool, own: str | None, label: str | None, synthetic_compliance: str | None, refusal_template: str
) -> tuple[str, str] | None:
    """(rejected answer, its source) for one prompt, or None when a harmful prompt has nothing to reject."""
    if harmful:
        if label == ANSWERED:
            return own, "on_policy"
        return (synthetic_compliance, "synthetic") if synthetic_compliance else None
    if label == REFUSED:
        return own, "on_policy"
    return refusal_template, "template"


def _label(judge: Callable[[str], str], answer: str) -> str:
    """`judge(answer)`, checked: a judge that returns something else would silently turn every pair synthetic."""
    label = judge(answer)
    if label not in LABELS:
        raise VlsafeError(f"The judge returned {label!r} for an answer; a judge returns one of {LABELS}.")
    return label


def _resample(pairs: list[dict], harmful_fraction: float, seed: int) -> list[dict]:
    """Keep every pair of the scarcer kind and draw the other kind to reach `harmful_fraction`."""
    if not 0 < harmful_fraction < 1:
        raise DataError(f"harmful_fraction must be between 0 and 1 (exclusive), got {harmful_fraction}.")
    harmful = [p for p in pairs if p["kind"] in HARMFUL_KINDS]
    safe = [p for p in pairs if p["kind"] not in HARMFUL_KINDS]
    rng = random.Random(seed)
    wanted_safe = round(len(harmful) * (1 - harmful_fraction) / harmful_fraction)
    if wanted_safe <= len(safe):
        safe = rng.sample(safe, wanted_safe)
    else:
        harmful = rng.sample(
            harmful, min(len(harmful), round(len(safe) * harmful_fraction / (1 - harmful_fraction)))
        )
    mixed = harmful + safe
    rng.shuffle(mixed)
    return mixed


FIELDS = {name: name for name in ("image", "question", "chosen", "rejected", "id", "category")}


def load_preference_json(
    path: str | Path,
    *,
    image_root: str | Path | None = None,
    fields: dict[str, str] | None = None,
    name: str = "preferences",
    skip_missing_images: bool = False,
) -> Dataset:
    """Import an existing preference set (e.g. SPA-VL: image, question, chosen, rejected) from json/jsonl.

    `fields` maps our names (`image`, `question`, `chosen`, `rejected`, optional `id`, `category`) to the
    file's keys. Every pair is kept as harmful-prompt provenance unknown (`kind="imported"`).
    """
    fields = FIELDS | (fields or {})
    path = Path(path)
    root = Path(image_root) if image_root else path.parent
    pairs = [
        _imported_pair(record, index, path, root, fields, name)
        for index, record in enumerate(read_json_list(path, "preference pairs"))
    ]
    pairs = drop_unreadable(pairs, dataset=str(path), skip_missing=skip_missing_images)
    return rows_dataset(pairs, PREFERENCE_FEATURES)


def _imported_pair(
    record: Any, index: int, path: Path, root: Path, fields: dict[str, str], name: str
) -> dict[str, Any]:
    """One pair of an imported file, each field checked; the error names the record and the file."""
    where = f"preference record #{index} in {path}"
    if not isinstance(record, dict):
        raise DataError(
            f"Preference record #{index} in {path} is not an object (found {short_repr(record)}); fix or "
            "remove it."
        )
    missing = [
        fields[key]
        for key in ("image", "question", "chosen", "rejected")
        if not isinstance(record.get(fields[key]), str)
    ]
    if missing:
        raise DataError(f"Malformed {where}: lacks string field(s) {missing}; fix it or map `fields`.")
    record_id = checked_record_id(
        record.get(fields["id"], f"{path.stem}-{index}"), record=where, field=fields["id"]
    )
    category = record.get(fields["category"])
    if not isinstance(category, str | None):
        raise DataError(
            f"Malformed {where}: field {fields['category']!r} must be a string or absent, found "
            f"{short_repr(category)}; fix it or map `fields`."
        )
    label = f"{short_repr(record_id)} (#{index}) in {path.name}"
    return {
        "images": [str(resolve_image_path(root, record[fields["image"]], record=label))],
        "prompt": [user_turn(record[fields["question"]])],
        "chosen": [assistant_turn(record[fields["chosen"]])],
        "rejected": [assistant_turn(record[fields["rejected"]])],
        "source": name,
        "id": record_id,
        "kind": "imported",
        "safe": None,
        "category": category,
        "subcategory": None,
        "chosen_source": "imported",
        "rejected_source": "imported",
    }
