"""Run a safety evaluation: generate (base and/or tuned), judge, and compute metrics per subset and category.

One base model is held in memory: the tuned answers come with the adapter on, the base answers inside
`model.disable_adapter()`. Generations and judge verdicts are stored as they finish (output_dir/
generations, output_dir/judgements), so an interrupted run resumes and never judges a sample twice.
"""

from __future__ import annotations

import contextlib
import gc
import logging
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from peft import PeftConfig, PeftModel

from vlsafe.data.length import token_lengths
from vlsafe.errors import VlsafeError
from vlsafe.evaluation.benchmarks import get_benchmark, load_benchmark
from vlsafe.evaluation.benchmarks.benign import SUBSET as BENIGN_SUBSET
from vlsafe.evaluation.config import EvaluationConfig
from vlsafe.evaluation.generate import generate_records, process_state, prompt_text
from vlsafe.evaluation.judges.keyword import keyword_label
from vlsafe.evaluation.judges.verdicts import SAFE, UNSAFE, PreferenceItem, SafetyItem, cohen_kappa
from vlsafe.evaluation.metrics import load_metric
from vlsafe.evaluation.metrics.proportions import proportion
from vlsafe.evaluation.store import RecordStore, weights_fingerprint
from vlsafe.modeling import load_model, load_processor
from vlsafe.speed import generation_batch_size

logger = logging.getLogger(__name__)

RESULTS_VERSION = 1


def subset_harm(config: EvaluationConfig) -> dict[str, bool]:
    """Every subset this run can evaluate -> whether its prompts are harmful (benign prompts are not)."""
    harmful = dict(get_benchmark(config.benchmark).subsets)
    if config.benign_prompts:
        harmful[BENIGN_SUBSET] = False
    return harmful


def load_prompts(config: EvaluationConfig) -> dict[str, Dataset]:
    """The prompt subsets to evaluate (each cut to `limit` when set)."""
    benchmark = get_benchmark(config.benchmark)
    available = list(subset_harm(config))
    subsets = config.subsets or available
    unknown = sorted(set(subsets) - set(available))
    if unknown:
        hint = " (`benign` needs benign_prompts)" if BENIGN_SUBSET in unknown else ""
        raise VlsafeError(f"{config.benchmark} has no subsets {unknown}; choose from {available}{hint}.")
    if config.benign_prompts and BENIGN_SUBSET not in subsets:
        logger.warning(
            "benign_prompts is set but `subsets` leaves out %r: it is not evaluated", BENIGN_SUBSET
        )
    prompts = {}
    for subset in subsets:
        if subset == BENIGN_SUBSET:
            dataset = load_benchmark(
                "benign",
                config.benign_prompts,
                data_file=config.benign_data_file,
                image_root=config.benign_image_root,
            )
        else:
            dataset = load_benchmark(
                config.benchmark, config.dataset, [subset], revision=config.dataset_revision
            )
        prompts[subset] = dataset.select(range(min(config.limit, len(dataset)))) if config.limit else dataset
    return prompts


def _adapter_processor(config: EvaluationConfig, base_processor):
    """The processor saved with the adapter (its chat template is the trained one), else the base's."""
    try:
        processor = load_processor(config.adapter, max_pixels=config.max_pixels)
    except (OSError, ValueError):
        logger.info("Adapter %s has no processor files: using the base model's", config.adapter)
        return base_processor
    if type(processor) is not type(base_processor) or len(processor.tokenizer) != len(
        base_processor.tokenizer
    ):
        raise VlsafeError(
            f"Adapter {config.adapter} was trained with a {type(processor).__name__} of {len(processor.tokenizer)} "
            f"tokens, but base model {config.base_model} has a {type(base_processor).__name__} of "
            f"{len(base_processor.tokenizer)} tokens: the adapter does not fit this base. Evaluate it with the "
            f"base model it was trained on ({PeftConfig.from_pretrained(config.adapter).base_model_name_or_path})."
        )
    return processor


