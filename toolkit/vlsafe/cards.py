"""Model cards for vlsafe's trained models: what the adapter (or fully fine-tuned model) does, how it was trained,
and its safety numbers.

The card (README.md of the output folder) is rendered from `cards/adapter_card.md.jinja` with what the folder
holds: ``adapter_config.json`` (PEFT; a fully fine-tuned model has ``config.json`` and ``model*.safetensors``
instead), ``training_summary.json`` (written by training), ``results.json`` and ``results.png`` (written by
evaluation). Training writes the card, evaluation updates it with
`update_card`, and `vlsafe.hub` re-renders it on push with the Hub ids of the adapter and its base model.
The front matter is built with `huggingface_hub.ModelCardData`, so `model-index` is what the Hub parses.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from huggingface_hub import EvalResult, ModelCardData
from huggingface_hub.constants import REPOCARD_NAME

from vlsafe.errors import VlsafeError

logger = logging.getLogger(__name__)

CARD = REPOCARD_NAME  # README.md
ADAPTER_CONFIG = "adapter_config.json"
MODEL_CONFIG = "config.json"
SUMMARY = "training_summary.json"
RESULTS = "results.json"
PLOT = "results.png"
RESULTS_VERSION = 2  # of results.json, written by vlsafe.evaluation.run


@dataclass(frozen=True)
class Recipe:
    """How a card names a vlsafe recipe: its Hub tag, title, paper and training method."""

    tag: str | None
    title: str
    paper: str = ""
    method: str | None = None  # "sft", "dpo": also a tag


RECIPES = {
    "sft_vlguard": Recipe(
        "vlguard",
        "VLGuard post-hoc safety fine-tuning",
        "[VLGuard](https://arxiv.org/abs/2402.02207) (Zong et al., ICML 2024)",
        "sft",
    ),
    "sft_mis": Recipe("mis", "MIS multi-image safety fine-tuning", "MIS (Ding et al., 2025)", "sft"),
    "dpo_safety": Recipe(
        "safety-dpo",
        "DPO safety tuning",
        "[DPO](https://arxiv.org/abs/2305.18290) (Rafailov et al., NeurIPS 2023)",
        "dpo",
    ),
}
PARTS = {"language_model": "language model", "vision_tower": "vision tower", "projector": "projector"}
REJECTED_SOURCES = {  # where a DPO pair's rejected answer came from
    "on_policy": "the model's own answer (the keyword judge found it harmful, or a needless refusal)",
    "synthetic": "a fixed compliant answer (the model had refused the harmful prompt)",
    "template": "a refusal template (the model had answered the safe prompt)",
    "imported": "as given in the imported preference file",
}
METRICS = {  # metric -> (label, better)
    "asr": ("Attack success rate", "lower"),
    "refusal_rate": ("Refusal rate", "lower"),
    "win_rate": ("Win rate vs reference answers", "higher"),
}
JUDGES = {
    "keyword": (
        "keyword judge (vlsafe's refusal detector): reads the opening sentences of an answer for a refusal "
        "statement, with typographic quotes, markdown and case normalised, and tells a refusal from a disclaimer "
        "followed by an answer. It is offline and deterministic, but misses refusals it has no pattern for and "
        "counts an answer that refuses first and complies after as a refusal, so its ASR is a lower bound on "
        "harm; confirm published numbers with a model or API judge."
    ),
    "vlguard_keyword": (
        "vlguard_keyword judge: VLGuard's 2024 refusal phrases matched anywhere in the answer, kept for numbers "
        'comparable with the paper. It fires on any mention of a listed word ("illegal", "I cannot stress '
        'enough") and misses typographic apostrophes and polite refusals.'
    ),
    "xstest_strmatch": (
        "xstest_strmatch judge: XSTest's refusal prefixes at the start of the answer, kept for numbers comparable "
        'with the paper. It misses refusals after a first sentence and reads "Sorry to hear..." as a refusal.'
    ),
    "llama_guard": (
        "llama_guard judge: a Llama Guard model reads the conversation in its own format and says whether the "
        "answer is safe (and which categories it violates). It rates harm, not refusals, so it gives ASR only."
    ),
}
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def is_full_model(folder: str | Path) -> bool:
    """True for a folder of full model weights (config.json + model*.safetensors, no adapter_config.json), as
    full fine-tuning (use_peft false) leaves it; load it with AutoModelForImageTextToText.from_pretrained."""
    folder = Path(folder)
    return (
        not (folder / ADAPTER_CONFIG).is_file()
        and (folder / MODEL_CONFIG).is_file()
        and any(folder.glob("model*.safetensors"))
    )


def looks_like_repo_id(name: str | None) -> bool:
    """True for a Hub repo id (``org/name``); False for None or a path that exists here."""
    if not name or Path(name).expanduser().exists():
        return False
    return bool(_REPO_ID.fullmatch(name)) and ".." not in name


def templates_dir() -> Path:
    """The `cards/` folder: at the repository top level (source checkout or editable install), else shipped
    inside the package (`vlsafe/card_templates/`, for a wheel)."""
    checkout = Path(__file__).resolve().parents[2] / "cards"
    if (checkout / "adapter_card.md.jinja").is_file():
        return checkout
    packaged = Path(str(resources.files("vlsafe").joinpath("card_templates")))
    if (packaged / "adapter_card.md.jinja").is_file():
        return packaged
    raise VlsafeError(
        f"Card templates not found in {checkout} nor {packaged}; reinstall vlsafe (pip install -e .) from a "
        "full checkout, which has the cards/ folder."
    )


def render(template: str, **context: Any) -> str:
    """Render ``cards/<template>``; a name the template uses but the context lacks is an error, not a blank."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir()),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # Markdown, not HTML
    )
    env.filters["pct"] = _pct
    env.filters["cell"] = lambda text: str(text).replace("|", "\\|").replace("\n", " ")
    return env.get_template(template).render(**context)


