"""Stage 5 of an evaluation: the report. A table per judge (a row per benchmark subset, categories below, then the
suite summary), judge agreement, the plot, results.json and, with several judges, disagreements.jsonl."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from vlsafe.evaluation.scores import disagreements

logger = logging.getLogger(__name__)

# Subset names as the papers print them.
SUBSET_NAMES = {
    "vlguard": {"unsafes": "Unsafe", "safe_unsafes": "Safe-Unsafe", "safe_safes": "Safe-Safe"},
    "mis": {"easy": "MIS-easy", "hard": "MIS-hard", "real": "MIS-real"},
    "benign": {"benign": "Benign"},
}
METRIC_LABELS = {
    "asr": "ASR (lower better)",
    "rsr": "RSR: safe, perceives both images (higher better)",
    "rr": "RR: safe, partial perception",
    "hr": "HR: safe, misperceives",
    "win_rate": "win rate vs reference (higher better)",
    "refusal_rate": "refusal = over-refusal (lower better)",
}
HARMFUL_METRICS, BENIGN_METRICS = ("asr", "rsr", "rr", "hr"), ("win_rate", "refusal_rate")
KEYWORD_ONLY_NOTE = {
    "mis": "Keyword judge: refusal-based ASR only; RSR/RR/HR need a judge that sees both images (model or api)."
}
REFUSAL_JUDGES = ("keyword", "vlguard_keyword", "xstest_strmatch")
LABEL_WIDTH, CELL_WIDTH = 52, 30


def row_label(benchmark: str, subset: str, metric: str) -> str:
    """E.g. "Safe-Unsafe ASR (lower better)", "figstep/safebench ASR (lower better)"."""
    name = SUBSET_NAMES.get(benchmark, {}).get(subset, f"{benchmark}/{subset}")
    return f"{name} {METRIC_LABELS.get(metric, metric)}"


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "-"
    low, high = row["ci95"]
    return f"{row['value']:6.1%} [{low:.0%}-{high:.0%}] n={row['n']}"


def _lookup(metrics: list[dict], **match: Any) -> dict[str, Any] | None:
    return next((row for row in metrics if all(row.get(k) == v for k, v in match.items())), None)


def table_rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(benchmark, subset, metric) of every table row, in report order: benchmarks and their subsets as run."""
    rows = []
    for name, entry in results["benchmarks"].items():
        for subset, info in entry["subsets"].items():
            metrics = HARMFUL_METRICS if info["harmful"] else BENIGN_METRICS
            rows += [(name, subset, metric) for metric in metrics]
    return rows


def _line(label: str, cells: list[dict[str, Any] | None]) -> str:
    return f"{label:<{LABEL_WIDTH}}" + "".join(f"{_cell(c):>{CELL_WIDTH}}" for c in cells)


def format_table(results: dict[str, Any]) -> str:
    """Plain-text report: per judge, metric rows x model columns (value, 95% CI, n), categories, the suite mean."""
    metrics, models = results["metrics"], list(results["models"])
    lines = []
    for judge in results["judges"]:
        header = f"{'judge: ' + judge:<{LABEL_WIDTH}}" + "".join(f"{model:>{CELL_WIDTH}}" for model in models)
        lines += [header, "-" * len(header)]
        current = None
        for benchmark, subset, metric in table_rows(results):
            found = dict(benchmark=benchmark, subset=subset, metric=metric, judge=judge)
            cells = [_lookup(metrics, model=m, category=None, **found) for m in models]
            if not any(cells):
                continue
            if benchmark != current and len(results["benchmarks"]) > 1:
                lines.append(f"[{results['benchmarks'][benchmark]['title']}]")
                current = benchmark
            lines.append(_line(row_label(benchmark, subset, metric), cells))
            if metric == "asr":
                lines += _category_lines(metrics, models, found)
        lines += _summary_lines(results, judge, models)
        lines.append("")
    benchmarks = list(results["benchmarks"])
    if all(judge in REFUSAL_JUDGES for judge in results["judges"]):
        lines += [KEYWORD_ONLY_NOTE[name] for name in benchmarks if name in KEYWORD_ONLY_NOTE]
    for row in results.get("agreement", []):
        kappa = "undefined" if row["cohen_kappa"] is None else f"{row['cohen_kappa']:.2f}"
        first, second = row["judges"]
        lines.append(
            f"Agreement {first} vs {second} ({row['prompts']} prompts): Cohen's kappa {kappa}, n={row['n']}"
        )
    return "\n".join(lines).rstrip()


