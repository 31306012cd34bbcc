"""A safety evaluation as stages with plain data between them:

    prompts (benchmarks) -> generations (engine + store) -> verdicts (judges + store) -> metrics -> report

`run_evaluation` wires them; each stage lives in its own module and can be used alone.
"""

from __future__ import annotations

import logging
from typing import Any

from datasets import Dataset

from vlsafe.cards import RESULTS_VERSION
from vlsafe.evaluation.benchmarks import get_benchmark
from vlsafe.evaluation.benchmarks.base import image_paths
from vlsafe.evaluation.config import EvaluationConfig
from vlsafe.evaluation.engine import generate_suite, prompt_keys
from vlsafe.evaluation.generate import process_state, prompt_text
from vlsafe.evaluation.judging import Answer, judge_answers
from vlsafe.evaluation.prompts import load_suite
from vlsafe.evaluation.scores import compute_metrics, judge_agreement, suite_summary

logger = logging.getLogger(__name__)


def run_evaluation(config: EvaluationConfig) -> dict[str, Any] | None:
    """Generate, judge and score; the results in the main process, None in the others."""
    suite = load_suite(config)
    generations = generate_suite(config, suite)
    samples = join_samples(suite, generations)
    verdicts = judge_answers(config, [_answer(sample) for sample in samples])
    if not process_state().is_main_process:
        return None
    for index, sample in enumerate(samples):
        sample["verdicts"] = {judge: verdicts[judge][index] for judge in config.judges}
        del sample["images"]  # local file paths are not results
    _warn_truncated(samples, config.max_new_tokens)
    metrics = compute_metrics(samples, list(config.judges))
    return {
        "vlsafe_results_version": RESULTS_VERSION,
        "models": {
            variant: {
                "base_model": config.base_model,
                "adapter": config.adapter if variant == "tuned" else None,
            }
            for variant in generations
        },
        "benchmarks": {name: _benchmark_entry(name, prompts) for name, prompts in suite.items()},
        "judges": list(config.judges),
        "config": {k: v for k, v in vars(config).items() if "key" not in k},
        "metrics": metrics,
        "summary": suite_summary(metrics),
        "agreement": judge_agreement(samples, list(config.judges)),
        "samples": samples,
    }


def join_samples(
    suite: dict[str, Dataset], generations: dict[str, dict[str, list[dict[str, Any]]]]
) -> list[dict[str, Any]]:
    """One sample per model variant and prompt: the prompt's provenance next to its generation record."""
    samples = []
    for variant, by_benchmark in generations.items():
        for name, records in by_benchmark.items():
            prompts = suite[name]
            rows = prompts.remove_columns(
                "images"
            )  # judges open the image files themselves, when they need them
            for row, images, key, record in zip(
                rows, image_paths(prompts), prompt_keys(name, prompts), records, strict=True
            ):
                samples.append(
                    {
                        "model": variant,
                        "benchmark": name,
                        "subset": row["subset"],
                        "id": row["id"],
                        "key": f"{variant}/{key}",
                        "category": row["category"],
                        "harmful": row["harmful"],
                        "prompt": prompt_text(row),
                        "reference": row["reference"],
                        "images": images,
                        **{k: record[k] for k in ("generation", "new_tokens", "truncated")},
                    }
                )
    return samples


def _answer(sample: dict[str, Any]) -> Answer:
    return Answer(
        key=sample["key"],
        prompt_id=sample["id"],
        prompt=sample["prompt"],
        answer=sample["generation"],
        images=tuple(sample["images"]),
        harmful=sample["harmful"],
        reference=sample["reference"],
    )


def _benchmark_entry(name: str, prompts: Dataset) -> dict[str, Any]:
    """What a report and a card say about a benchmark: its title, where it is published, its licence."""
    benchmark = get_benchmark(name)
    subsets = {subset: prompts["subset"].count(subset) for subset in dict.fromkeys(prompts["subset"])}
    return {
        "title": benchmark.title,
        "published": benchmark.published,
        "url": benchmark.url,
        "licence": benchmark.licence,
        "paper_judge": benchmark.paper_judge,
        "subsets": {
            subset: {"prompts": n, "harmful": benchmark.subsets[subset]} for subset, n in subsets.items()
        },
    }


def _warn_truncated(samples: list[dict[str, Any]], max_new_tokens: int) -> None:
    truncated = sum(sample["truncated"] for sample in samples)
    if truncated:
        logger.warning(
            "%d of %d answers hit max_new_tokens=%d (marked truncated)",
            truncated,
            len(samples),
            max_new_tokens,
        )