# -- reading what the folder holds ----------------------------------------------------------------------------
def read_json(path: Path, what: str) -> dict[str, Any] | None:
    """A JSON object from `path`, None when absent; a clear error when malformed."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise VlsafeError(f"{path} ({what}) is not valid JSON ({error}); regenerate it.") from None
    if not isinstance(data, dict):
        raise VlsafeError(f"{path} ({what}) must hold a JSON object, found {type(data).__name__}.")
    return data


def read_results(path: str | Path) -> dict[str, Any]:
    """A vlsafe results.json (schema `RESULTS_VERSION`), checked enough to render a card from it."""
    path = Path(path)
    results = read_json(path, "evaluation results")
    if results is None:
        raise VlsafeError(f"No evaluation results at {path}; run recipes/evaluate_safety.py first.")
    version = results.get("vlsafe_results_version")
    if version != RESULTS_VERSION:
        raise VlsafeError(
            f"{path} has vlsafe_results_version {version!r}; this vlsafe reads version {RESULTS_VERSION}. "
            "Re-run the evaluation with this vlsafe version."
        )
    for row in results.get("metrics", []):
        missing = {"model", "benchmark", "subset", "judge", "metric", "value"} - set(row)
        if missing:
            raise VlsafeError(f"{path}: metric row {row!r:.120} lacks {sorted(missing)}; regenerate it.")
    return results


# -- model-index and tables -----------------------------------------------------------------------------------
def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _benchmark(results: dict[str, Any], name: str) -> dict[str, Any]:
    """What results.json says about a benchmark (title, where it is published, its subsets)."""
    return results.get("benchmarks", {}).get(name) or {"title": name, "published": name, "subsets": {}}


def metric_label(metric: str, judge: str, *, benign: bool = False) -> str:
    """E.g. "Attack success rate (keyword judge)"; refusals on benign prompts are over-refusals."""
    label = (
        "Over-refusal rate" if metric == "refusal_rate" and benign else METRICS.get(metric, (metric, ""))[0]
    )
    return f"{label} ({judge})" if "judge" in judge else f"{label} ({judge} judge)"


def _is_benign(results: dict[str, Any], benchmark: str, subset: str) -> bool:
    return not _benchmark(results, benchmark)["subsets"].get(subset, {}).get("harmful", True)


def eval_results(results: dict[str, Any], model: str = "tuned") -> list[EvalResult]:
    """The overall numbers (``category: null``) of `model`, as model-index entries.

    The dataset type is the benchmark's Hub id or repository (``ys-zong/VLGuard``, ``ThuCCSLab/FigStep``), its
    config the subset; the metric type is vlsafe's metric id (``asr``, ``refusal_rate``, ``win_rate``) and its
    config the judge.
    """
    out = []
    for row in results.get("metrics", []):
        if row["model"] != model or row.get("category") is not None:
            continue
        benchmark, subset = row["benchmark"], row["subset"]
        entry = _benchmark(results, benchmark)
        out.append(
            EvalResult(
                task_type="image-text-to-text",
                task_name="Safety",
                dataset_type=entry["published"].partition(":")[2] or entry["published"],
                dataset_name=f"{entry['title']} {subset}",
                dataset_config=subset,
                dataset_split="test",
                metric_type=row["metric"],
                metric_name=metric_label(
                    row["metric"], row["judge"], benign=_is_benign(results, benchmark, subset)
                ),
                metric_config=row["judge"],
                metric_value=round(float(row["value"]), 4),
            )
        )
    return out


@dataclass(frozen=True)
class Row:
    """One line of the before/after table."""

    benchmark: str
    subset: str
    label: str
    better: str
    base: dict[str, Any] | None
    tuned: dict[str, Any] | None
    category: str | None = None

    @property
    def n(self) -> str:
        n = (self.tuned or self.base or {}).get("n")
        return "–" if n is None else str(n)

    @property
    def change(self) -> str:
        if not (self.base and self.tuned):
            return "–"
        return f"{100 * (self.tuned['value'] - self.base['value']):+.1f} pts"


def comparison_rows(results: dict[str, Any], *, categories: bool = False) -> list[Row]:
    """Base and tuned side by side per (benchmark, subset, metric, judge[, category])."""
    cells: dict[tuple, dict[str, dict[str, Any]]] = {}
    for row in results.get("metrics", []):
        if (row.get("category") is not None) != categories:
            continue
        key = (row["benchmark"], row["subset"], row["metric"], row["judge"], row.get("category"))
        cells.setdefault(key, {})[row["model"]] = row
    rows = []
    ordered = sorted(cells.items(), key=lambda item: str(item[0][4])) if categories else cells.items()
    for (benchmark, subset, metric, judge, category), by_model in ordered:
        rows.append(
            Row(
                _benchmark(results, benchmark)["title"],
                subset,
                metric_label(metric, judge, benign=_is_benign(results, benchmark, subset)),
                METRICS.get(metric, ("", "?"))[1],
                by_model.get("base"),
                by_model.get("tuned"),
                category,
            )
        )
    return rows


def summary_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The suite means (each benchmark weighted equally) of base and tuned per judge and metric; none for one
    benchmark."""
    rows: dict[tuple, dict[str, Any]] = {}
    for row in results.get("summary", []):
        if len(row["benchmarks"]) > 1:
            entry = rows.setdefault(
                (row["judge"], row["metric"]), {"judge": row["judge"], "label": row["label"]}
            )
            entry[row["model"]] = row["value"]
            entry["benchmarks"] = ", ".join(row["benchmarks"])
    return list(rows.values())