def _attach_adapter(model, config: EvaluationConfig) -> PeftModel:
    """Wrap the base with the adapter; weights that do not fit give a clear error."""
    adapter_base = PeftConfig.from_pretrained(config.adapter).base_model_name_or_path
    if adapter_base and adapter_base != config.base_model:
        logger.warning(
            "Adapter %s was trained on %s, evaluated on %s", config.adapter, adapter_base, config.base_model
        )
    try:
        return PeftModel.from_pretrained(model, config.adapter)
    except (RuntimeError, ValueError, KeyError) as error:
        raise VlsafeError(
            f"Adapter {config.adapter} does not fit base model {config.base_model} (it was trained on "
            f"{adapter_base}): {str(error).splitlines()[0][:300]}. Evaluate it with base_model={adapter_base}."
        ) from None


def generate_all(config: EvaluationConfig, prompts: dict[str, Dataset]) -> dict[str, dict[str, list[dict]]]:
    """Generation records per model variant (`base`, `tuned`) and subset, resumable and data-parallel."""
    state = process_state()
    model = load_model(
        config.base_model,
        dtype=config.dtype,
        attn_implementation=config.attn_implementation,
        trust_remote_code=config.trust_remote_code,
    ).to(state.device)
    base_processor = load_processor(config.base_model, max_pixels=config.max_pixels)
    variants = {}
    if config.adapter is None or config.evaluate_base:
        variants["base"] = base_processor
    if config.adapter is not None:
        variants["tuned"] = _adapter_processor(config, base_processor)
        model = _attach_adapter(model, config)
    settings = {
        "base_model": config.base_model,
        "benchmark": config.benchmark,
        "dataset": config.dataset,
        "dataset_revision": config.dataset_revision,
        "max_new_tokens": config.max_new_tokens,
        "dtype": config.dtype,
        "max_pixels": config.max_pixels,
        # Only when set, so runs stored before the option existed still resume.
        **(
            {"benign_prompts": config.benign_prompts, "benign_data_file": config.benign_data_file}
            if config.benign_prompts
            else {}
        ),
    }
    generations: dict[str, dict[str, list[dict]]] = {}
    batch_size = config.batch_size or choose_batch_size(model, base_processor, prompts, config.max_new_tokens)
    for variant, processor in variants.items():
        store_settings = settings | (
            {
                "adapter": config.adapter,
                "adapter_weights": weights_fingerprint(config.adapter),  # a retrained adapter: answers stale
                "merge_lora": config.merge_lora,
            }
            if variant == "tuned"
            else {}
        )
        store = RecordStore(
            Path(config.output_dir) / "generations",
            variant,
            store_settings,
            rank=state.process_index,
            resume=config.resume,
        )
        if variant == "tuned" and config.merge_lora:
            model = model.merge_and_unload()
        adapter_off = (
            model.disable_adapter()
            if variant == "base" and isinstance(model, PeftModel)
            else contextlib.nullcontext()
        )
        with adapter_off:
            generations[variant] = {
                subset: generate_records(
                    model,
                    processor,
                    dataset,
                    [f"{config.benchmark}/{subset}/{sample_id}" for sample_id in dataset["id"]],
                    store=store,
                    batch_size=batch_size,
                    max_new_tokens=config.max_new_tokens,
                )
                for subset, dataset in prompts.items()
            }
        logger.info("Finished generating for %s", variant)
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return generations


def choose_batch_size(model, processor, prompts: dict, max_new_tokens: int) -> int:
    """The generation batch size for this machine (`vlsafe.speed.generation_batch_size`), logged."""
    if model.device.type != "cuda":
        batch_size, why = generation_batch_size(model, max_new_tokens, None)
    else:
        longest = max(
            (max(token_lengths(rows, processor), default=0) for rows in prompts.values()), default=0
        )
        free = torch.cuda.mem_get_info(model.device)[0]
        batch_size, why = generation_batch_size(model, longest + max_new_tokens, free)
    logger.info("batch_size = %d (%s); set batch_size to choose another", batch_size, why)
    return batch_size


