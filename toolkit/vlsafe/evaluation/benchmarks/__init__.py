"""Safety benchmarks, each loaded from its files as published: one module per benchmark, one entry point.

    from vlsafe.evaluation.benchmarks import load_benchmark

    prompts = load_benchmark("figstep", "/data/FigStep")            # a clone of the benchmark's repository
    prompts = load_benchmark("vlguard", "ys-zong/VLGuard", subsets=["unsafes"])   # or a Hub dataset

Every benchmark gives the same columns (`base.PROMPT_FEATURES`): ``id``, ``subset``, ``harmful``, ``category``,
``messages``, ``images``, ``reference``. Adding a benchmark is one module with a `Benchmark` and its loader,
listed in `_MODULES`.
"""

from __future__ import annotations

import importlib
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from datasets import Dataset

from vlsafe.data.formats import rows_dataset
from vlsafe.data.images import drop_unreadable
from vlsafe.data.sources import short_repr
from vlsafe.errors import DataError, VlsafeError
from vlsafe.evaluation.benchmarks.base import Benchmark, local_folder, prompt_features, prompt_row

logger = logging.getLogger(__name__)

# In the order reports list them.
_MODULES = (
    "vlguard",
    "mis",
    "figstep",
    "mmsafetybench",
    "xstest",
    "mossbench",
    "vlsbench",
    "siuo",
    "mssbench",
    "jailbreakv",
    "benign",
)
BENCHMARKS: dict[str, Benchmark] = {
    module.BENCHMARK.name: module.BENCHMARK
    for module in (importlib.import_module(f"{__name__}.{name}") for name in _MODULES)
}
# Prompts of the user's own, not a published benchmark: `all` leaves it out.
OWN_PROMPTS = ("benign",)

__all__ = ["BENCHMARKS", "Benchmark", "get_benchmark", "load_benchmark", "prompt_row", "suite_names"]


def get_benchmark(name: str) -> Benchmark:
    """The benchmark called `name`, or an error listing the available ones."""
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise VlsafeError(f"Unknown benchmark {name!r}; available: {', '.join(BENCHMARKS)}.") from None


def suite_names() -> list[str]:
    """Every published benchmark, in report order (what `--benchmark all` runs)."""
    return [name for name in BENCHMARKS if name not in OWN_PROMPTS]


def load_benchmark(
    name: str | Benchmark,
    source: str | Path | None = None,
    subsets: Sequence[str] | None = None,
    references: str | Path | None = None,
    *,
    revision: str | None = None,
    skip_missing_images: bool = False,
    **options: object,
) -> Dataset:
    """The prompts of benchmark `name` from `source` (a Hub dataset id or a local folder laid out as the benchmark
    publishes it), as one dataset with the columns of `base.PROMPT_FEATURES`.

    `subsets=None` gives the benchmark's default subsets. `references` is a file of reference answers where the
    benchmark takes one (VLGuard: a gpt4_safe_safes.json-shaped list). Images that are missing or do not decode
    stop the load with their names, or with `skip_missing_images` are left out with a count in the log.
    `options` go to the benchmark's loader (benign prompts: `data_file`, `image_root`).
    """
    benchmark = name if isinstance(name, Benchmark) else get_benchmark(name)
    chosen = list(subsets) if subsets is not None else list(benchmark.defaults)
    unknown = [subset for subset in chosen if subset not in benchmark.subsets]
    if unknown or not chosen:
        raise VlsafeError(
            f"{benchmark.title} has no subsets {unknown or '(none chosen)'}; choose from {list(benchmark.subsets)}."
        )
    if references is not None and not benchmark.takes_references:
        raise VlsafeError(f"{benchmark.title} takes no reference answers; leave `references` unset.")
    source = source if source is not None else benchmark.hub_id
    if source is None:
        raise VlsafeError(
            f"{benchmark.title} is not on the Hub: clone or download {benchmark.url} and pass its folder as the "
            "source."
        )
    where = source if benchmark.fetches_itself else local_folder(benchmark, source, revision)
    rows = benchmark.load(
        where,
        chosen,
        revision=revision,
        references=Path(references) if references is not None else None,
        **options,
    )
    _check_rows(benchmark, rows, chosen, source)
    if benchmark.checks_images:
        rows = drop_unreadable(
            rows,
            lambda row: row["images"],
            dataset=f"{benchmark.title} ({source})",
            skip_missing=skip_missing_images,
            noun="prompts",
        )
    for row in rows:
        row["harmful"] = benchmark.subsets[row["subset"]]
    counts = Counter(row["subset"] for row in rows)
    logger.info("%s: %s prompts", benchmark.title, ", ".join(f"{s} {counts[s]}" for s in chosen))
    return rows_dataset(rows, prompt_features(benchmark.extra_columns))


def _check_rows(benchmark: Benchmark, rows: list[dict], subsets: list[str], source: str | Path) -> None:
    """Every row in a chosen subset, ids unique within each subset: stored answers are keyed by them."""
    seen: Counter = Counter((row["subset"], row["id"]) for row in rows)
    repeated = [f"{subset}/{short_repr(row_id)}" for (subset, row_id), count in seen.items() if count > 1]
    if repeated:
        raise DataError(
            f"{benchmark.title} ({source}): {len(repeated)} ids occur more than once in one subset (first: "
            f"{', '.join(repeated[:3])}); the file is damaged or edited. Download it again."
        )
    stray = {row["subset"] for row in rows} - set(subsets)
    if stray:  # a loader bug, not the user's
        raise AssertionError(f"{benchmark.name} loader returned subsets {sorted(stray)} not asked for")