# -- rendering ----------------------------------------------------------------------------------------------------
def card_context(
    folder: str | Path, *, repo_id: str | None = None, base_model: str | None = None
) -> dict[str, Any]:
    """Everything the card shows, read from `folder` (an adapter, or a fully fine-tuned model with its training
    summary); `repo_id`/`base_model` are the Hub ids the card should name (at push time), else the ones
    recorded in the folder."""
    folder = Path(folder)
    adapter, summary, full = _trained_model(folder)
    results = read_results(folder / RESULTS) if (folder / RESULTS).is_file() else None
    recorded_base = (summary.get("base_model") or {}).get("name_or_path") or adapter.get(
        "base_model_name_or_path"
    )
    base = base_model or recorded_base
    recipe_name = summary.get("recipe")
    recipe = RECIPES.get(recipe_name or "", Recipe(recipe_name, "safety fine-tuning"))
    model_ref = repo_id or summary.get("hub_model_id") or f"<your-username>/{folder.resolve().name}"
    name = model_ref.split("/")[-1]
    lora = summary.get("lora") or ({} if full else _lora_from_adapter(adapter))
    judges = (results or {}).get("judges", [])
    pairs = summary.get("preference_pairs")
    return {
        "card_data": _card_data(summary, results, base=base, name=name, recipe=recipe, full=full).to_yaml(),
        "name": name,
        "model_ref": model_ref,
        "base_model": base,
        "base_is_local": not looks_like_repo_id(base),
        "full": full,
        "what_trained": what_trained(summary, lora, full),
        "loss": loss_description(summary),
        "recipe": recipe,
        "recipe_name": recipe_name,
        "summary": summary,
        "base_revision": (summary.get("base_model") or {}).get("revision") or adapter.get("revision"),
        "hyperparameters": hyperparameters(lora, summary),
        "datasets": summary.get("datasets", []),
        "samples": summary.get("samples", {}),
        "pairs": pairs,
        "rejected_sources": [
            (source, REJECTED_SOURCES.get(source, source))
            for source in (pairs or {}).get("by_rejected_source", {})
        ],
        "results": results,
        "rows": comparison_rows(results) if results else [],
        "category_rows": comparison_rows(results, categories=True) if results else [],
        "summary_rows": summary_rows(results) if results else [],
        "has_plot": (folder / PLOT).is_file(),
        "judges": [(judge, JUDGES.get(judge, _model_judge_note(judge))) for judge in judges],
    }