def _build_judge(name: str, config: EvaluationConfig):
    if name == "model":
        if not config.judge_model:
            raise VlsafeError("The `model` judge needs judge_model=<local or Hub judge VLM>.")
        from vlsafe.evaluation.judges.model import ModelJudge

        return ModelJudge(config.judge_model, dtype=config.dtype, batch_size=config.judge_batch_size)
    if name == "api":
        if not (config.judge_api_base_url and config.judge_api_model):
            raise VlsafeError("The `api` judge needs judge_api_base_url and judge_api_model.")
        from vlsafe.evaluation.judges.api import ApiJudge

        return ApiJudge(
            config.judge_api_base_url, config.judge_api_model, api_key_env=config.judge_api_key_env
        )
    raise VlsafeError(f"Unknown judge {name!r}; choose from keyword, model, api.")


def judge_samples(config: EvaluationConfig, samples: list[dict[str, Any]], harmful: dict[str, bool]) -> None:
    """Add each judge's label to every sample (in place): keyword always; model/api as configured.

    Harmful prompts get a safety verdict (safe/unsafe); safe prompts with a reference answer get a
    pairwise verdict (win/lose/tie). Verdicts are stored as they come, so a resumed run re-uses them.
    """
    for sample in samples:
        sample["labels"] = {"keyword": keyword_label(sample["generation"])}
    for name in (judge for judge in config.judges if judge != "keyword"):
        judge = _build_judge(name, config)
        settings = {"judge": name, "model": config.judge_model if name == "model" else config.judge_api_model}
        store = RecordStore(Path(config.output_dir) / "judgements", name, settings, resume=config.resume)
        key = lambda s: f"{s['model']}/{s['benchmark']}/{s['subset']}/{s['id']}"  # noqa: E731
        todo = [s for s in samples if key(s) not in store]
        safety = [s for s in todo if harmful[s["subset"]]]
        for sample, verdict in zip(
            safety,
            judge.judge_safety(
                [SafetyItem(s["prompt"], s["generation"], tuple(s["images"])) for s in safety]
            ),
            strict=True,
        ):
            store.put(
                key(sample),
                {"label": verdict.label, "refused": verdict.refused, "perception": verdict.perception},
            )
        helpful = [s for s in todo if not harmful[s["subset"]] and s.get("reference")]
        items = [
            PreferenceItem(s["prompt"], s["generation"], s["reference"], s["id"], tuple(s["images"]))
            for s in helpful
        ]
        for sample, label in zip(helpful, judge.judge_preference(items) if items else [], strict=True):
            store.put(key(sample), {"label": label})
        for sample in samples:
            if key(sample) in store:
                record = store.get(key(sample))
                sample["labels"][name] = record["label"]
                if record.get("perception") is not None:
                    sample.setdefault("perception", {})[name] = record["perception"]


def compute_metrics(
    samples: list[dict[str, Any]], harmful: dict[str, bool], judges: list[str]
) -> list[dict[str, Any]]:
    """Metric rows per model, subset and category (category None = the whole subset), per judge."""
    metrics = {name: load_metric(name) for name in ("attack_success_rate", "refusal_rate", "win_rate")}
    groups: dict[tuple, list[dict]] = {}
    for sample in samples:
        for category in {None, sample["category"]}:
            groups.setdefault((sample["model"], sample["benchmark"], sample["subset"], category), []).append(
                sample
            )
    rows = []
    for (model, benchmark, subset, category), members in groups.items():
        for judge in judges:
            labels = [m["labels"][judge] for m in members if judge in m["labels"]]
            if not labels:
                continue
            if harmful[subset]:
                wanted = [("asr", "attack_success_rate")]
            elif judge == "keyword":
                wanted = [("refusal_rate", "refusal_rate")]
            else:
                wanted = [("win_rate", "win_rate")]
            rows += _perception_rows(members, judge, (model, benchmark, subset, category))
            for metric, module in wanted:
                result = metrics[module].compute(predictions=labels)
                rows.append(
                    {
                        "model": model,
                        "benchmark": benchmark,
                        "subset": subset,
                        "category": category,
                        "judge": judge,
                        "metric": metric,
                        "value": result[module],
                        "n": result["n"],
                        "ci95": [result["ci95_low"], result["ci95_high"]],
                        "counts": {
                            k.removeprefix("count_"): v for k, v in result.items() if k.startswith("count_")
                        },
                    }
                )
    return rows


