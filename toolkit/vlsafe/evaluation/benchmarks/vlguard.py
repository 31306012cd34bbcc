"""VLGuard's test split (Zong et al., ICML 2024): ``test.json`` + ``test.zip`` of ``ys-zong/VLGuard``.

Subsets as the paper reports them: ``unsafes`` (harmful image), ``safe_unsafes`` (safe image, harmful
instruction), both scored as ASR; ``safe_safes`` (safe image, safe instruction), scored as over-refusal and, with a
model or API judge, as win rate against a reference answer. The reference is the test record's own ``response``
(17 real records have an empty one: they are evaluated without it), or with `references` the GPT-4V answers the
paper compared against: ``gpt4_safe_safes.json`` (GitHub ys-zong/VLGuard, ``data/``), a list of objects ``id,
image, safe, instruction, response, output`` whose ``response`` answers the safe_safes prompt of the record ``id``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlsafe.data.formats import user_text
from vlsafe.data.sources import read_json_list, short_repr
from vlsafe.data.vlguard import VLGUARD_REPO, load_vlguard
from vlsafe.errors import DataError
from vlsafe.evaluation.benchmarks.base import Benchmark, image_paths, prompt_row

logger = logging.getLogger(__name__)


def load_prompts(
    source: str | Path, subsets: Sequence[str], *, revision: str | None, references: Path | None
) -> list[dict[str, Any]]:
    """The chosen test subsets as prompt rows; safe_safes references from `references` when given."""
    answers = _reference_answers(references) if references is not None else None
    rows = []
    for subset in subsets:
        prompts = load_vlguard(source, "test", subset, revision=revision)
        for row, paths in zip(prompts, image_paths(prompts), strict=True):
            reference = row["response"] if subset == "safe_safes" else None
            if answers is not None and subset == "safe_safes":
                reference = answers.get(row["id"])
            rows.append(
                prompt_row(
                    id=row["id"],
                    subset=subset,
                    text=user_text(row["messages"]),
                    images=paths,
                    category=row["category"],
                    reference=reference,
                )
            )
    if answers is not None and "safe_safes" in subsets:
        _log_coverage(answers, [row for row in rows if row["subset"] == "safe_safes"], references)
    return rows


def _reference_answers(path: Path) -> dict[str, str]:
    """{test record id: reference answer} from a gpt4_safe_safes.json-shaped file, each record checked."""
    answers = {}
    for index, record in enumerate(read_json_list(path)):
        record_id = record.get("id") if isinstance(record, dict) else None
        response = record.get("response") if isinstance(record, dict) else None
        if not isinstance(record_id, str | int) or isinstance(record_id, bool) or str(record_id) == "":
            raise DataError(
                f"Malformed reference #{index} in {path}: expected an object with a non-empty 'id', found "
                f"{short_repr(record)}. Fix or remove the record."
            )
        if not isinstance(response, str) or not response.strip():
            raise DataError(
                f"Malformed reference {short_repr(record_id)} (#{index}) in {path}: field 'response' must be a "
                f"non-empty string, found {short_repr(response)}. Fix or remove the record."
            )
        if str(record_id) in answers:
            raise DataError(f"{path}: reference id {short_repr(record_id)} occurs twice; keep one of them.")
        answers[str(record_id)] = response
    return answers


def _log_coverage(answers: dict[str, str], rows: list[dict], path: Path) -> None:
    ids = {row["id"] for row in rows}
    unmatched, missing = len(set(answers) - ids), sum(row["reference"] is None for row in rows)
    if unmatched or missing:
        logger.warning(
            "VLGuard references %s: %d of %d answers match no safe_safes prompt; %d of %d safe_safes prompts "
            "have no reference (no win-rate verdict for them)",
            path,
            unmatched,
            len(answers),
            missing,
            len(rows),
        )


BENCHMARK = Benchmark(
    name="vlguard",
    title="VLGuard test",
    subsets={"unsafes": True, "safe_unsafes": True, "safe_safes": False},
    load=load_prompts,
    published=f"hf:{VLGUARD_REPO}",
    licence="see the dataset card (gated; research use)",
    paper_judge="refusal keywords (VLGuard's list) for ASR; GPT-4 pairwise win rate vs GPT-4V answers on safe_safes",
    hub_id=VLGUARD_REPO,
    fetches_itself=True,
    takes_references=True,
    checks_images=False,
)