def _trained_model(folder: Path) -> tuple[dict[str, Any], dict[str, Any], bool]:
    """(adapter config or {}, training summary or {}, whether it is a full model) of a folder a card is
    written for; a folder that is neither an adapter nor a vlsafe-trained full model is refused."""
    adapter = read_json(folder / ADAPTER_CONFIG, "PEFT adapter config")
    full = adapter is None and is_full_model(folder)
    if adapter is None and not full:
        raise VlsafeError(
            f"{folder} has no {ADAPTER_CONFIG} nor {MODEL_CONFIG} with model*.safetensors weights: not a PEFT "
            "adapter folder nor a full model folder. Point at the training output_dir."
        )
    summary = read_json(folder / SUMMARY, "training summary") or {}
    if full and not summary:
        raise VlsafeError(
            f"{folder} holds full model weights but no {SUMMARY}: vlsafe writes cards for the models its recipes "
            "trained. Train with a vlsafe recipe, or write the card yourself."
        )
    return adapter or {}, summary, full


def _card_data(
    summary: dict[str, Any],
    results: dict[str, Any] | None,
    *,
    base: str | None,
    name: str,
    recipe: Recipe,
    full: bool,
) -> ModelCardData:
    """The card's front matter: what the Hub indexes (base model, library, tags, datasets, model-index)."""
    tags = (
        "vlsafe",
        "safety",
        None if full else "lora",
        recipe.tag,
        "trl",
        recipe.method or summary.get("method"),
    )
    datasets = summary.get("datasets", [])
    return ModelCardData(
        base_model=base if looks_like_repo_id(base) else None,
        library_name="transformers" if full else "peft",
        pipeline_tag="image-text-to-text",
        license=summary.get("license") or "other",
        datasets=[d["source"] for d in datasets if looks_like_repo_id(d.get("source"))] or None,
        tags=list(dict.fromkeys(t for t in tags if t)),
        model_name=name,
        eval_results=eval_results(results) if results else None,
    )


def what_trained(summary: dict[str, Any], lora: dict[str, Any], full: bool) -> str:
    """E.g. "full fine-tuning of the language model (1,234 parameters trained), vision tower and projector
    frozen", or "LoRA on the language model only (the vision tower and projector are untouched)"."""
    tuning = summary.get("finetuning") or {}
    if full:
        trained = [PARTS.get(p, p) for p in tuning.get("trained_parts", ["language_model"])]
        frozen = [PARTS.get(p, p) for p in tuning.get("frozen_parts", ["vision_tower", "projector"])]
        count = tuning.get("trained_parameters")
        counted = f" ({count:,} parameters trained)" if isinstance(count, int) else ""
        return f"full fine-tuning of the {_and(trained)}{counted}, {_and(frozen) or 'nothing'} frozen"
    targets = lora.get("target_modules")
    default = isinstance(targets, str) and r"layers\.\d+\.(self_attn|mlp)" in targets
    on = "the language model" if default else f"the modules `{_targets(targets)}`"
    saved = lora.get("modules_to_save") or []
    if not saved:
        return f"LoRA on {on} only (the vision tower and projector are untouched)"
    return f"LoRA on {on}, and the modules `{', '.join(saved)}` trained in full"


def loss_description(summary: dict[str, Any]) -> str | None:
    """What the loss was computed on; None when the run is not recorded."""
    if summary.get("method") == "dpo" or "dpo" in summary:
        beta = (summary.get("dpo") or {}).get("beta")
        return f"DPO loss{f' (beta {beta})' if beta is not None else ''} on preferred vs rejected answers"
    only = (summary.get("training") or {}).get("assistant_only_loss")
    if only is None:
        return "loss on the assistant answers only" if summary.get("recipe") else None
    return "loss on the assistant answers only" if only else "loss on the whole conversation"


def _and(items: list[str]) -> str:
    return " and ".join(items) if len(items) < 3 else f"{', '.join(items[:-1])} and {items[-1]}"


def _targets(targets: Any) -> str:
    return ", ".join(sorted(targets)) if isinstance(targets, list) else str(targets)


