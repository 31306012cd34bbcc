"""Safety metrics as `evaluate` modules (one folder each, loadable by path with `evaluate.load`)."""

from __future__ import annotations

from pathlib import Path

import evaluate

METRICS = ("attack_success_rate", "refusal_rate", "win_rate")


def metric_path(name: str) -> Path:
    """The folder of a vlsafe metric module, for `evaluate.load(str(path))`."""
    if name not in METRICS:
        raise ValueError(f"Unknown metric {name!r}; vlsafe has {list(METRICS)}.")
    return Path(__file__).parent / name


def load_metric(name: str) -> evaluate.EvaluationModule:
    """Load a vlsafe metric through `evaluate.load`, as any user of `evaluate` would."""
    return evaluate.load(str(metric_path(name)))