# MIS perception metrics: safe answers at perception level 1, 2, 3 (see Verdict.perception).
PERCEPTION_METRICS = {1: "rsr", 2: "rr", 3: "hr"}


def _perception_rows(members: list[dict], judge: str, group: tuple) -> list[dict[str, Any]]:
    """RSR/RR/HR rows when the judge rated perception (multi-image prompts); none otherwise."""
    rated = [m for m in members if judge in m.get("perception", {})]
    if not rated:
        return []
    model, benchmark, subset, category = group
    rows = []
    for level, metric in PERCEPTION_METRICS.items():
        hits = [
            "hit" if m["labels"][judge] == SAFE and m["perception"][judge] == level else "miss" for m in rated
        ]
        result = proportion(hits, {"hit": 1.0}, metric)
        rows.append(
            {"model": model, "benchmark": benchmark, "subset": subset, "category": category, "judge": judge,
             "metric": metric, "value": result[metric], "n": result["n"], "ci95": [result["ci95_low"], result["ci95_high"]],
             "counts": {"hit": hits.count("hit"), "miss": hits.count("miss")}}
        )  # fmt: skip
    return rows


def judge_agreement(
    samples: list[dict[str, Any]], harmful: dict[str, bool], judges: list[str]
) -> list[dict[str, Any]]:
    """Cohen's kappa between the keyword judge and each other judge on harmful prompts (refusal = safe)."""
    as_safety = {"refused": SAFE, "empty": SAFE, "answered": UNSAFE}
    rows = []
    for judge in (j for j in judges if j != "keyword"):
        pairs = [
            (as_safety[s["labels"]["keyword"]], s["labels"][judge])
            for s in samples
            if harmful[s["subset"]] and s["labels"].get(judge) in (SAFE, UNSAFE)
        ]
        kappa = cohen_kappa([a for a, _ in pairs], [b for _, b in pairs])
        rows.append({"judges": ["keyword", judge], "cohen_kappa": kappa, "n": len(pairs)})
    return rows


def run_evaluation(config: EvaluationConfig) -> dict[str, Any] | None:
    """Generate, judge and score; returns the results (main process) or None (other processes)."""
    state = process_state()
    prompts = load_prompts(config)
    generations = generate_all(config, prompts)
    if not state.is_main_process:
        return None
    harmful = subset_harm(config)
    samples = []
    for variant, by_subset in generations.items():
        for subset, records in by_subset.items():
            for row, record in zip(prompts[subset], records, strict=True):
                samples.append(
                    {
                        "model": variant,
                        "benchmark": config.benchmark,
                        "subset": subset,
                        "id": row["id"],
                        "category": row.get("category"),
                        "prompt": prompt_text(row),
                        "reference": row.get("reference"),
                        "images": row["images"],
                        **{k: record[k] for k in ("generation", "new_tokens", "truncated")},
                    }
                )
    judge_samples(config, samples, harmful)
    for sample in samples:
        del sample["images"]  # decoded pictures are not results
    truncated = sum(s["truncated"] for s in samples)
    if truncated:
        logger.warning(
            "%d of %d answers hit max_new_tokens=%d (marked truncated)",
            truncated,
            len(samples),
            config.max_new_tokens,
        )
    return {
        "vlsafe_results_version": RESULTS_VERSION,
        "models": {
            variant: {
                "base_model": config.base_model,
                "adapter": config.adapter if variant == "tuned" else None,
            }
            for variant in generations
        },
        "judges": list(config.judges),
        "config": {k: v for k, v in vars(config).items() if "key" not in k},
        "metrics": compute_metrics(samples, harmful, list(config.judges)),
        "agreement": judge_agreement(samples, harmful, list(config.judges)),
        "samples": samples,
    }