def hyperparameters(lora: dict[str, Any], summary: dict[str, Any]) -> list[tuple[str, Any]]:
    """(label, value) pairs for the card's hyper-parameter table; unrecorded ones are left out."""
    training = summary.get("training", {})
    tuning = summary.get("finetuning") or {}
    dpo = summary.get("dpo") or {}
    max_steps = training.get("max_steps")
    items = []
    if lora:
        items += [
            (
                "LoRA rank r / alpha / dropout",
                f"{lora.get('r')} / {lora.get('alpha')} / {lora.get('dropout')}",
            ),
            ("LoRA targets", f"`{_targets(lora.get('target_modules'))}`"),
            ("Modules trained in full", ", ".join(lora.get("modules_to_save") or []) or None),
            ("rsLoRA / DoRA", f"{lora.get('use_rslora', False)} / {lora.get('use_dora', False)}"),
        ]
    if isinstance(tuning.get("trained_parameters"), int):
        trained = f"{tuning['trained_parameters']:,} of {tuning.get('total_parameters', 0):,}"
        items.append(("Parameters trained", trained))
    items += [
        ("DPO beta", dpo.get("beta")),
        ("DPO loss", ", ".join(dpo.get("loss_type") or []) or None),
        ("DPO reference model", dpo.get("reference")),
        ("Learning rate (schedule)", _join(training.get("learning_rate"), training.get("lr_scheduler_type"))),
        ("Epochs", training.get("num_train_epochs")),
        ("Max steps", max_steps if max_steps and max_steps > 0 else None),
        ("Optimizer steps done", training.get("global_steps")),
        ("Batch size per device x grad. accumulation x processes", _batch(training)),
        ("Assistant-only loss", training.get("assistant_only_loss")),
        ("Max length", training.get("max_length")),
        ("Seed", training.get("seed")),
        ("Final training loss", training.get("train_loss")),
    ]
    return [(label, value) for label, value in items if value is not None]


def _join(value: Any, detail: Any) -> str | None:
    return None if value is None else f"{value} ({detail})" if detail else str(value)


def _batch(training: dict[str, Any]) -> str | None:
    parts = [
        training.get(k) for k in ("per_device_train_batch_size", "gradient_accumulation_steps", "world_size")
    ]
    if any(p is None for p in parts):
        return None
    return f"{parts[0]} x {parts[1]} x {parts[2]} = {parts[0] * parts[1] * parts[2]}"


def _model_judge_note(judge: str) -> str:
    return (
        f"{judge}: a model or API judge; its verdicts are only as reliable as that model and its prompt, and "
        "it may share blind spots with the model it grades."
    )


def _lora_from_adapter(adapter: dict[str, Any]) -> dict[str, Any]:
    return {
        "r": adapter.get("r"),
        "alpha": adapter.get("lora_alpha"),
        "dropout": adapter.get("lora_dropout"),
        "target_modules": adapter.get("target_modules"),
        "use_rslora": adapter.get("use_rslora", False),
        "use_dora": adapter.get("use_dora", False),
    }


def render_adapter_card(
    folder: str | Path, *, repo_id: str | None = None, base_model: str | None = None
) -> str:
    """The README.md text of the adapter or fully fine-tuned model in `folder` (see `card_context`)."""
    return render("adapter_card.md.jinja", **card_context(folder, repo_id=repo_id, base_model=base_model))


def write_adapter_card(folder: str | Path, **kwargs: Any) -> Path:
    """Render the card into `folder`/README.md (replacing PEFT's placeholder card) and return its path."""
    path = Path(folder) / CARD
    path.write_text(render_adapter_card(folder, **kwargs), encoding="utf-8")
    logger.info("Wrote the model card %s", path)
    return path


def update_card(adapter_dir: str | Path, results_path: str | Path) -> Path:
    """Bring evaluation results into the adapter folder and re-render its card with them.

    Copies `results_path` (and the ``results.png`` next to it, if any) into `adapter_dir` as results.json /
    results.png, so the folder holds what its card shows and a push publishes both.
    """
    adapter_dir, results_path = Path(adapter_dir), Path(results_path)
    read_results(results_path)  # fail before touching the folder
    for source, name in ((results_path, RESULTS), (results_path.with_name(PLOT), PLOT)):
        target = adapter_dir / name
        if target.exists() and source.exists() and target.samefile(source):
            continue
        if source.is_file():
            shutil.copyfile(source, target)
        elif target.exists():  # a plot of an earlier evaluation would contradict the new numbers
            target.unlink()
    return write_adapter_card(adapter_dir)
