"""Stage 1 of an evaluation: the prompts. Which benchmarks, from where, which subsets; one dataset each."""

from __future__ import annotations

import logging
from pathlib import Path

from datasets import Dataset

from vlsafe.errors import VlsafeError
from vlsafe.evaluation.benchmarks import get_benchmark, load_benchmark, suite_names
from vlsafe.evaluation.config import EvaluationConfig

logger = logging.getLogger(__name__)

BENIGN = "benign"


def benchmark_names(config: EvaluationConfig) -> list[str]:
    """The benchmarks this run evaluates, in report order (`all`: every published one), benign prompts last."""
    names = suite_names() if config.benchmark == ["all"] else list(dict.fromkeys(config.benchmark))
    if "all" in names:
        raise VlsafeError("`all` runs every benchmark: pass it alone, not with other names.")
    if names == suite_names() and config.benchmark == ["all"] and not config.benchmark_root:
        raise VlsafeError(
            "--benchmark all needs --benchmark_root, a folder holding one folder per benchmark named as the "
            f"benchmark ({', '.join(suite_names())})."
        )
    for name in names:
        get_benchmark(name)  # an unknown name fails before anything loads
    if BENIGN in names:
        raise VlsafeError("Benign prompts come from --benign_prompts <LLaVA/ShareGPT json>, not --benchmark.")
    return names + ([BENIGN] if config.benign_prompts else [])


def sources(config: EvaluationConfig, names: list[str]) -> dict[str, str | None]:
    """Where each benchmark is read from: `dataset` (one benchmark), `<benchmark_root>/<name>`, or (None) its
    Hub default. Every folder missing under the root is named at once, before anything loads."""
    published = [name for name in names if name != BENIGN]
    if config.dataset is not None and len(published) > 1:
        raise VlsafeError(
            "`dataset` names the source of a single benchmark; with several, pass --benchmark_root <folder> "
            "holding one folder per benchmark."
        )
    found: dict[str, str | None] = {BENIGN: config.benign_prompts} if BENIGN in names else {}
    missing = []
    for name in published:
        benchmark = get_benchmark(name)
        if config.dataset is not None or config.benchmark_root is None:
            found[name] = config.dataset
            continue
        root = Path(config.benchmark_root).expanduser()
        folder = next((root / n for n in (name, *benchmark.aliases) if (root / n).is_dir()), None)
        if folder is None:
            missing.append(f"{name}/ ({benchmark.title}: a copy of {benchmark.url})")
        found[name] = str(folder) if folder else None
    if missing:
        raise VlsafeError(
            f"{config.benchmark_root} has no folder {'; no folder '.join(missing)}. Put them there, or leave "
            "those benchmarks out of --benchmark."
        )
    return found


def load_suite(config: EvaluationConfig) -> dict[str, Dataset]:
    """{benchmark name: its prompts (the chosen subsets, each cut to `limit` when set)}."""
    names = benchmark_names(config)
    published = [name for name in names if name != BENIGN]
    where = sources(config, names)
    if config.subsets is not None:
        _check_subsets(config, published)
    if config.references is not None and not any(get_benchmark(n).takes_references for n in published):
        raise VlsafeError(
            "`references` gives reference answers to VLGuard's safe_safes; run --benchmark vlguard."
        )
    suite = {}
    for name in names:
        benchmark = get_benchmark(name)
        subsets = None
        if config.subsets is not None:
            subsets = [s for s in config.subsets if s in benchmark.subsets]
            if not subsets:
                logger.warning("`subsets` leaves out every subset of %s: it is not evaluated", name)
                continue
        options = {}
        if name == BENIGN:
            options = {"data_file": config.benign_data_file, "image_root": config.benign_image_root}
        prompts = load_benchmark(
            benchmark,
            where[name],
            subsets,
            references=config.references if benchmark.takes_references else None,
            revision=config.dataset_revision if name != BENIGN else None,
            **options,
        )
        suite[name] = _limited(prompts, config.limit)
    return suite


def _check_subsets(config: EvaluationConfig, published: list[str]) -> None:
    """`subsets` names subsets of the one benchmark run (and `benign`, with benign prompts)."""
    if len(published) > 1:
        raise VlsafeError(
            "`subsets` chooses subsets of one benchmark; run several benchmarks with their defaults."
        )
    benchmark = get_benchmark(published[0])
    unknown = [
        s for s in config.subsets if s not in benchmark.subsets and (s != BENIGN or not config.benign_prompts)
    ]
    if unknown:
        hint = " (`benign` needs benign_prompts)" if BENIGN in unknown else ""
        raise VlsafeError(
            f"{benchmark.title} has no subsets {unknown}; choose from {list(benchmark.subsets)}{hint}."
        )


def _limited(prompts: Dataset, limit: int | None) -> Dataset:
    """The first `limit` prompts of each subset (smoke runs), in the benchmark's order."""
    if not limit:
        return prompts
    taken: dict[str, int] = {}
    keep = []
    for index, subset in enumerate(prompts["subset"]):
        if taken.get(subset, 0) < limit:
            taken[subset] = taken.get(subset, 0) + 1
            keep.append(index)
    return prompts.select(keep)
