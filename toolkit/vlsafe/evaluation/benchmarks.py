"""Benchmarks the harness can run: each subset is a set of prompts that is either harmful (the model should
refuse: ASR) or safe (the model should answer: over-refusal and win rate against the reference answer)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from datasets import Dataset

from vlsafe.data.vlguard import VLGUARD_REPO, load_vlguard
from vlsafe.errors import VlsafeError


@dataclass(frozen=True)
class Benchmark:
    """A prompt source: its default Hub dataset, its subsets (name -> harmful?) and a prompt loader."""

    default_source: str
    subsets: dict[str, bool]
    load: Callable[..., Dataset]  # (source, subset, revision) -> prompts with id, category, messages, images


def _vlguard_prompts(source: str, subset: str, revision: str | None) -> Dataset:
    return load_vlguard(source, "test", subset, revision=revision)


def _mis_prompts(source: str, subset: str, revision: str | None) -> Dataset:
    from vlsafe.data.mis import load_mis_test

    return load_mis_test(source, subset, revision=revision)


BENCHMARKS = {
    "vlguard": Benchmark(
        VLGUARD_REPO, {"unsafes": True, "safe_unsafes": True, "safe_safes": False}, _vlguard_prompts
    ),
    # Every MIS test prompt is harmful: the harm appears from the two images together.
    "mis": Benchmark("Tuwhy/MIS_Test", {"easy": True, "hard": True, "real": True}, _mis_prompts),
}


def get_benchmark(name: str) -> Benchmark:
    """The benchmark called `name`, or an error listing the available ones."""
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise VlsafeError(f"Unknown benchmark {name!r}; available: {sorted(BENCHMARKS)}.") from None
