"""Refusal-judge accuracy: vlsafe's keyword judge against the paper baselines, on labelled answers.

    python benchmarks/judge_accuracy.py [--errors] [--speed_seconds 1.0]

Reads tests/data/refusal_dev.jsonl (the set the keyword judge was tuned on) and
tests/data/refusal_holdout.jsonl (written before tuning and never tuned on: the honest estimate), both
written for vlsafe. A `partial` refusal counts as a refusal. Prints, as Markdown: accuracy, refusal
precision, recall and F1 of each judge on each set; the keyword judge's accuracy per kind of answer; and its
speed in answers per second on one CPU core. `--errors` lists the answers the keyword judge gets wrong.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from vlsafe.errors import DataError
from vlsafe.evaluation.judges import REFUSED, find_refusal, keyword_label, vlguard_keyword, xstest_strmatch

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
SETS = {"dev": DATA / "refusal_dev.jsonl", "holdout": DATA / "refusal_holdout.jsonl"}
LABELS = ("refused", "complied", "partial")
JUDGES: dict[str, Callable[[str], str]] = {
    "vlsafe keyword (default)": keyword_label,
    "VLGuard keyword (2024)": vlguard_keyword,
    "XSTest string match": xstest_strmatch,
}
DEFAULT_JUDGE = "vlsafe keyword (default)"


def load_answers(path: Path) -> list[dict[str, str]]:
    """The labelled answers of one JSONL file (`{"_comment": ...}` lines skipped), each checked for the
    fields `id`, `text`, `label` (refused/complied/partial) and `kind`."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if "_comment" in row:
            continue
        if set(row) != {"id", "text", "label", "kind"} or row["label"] not in LABELS:
            raise DataError(
                f"{path}:{number}: expected the fields id, text, label, kind with label one of {LABELS}, "
                f"got {sorted(row)} / {row.get('label')!r}; fix that line."
            )
        rows.append(row)
    return rows


@dataclass(frozen=True)
class Scores:
    """Confusion counts of a judge against the labels, refusal as the positive class."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    @property
    def accuracy(self) -> float:
        return (self.tp + self.tn) / self.n if self.n else 0.0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        total = self.precision + self.recall
        return 2 * self.precision * self.recall / total if total else 0.0


def score(judge: Callable[[str], str], rows: Iterable[dict[str, str]]) -> Scores:
    """How a judge's `refused` verdicts agree with the labels (`refused` and `partial` are refusals)."""
    tp = fp = fn = tn = 0
    for row in rows:
        gold, said = row["label"] != "complied", judge(row["text"]) == REFUSED
        tp, fp, fn, tn = (
            tp + (gold and said),
            fp + (said and not gold),
            fn + (gold and not said),
            tn + (not gold and not said),
        )
    return Scores(tp, fp, fn, tn)


def score_by_kind(judge: Callable[[str], str], rows: list[dict[str, str]]) -> dict[str, Scores]:
    """`score` per kind of answer, kinds in order of first appearance."""
    kinds = dict.fromkeys(row["kind"] for row in rows)
    return {kind: score(judge, (row for row in rows if row["kind"] == kind)) for kind in kinds}


def answers_per_second(texts: list[str], seconds: float) -> float:
    """The keyword judge's speed: best of repeated passes over `texts` for about `seconds`."""
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == 0.0:
        start = time.perf_counter()
        for text in texts:
            keyword_label(text)
        best = max(best, len(texts) / (time.perf_counter() - start))
    return best


def report(sets: dict[str, list[dict[str, str]]], speed_seconds: float = 1.0) -> str:
    """The Markdown tables: each judge on each set, the default judge per kind, its speed."""
    lines = ["| set | judge | n | accuracy | precision | recall | F1 |", "|---|---|---|---|---|---|---|"]
    for name, rows in sets.items():
        for judge_name, judge in JUDGES.items():
            s = score(judge, rows)
            lines.append(
                f"| {name} | {judge_name} | {s.n} | {s.accuracy:.3f} | {s.precision:.3f} | {s.recall:.3f} | {s.f1:.3f} |"
            )
    by_kind = {name: score_by_kind(keyword_label, rows) for name, rows in sets.items()}
    lines += ["", f"{DEFAULT_JUDGE}, accuracy per kind (n):", ""]
    lines += ["| kind | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
    for kind in dict.fromkeys(kind for kinds in by_kind.values() for kind in kinds):
        cells = [
            f"{by_kind[name][kind].accuracy:.3f} ({by_kind[name][kind].n})" if kind in by_kind[name] else "-"
            for name in sets
        ]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    if speed_seconds > 0:
        texts = [row["text"] for rows in sets.values() for row in rows]
        lines += ["", f"speed: {answers_per_second(texts, speed_seconds):,.0f} answers/s (one CPU core)"]
    return "\n".join(lines)


def errors(sets: dict[str, list[dict[str, str]]]) -> str:
    """Each answer the default judge gets wrong, with the rule that fired (if any)."""
    lines = []
    for name, rows in sets.items():
        for row in rows:
            said = keyword_label(row["text"]) == REFUSED
            if said != (row["label"] != "complied"):
                kind = "false refusal" if said else "missed refusal"
                lines.append(
                    f"{name} {row['id']} [{row['kind']}] {kind}: {row['text']!r} -> {find_refusal(row['text'])}"
                )
    return "\n".join(lines) or "no errors"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--errors", action="store_true", help="list the keyword judge's mistakes")
    parser.add_argument(
        "--speed_seconds", type=float, default=1.0, help="time spent measuring speed (0: skip)"
    )
    args = parser.parse_args()
    sets = {name: load_answers(path) for name, path in SETS.items()}
    print(report(sets, args.speed_seconds))
    if args.errors:
        print("\n" + errors(sets))


if __name__ == "__main__":
    main()
