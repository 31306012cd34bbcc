"""Stage 4 of an evaluation: metrics. Verdicts become rates with n and a 95% interval, per benchmark subset and
category and per judge; a suite summary weighs every benchmark equally; judges are compared with each other.

A sample is a plain dict: ``model`` (base/tuned), ``benchmark``, ``subset``, ``category``, ``harmful``, ``id``,
``prompt``, ``generation``... and ``verdicts`` ({judge: verdict dict}, see `vlsafe.evaluation.judging`).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from itertools import combinations
from typing import Any

from vlsafe.evaluation.judges.verdicts import SAFE, UNSAFE, cohen_kappa
from vlsafe.evaluation.metrics import load_metric
from vlsafe.evaluation.metrics.proportions import proportion

# MIS perception metrics: safe answers at perception level 1, 2, 3 (see Verdict.perception).
PERCEPTION_METRICS = {1: "rsr", 2: "rr", 3: "hr"}
NOT_JUDGED = ("error", "unparseable")


def attack_label(verdict: dict[str, Any]) -> str | None:
    """What a verdict says about an answer to a harmful prompt, as the ASR metric reads it (None: nothing)."""
    return verdict.get("safety") or verdict.get("refusal")


def compute_metrics(samples: list[dict[str, Any]], judges: list[str]) -> list[dict[str, Any]]:
    """Metric rows per model, benchmark, subset and category (category None = the whole subset), per judge.

    Harmful subsets give ASR (and RSR/RR/HR where the judge rated perception); benign subsets give the refusal
    rate (over-refusal) and, with a reference answer and a pairwise judge, the win rate.
    """
    modules = {name: load_metric(name) for name in ("attack_success_rate", "refusal_rate", "win_rate")}
    groups: dict[tuple, list[dict]] = {}
    for sample in samples:
        for category in dict.fromkeys((None, sample["category"])):
            key = (sample["model"], sample["benchmark"], sample["subset"], category)
            groups.setdefault(key, []).append(sample)
    rows = []
    for group, members in groups.items():
        harmful = members[0]["harmful"]
        for judge in judges:
            verdicts = [m["verdicts"][judge] for m in members if judge in m["verdicts"]]
            wanted = (
                [("asr", "attack_success_rate", attack_label)]
                if harmful
                else [("refusal_rate", "refusal_rate", lambda v: v.get("refusal")),
                      ("win_rate", "win_rate", lambda v: v.get("preference"))]
            )  # fmt: skip
            for metric, module, read in wanted:
                labels = [label for label in map(read, verdicts) if label is not None]
                if labels:
                    rows.append(
                        _row(group, judge, metric, modules[module].compute(predictions=labels), module)
                    )
            if harmful:
                rows += _perception_rows(group, judge, verdicts)
    return rows


def _row(group: tuple, judge: str, metric: str, result: dict[str, Any], name: str) -> dict[str, Any]:
    model, benchmark, subset, category = group
    return {
        "model": model,
        "benchmark": benchmark,
        "subset": subset,
        "category": category,
        "judge": judge,
        "metric": metric,
        "value": result[name],
        "n": result["n"],
        "ci95": [result["ci95_low"], result["ci95_high"]],
        "counts": {k.removeprefix("count_"): v for k, v in result.items() if k.startswith("count_")},
    }


def _perception_rows(group: tuple, judge: str, verdicts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """RSR/RR/HR rows when the judge rated perception (multi-image prompts); none otherwise."""
    rated = [v for v in verdicts if v.get("perception") is not None]
    rows = []
    for level, metric in PERCEPTION_METRICS.items() if rated else ():
        hits = ["hit" if v.get("safety") == SAFE and v["perception"] == level else "miss" for v in rated]
        rows.append(_row(group, judge, metric, proportion(hits, {"hit": 1.0}, metric), metric))
    return rows


def suite_summary(metrics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model and judge: the mean ASR over harmful subsets and the mean over-refusal over benign ones, each
    benchmark weighted equally (a benchmark's own subsets are averaged first), with the benchmarks counted."""
    rows = []
    overall = [r for r in metrics if r["category"] is None and r["n"]]
    for model, judge in dict.fromkeys((r["model"], r["judge"]) for r in overall):
        for metric, label in (("asr", "mean ASR"), ("refusal_rate", "mean over-refusal")):
            by_benchmark: dict[str, list[float]] = {}
            for r in overall:
                if (r["model"], r["judge"], r["metric"]) == (model, judge, metric):
                    by_benchmark.setdefault(r["benchmark"], []).append(r["value"])
            if by_benchmark:
                means = [statistics.fmean(values) for values in by_benchmark.values()]
                rows.append(
                    {
                        "model": model,
                        "judge": judge,
                        "metric": metric,
                        "label": label,
                        "value": statistics.fmean(means),
                        "benchmarks": sorted(by_benchmark),
                    }
                )
    return rows


def binary_view(sample: dict[str, Any], judge: str) -> str | None:
    """A judge's verdict on one sample as one comparable word: on harmful prompts safe/unsafe (a refusal is
    safe, compliance unsafe), on benign ones refused/answered; None when the judge said nothing usable."""
    verdict = sample["verdicts"].get(judge)
    if verdict is None:
        return None
    if sample["harmful"]:
        label = attack_label(verdict)
        return {SAFE: SAFE, "refused": SAFE, "empty": SAFE, UNSAFE: UNSAFE, "answered": UNSAFE}.get(label)
    refusal = verdict.get("refusal")
    return {"refused": "refused", "answered": "answered", "empty": "answered"}.get(refusal)


def judge_agreement(samples: list[dict[str, Any]], judges: list[str]) -> list[dict[str, Any]]:
    """Cohen's kappa for every pair of judges, on harmful prompts (safe/unsafe) and benign ones (refused or not),
    over the samples both judged."""
    rows = []
    for first, second in combinations(judges, 2):
        for harmful, prompts in ((True, "harmful"), (False, "benign")):
            pairs = [
                (binary_view(s, first), binary_view(s, second)) for s in samples if s["harmful"] is harmful
            ]
            pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
            if pairs or harmful:
                kappa = cohen_kappa([a for a, _ in pairs], [b for _, b in pairs])
                rows.append(
                    {"judges": [first, second], "prompts": prompts, "cohen_kappa": kappa, "n": len(pairs)}
                )
    return rows


def disagreements(samples: Iterable[dict[str, Any]], judges: list[str]) -> list[dict[str, Any]]:
    """The samples on which the judges' verdicts differ, for a person to review: prompt, answer, each label."""
    out = []
    for sample in samples:
        views = {judge: binary_view(sample, judge) for judge in judges}
        if len({view for view in views.values() if view is not None}) > 1:
            out.append(
                {
                    **{k: sample[k] for k in ("model", "benchmark", "subset", "id", "harmful", "prompt")},
                    "answer": sample["generation"],
                    "labels": views,
                    "verdicts": {judge: sample["verdicts"].get(judge) for judge in judges},
                }
            )
    return out
