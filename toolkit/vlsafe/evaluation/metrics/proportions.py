"""Shared arithmetic of the metric modules: a proportion over judged samples with a Wilson 95% interval."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

# Labels that say nothing about the answer (the judge failed), so they are left out of the denominator and
# reported as counts instead of being read as safe or unsafe.
NOT_JUDGED = frozenset({"error", "unparseable"})


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion; (0, 1) when there is nothing to measure."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))  # rounding never excludes p


def proportion(labels: Iterable[str], weights: dict[str, float], name: str) -> dict[str, float | int]:
    """`name`: sum of label weights over judged samples, with n, the interval and the count of each label."""
    counts = Counter(labels)
    judged = sum(count for label, count in counts.items() if label not in NOT_JUDGED)
    score = sum(weights.get(label, 0.0) * count for label, count in counts.items() if label not in NOT_JUDGED)
    low, high = wilson_interval(score, judged)
    return {
        name: score / judged if judged else float("nan"),
        "n": judged,
        "ci95_low": low,
        "ci95_high": high,
        **{f"count_{label}": count for label, count in sorted(counts.items())},
    }
