"""Refusal rates per prompt subset: the quick before/after check of the demo."""

from __future__ import annotations

from collections import Counter
from typing import Any

from datasets import Dataset
from transformers import PreTrainedModel, ProcessorMixin

from vlsafe.evaluation.generate import generate_answers
from vlsafe.evaluation.judges import EMPTY, REFUSED, keyword_label


def refusal_rates(
    model: PreTrainedModel, processor: ProcessorMixin, subsets: dict[str, Dataset], **generation: Any
) -> dict[str, dict[str, Any]]:
    """For each subset: keyword-judged refusal rate, counts, and the answers (for inspection)."""
    results = {}
    for name, dataset in subsets.items():
        answers = generate_answers(model, processor, list(dataset), **generation)
        labels = Counter(keyword_label(answer) for answer in answers)
        results[name] = {
            "n": len(answers),
            "refused": labels[REFUSED],
            "empty": labels[EMPTY],
            "refusal_rate": labels[REFUSED] / len(answers) if answers else float("nan"),
            "answers": answers,
        }
    return results


def format_table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """A plain-text table: one row per subset, one column per model (share of answers that refuse)."""
    models = list(results)
    subsets = list(next(iter(results.values())))
    header = f"{'subset (refusal rate)':<24}" + "".join(f"{model:>14}" for model in models)
    lines = [header, "-" * len(header)]
    for subset in subsets:
        cells = "".join(
            f"{results[m][subset]['refusal_rate']:>8.0%} ({results[m][subset]['refused']:>2}/{results[m][subset]['n']})".rjust(
                14
            )
            for m in models
        )
        lines.append(f"{subset:<24}{cells}")
    return "\n".join(lines)