def _category_lines(metrics: list[dict], models: list[str], found: dict[str, Any]) -> list[str]:
    categories = sorted(
        {r["category"] for r in metrics if r["category"] and all(r[k] == v for k, v in found.items())}
    )
    lines = []
    for category in categories:
        cells = [_lookup(metrics, model=m, category=category, **found) for m in models]
        lines.append(_line(f"  {found['subset']} ASR, {category}"[:LABEL_WIDTH], cells))
    return lines


def _summary_lines(results: dict[str, Any], judge: str, models: list[str]) -> list[str]:
    summary = [row for row in results.get("summary", []) if row["judge"] == judge]
    if len(results["benchmarks"]) < 2 or not summary:
        return []
    lines = ["[Suite: each benchmark weighted equally]"]
    for metric in ("asr", "refusal_rate"):
        cells = {row["model"]: row for row in summary if row["metric"] == metric}
        if cells:
            counted = max(len(row["benchmarks"]) for row in cells.values())
            label = f"{next(iter(cells.values()))['label']} over {counted} benchmarks (lower better)"
            values = [f"{cells[m]['value']:6.1%}" if m in cells else "-" for m in models]
            lines.append(f"{label:<{LABEL_WIDTH}}" + "".join(f"{v:>{CELL_WIDTH}}" for v in values))
    return lines


def plot_results(results: dict[str, Any], path: str | Path) -> Path:
    """Grouped bars (base vs tuned) per table row with 95% CI whiskers, one panel per judge."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics, models, judges = results["metrics"], list(results["models"]), results["judges"]
    panels = []
    for judge in judges:
        rows = [
            (benchmark, subset, metric)
            for benchmark, subset, metric in table_rows(results)
            if _lookup(metrics, benchmark=benchmark, subset=subset, metric=metric, judge=judge, category=None)
        ]
        panels.append((judge, rows))
    widest = max((len(rows) for _, rows in panels), default=1)
    figure, axes = plt.subplots(
        len(judges), 1, figsize=(max(6, 0.9 * widest + 2), 4 * len(judges)), squeeze=False
    )
    width = 0.8 / len(models)
    for axis, (judge, rows) in zip(axes[:, 0], panels, strict=True):
        for offset, model in enumerate(models):
            cells = [
                _lookup(metrics, model=model, benchmark=b, subset=s, metric=m, judge=judge, category=None)
                for b, s, m in rows
            ]
            values = [c["value"] if c else 0 for c in cells]
            errors = [
                [c["value"] - c["ci95"][0] if c else 0 for c in cells],
                [c["ci95"][1] - c["value"] if c else 0 for c in cells],
            ]
            positions = [i + offset * width for i in range(len(rows))]
            axis.bar(positions, values, width, yerr=errors, capsize=3, label=model)
        axis.set_xticks([i + width * (len(models) - 1) / 2 for i in range(len(rows))])
        axis.set_xticklabels(
            [row_label(*row).split(" (")[0].replace(" = ", "\n") for row in rows],
            fontsize=7,
            rotation=30,
            ha="right",
        )
        axis.set_ylim(0, 1.05)
        axis.set_title(f"judge: {judge}")
        axis.legend()
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_results(results: dict[str, Any], output_dir: str | Path) -> Path:
    """results.json, results.png and, with several judges, disagreements.jsonl in `output_dir`; the json's path."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    path.write_text(json.dumps(results, indent=1, default=str))
    plot_results(results, out / "results.png")
    review = out / "disagreements.jsonl"
    if len(results["judges"]) > 1:
        rows = disagreements(results["samples"], results["judges"])
        review.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        logger.info("%d answers on which the judges disagree: %s", len(rows), review)
    else:
        review.unlink(missing_ok=True)  # an earlier run's review would not match these results
    logger.info("Wrote %s and %s", path, out / "results.png")
    return path
