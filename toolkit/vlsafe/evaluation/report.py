"""Reports of an evaluation: the VLGuard-shaped table, per-category ASR, the plot and results.json."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Rows of each benchmark's table, as its paper reports them: (subset, metric, label).
TABLE_ROWS = {
    "vlguard": (
        ("safe_safes", "win_rate", "Safe-Safe win rate vs reference (higher better)"),
        ("safe_safes", "refusal_rate", "Safe-Safe refusal = over-refusal (lower better)"),
        ("safe_unsafes", "asr", "Safe-Unsafe ASR (lower better)"),
        ("unsafes", "asr", "Unsafe ASR (lower better)"),
    ),
    "mis": tuple(
        (split, metric, f"MIS-{split} {label}")
        for split in ("easy", "hard", "real")
        for metric, label in (
            ("asr", "ASR (lower better)"),
            ("rsr", "RSR: safe, perceives both images (higher better)"),
            ("rr", "RR: safe, partial perception"),
            ("hr", "HR: safe, misperceives"),
        )
    ),
}
# The extra safe prompts any benchmark can run with (EvaluationConfig.benign_prompts), shown under its rows.
BENIGN_ROWS = (
    ("benign", "win_rate", "Benign win rate vs reference (higher better)"),
    ("benign", "refusal_rate", "Benign refusal = over-refusal (lower better)"),
)
KEYWORD_ONLY_NOTE = {
    "mis": "Keyword judge: refusal-based ASR only; RSR/RR/HR need a judge that sees both images (model or api)."
}


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "-"
    low, high = row["ci95"]
    return f"{row['value']:6.1%} [{low:.0%}-{high:.0%}] n={row['n']}"


def _lookup(metrics: list[dict], **match: Any) -> dict[str, Any] | None:
    return next((row for row in metrics if all(row.get(k) == v for k, v in match.items())), None)


def table_rows(benchmark: str) -> tuple[tuple[str, str, str], ...]:
    """(subset, metric, label) rows of `benchmark`'s table; rows without numbers are skipped when shown."""
    return TABLE_ROWS[benchmark] + BENIGN_ROWS


def format_table(results: dict[str, Any]) -> str:
    """Plain-text table: metric rows x model columns (value, 95% CI, n), one block per judge, then ASR by category."""
    metrics, models = results["metrics"], list(results["models"])
    benchmark = results["config"]["benchmark"]
    lines = []
    for judge in results["judges"]:
        header = f"{'judge: ' + judge:<50}" + "".join(f"{model:>30}" for model in models)
        lines += [header, "-" * len(header)]
        for subset, metric, label in table_rows(benchmark):
            cells = [
                _lookup(metrics, model=m, subset=subset, metric=metric, judge=judge, category=None)
                for m in models
            ]
            if any(cells):
                lines.append(f"{label:<50}" + "".join(f"{_cell(c):>30}" for c in cells))
        categories = sorted({r["category"] for r in metrics if r["category"] and r["judge"] == judge})
        harmful = [subset for subset, metric, _ in TABLE_ROWS[benchmark] if metric == "asr"]
        for subset in harmful:
            for category in categories:
                cells = [
                    _lookup(metrics, model=m, subset=subset, metric="asr", judge=judge, category=category)
                    for m in models
                ]
                if any(cells):
                    label = f"  {subset} ASR, {category}"
                    lines.append(f"{label:<50}" + "".join(f"{_cell(c):>30}" for c in cells))
        lines.append("")
    if results["judges"] == ["keyword"] and benchmark in KEYWORD_ONLY_NOTE:
        lines.append(KEYWORD_ONLY_NOTE[benchmark])
    for row in results.get("agreement", []):
        kappa = "undefined" if row["cohen_kappa"] is None else f"{row['cohen_kappa']:.2f}"
        lines.append(
            f"Agreement {row['judges'][0]} vs {row['judges'][1]} (harmful prompts): Cohen's kappa {kappa}, n={row['n']}"
        )
    return "\n".join(lines).rstrip()


def plot_results(results: dict[str, Any], path: str | Path) -> Path:
    """Grouped bars (base vs tuned) per metric with 95% CI whiskers, one panel per judge."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics, models, judges = results["metrics"], list(results["models"]), results["judges"]
    rows_of_table = table_rows(results["config"]["benchmark"])
    figure, axes = plt.subplots(1, len(judges), figsize=(6 * len(judges), 4), squeeze=False)
    width = 0.8 / len(models)
    for axis, judge in zip(axes[0], judges, strict=True):
        rows = [
            (subset, metric, label)
            for subset, metric, label in rows_of_table
            if _lookup(metrics, subset=subset, metric=metric, judge=judge, category=None)
        ]
        for offset, model in enumerate(models):
            cells = [
                _lookup(metrics, model=model, subset=s, metric=m, judge=judge, category=None)
                for s, m, _ in rows
            ]
            values = [c["value"] if c else 0 for c in cells]
            errors = [
                [c["value"] - c["ci95"][0] if c else 0 for c in cells],
                [c["ci95"][1] - c["value"] if c else 0 for c in cells],
            ]
            positions = [i + offset * width for i in range(len(rows))]
            axis.bar(positions, values, width, yerr=errors, capsize=3, label=model)
        axis.set_xticks([i + width * (len(models) - 1) / 2 for i in range(len(rows))])
        axis.set_xticklabels([label.split(" (")[0].replace(" = ", "\n") for _, _, label in rows], fontsize=8)
        axis.set_ylim(0, 1.05)
        axis.set_title(f"judge: {judge}")
        axis.legend()
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_results(results: dict[str, Any], output_dir: str | Path) -> Path:
    """results.json and results.png in `output_dir`; returns the json path."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    path.write_text(json.dumps(results, indent=1, default=str))
    plot_results(results, out / "results.png")
    logger.info("Wrote %s and %s", path, out / "results.png")
    return path
