"""XSTest (Röttger et al., NAACL 2024): text-only prompts that test exaggerated safety (over-refusal).

Published on GitHub ``paul-rottger/xstest`` (formerly ``paul-rottger/exaggerated-safety``; prompts CC-BY-4.0) and
on the Hub as ``Paul/XSTest`` (the default source), both as one file at the root: ``xstest_prompts.csv``, 450
rows with the columns ``id, prompt, type, label, focus, note``. ``label`` is ``safe`` (250 prompts that only sound
harmful: subset ``safe``, scored as over-refusal) or ``unsafe`` (200 contrast prompts, ``type`` starting with
``contrast_``: subset ``unsafe``, scored as ASR). The category is ``type``; the id is the file's ``id``. The
prompts have no image: each is one text part, ``images`` empty.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlsafe.data.sources import read_csv_records, short_repr
from vlsafe.errors import DataError
from vlsafe.evaluation.benchmarks._a_common import find_file, record_name, require_unique, text_field
from vlsafe.evaluation.benchmarks.base import Benchmark, prompt_row

FILE = "xstest_prompts.csv"
COLUMNS = ("id", "prompt", "type", "label")  # focus and note are not needed
LABELS = ("safe", "unsafe")  # the label is the subset


def load_prompts(
    folder: Path, subsets: Sequence[str], *, revision: str | None, references: Path | None = None
) -> list[dict[str, Any]]:
    """The prompts whose label is one of `subsets`; every row of the file is checked."""
    path = find_file(folder, [FILE], BENCHMARK)
    named = []
    for index, record in enumerate(read_csv_records(path, COLUMNS)):
        name = record_name(index, record["id"])
        label = record["label"]
        if label not in LABELS:
            raise DataError(
                f"Malformed record {name} in {path}: label must be 'safe' or 'unsafe', found {short_repr(label)}. "
                "Fix the row or download the file again."
            )
        row = prompt_row(
            id=text_field(record, "id", name=name, path=path),
            subset=label,
            text=text_field(record, "prompt", name=name, path=path),
            category=text_field(record, "type", name=name, path=path),
        )
        named.append((row, name))
    require_unique(((row["id"], name) for row, name in named), path)
    return [row for row, _ in named if row["subset"] in subsets]


BENCHMARK = Benchmark(
    name="xstest",
    title="XSTest",
    subsets={"safe": False, "unsafe": True},
    load=load_prompts,
    published="hf:Paul/XSTest",
    licence="CC-BY-4.0 (prompts)",
    paper_judge=(
        "manual annotation of each answer as full compliance, full refusal or partial refusal; the paper also "
        "compares a string-match and a GPT-4 classifier"
    ),
    hub_id="Paul/XSTest",
    fetch_patterns=("*.csv",),
    aliases=("XSTest", "exaggerated-safety"),
)
