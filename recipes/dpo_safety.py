"""DPO safety tuning: prefer refusals over the model's own harmful answers, and helpful answers over needless
refusals, with LoRA on the language model (optionally continuing an SFT adapter) or full fine-tuning of it.

    accelerate launch --config_file recipes/accelerate/single_gpu.yaml \
        recipes/dpo_safety.py --config recipes/configs/llava-1.5-7b/dpo_safety.yaml

Pairs are built on-policy from VLGuard train (the policy's own answers, judged by the keyword judge; generated
with transformers, or with `--generation_engine vllm` on one vLLM engine before the policy loads), or imported
from an existing preference file (`preference_file`, e.g. SPA-VL-style json). With `sft_adapter`
the adapter is trained further and the reference model is a frozen copy of it; without, a fresh LoRA is
trained against the base model (adapter disabled); with `--use_peft false` the language model is trained in
full against a frozen copy of the starting weights (pass a fully fine-tuned SFT model as model_name_or_path).
Pairs longer than `max_length` are left out (counted), never truncated. The output folder holds the adapter
(or full weights), processor, training_summary.json (pair counts and provenance) and the model card; with
`--push_to_hub --hub_model_id <user>/<name>` it is published in one commit at the end. Re-running an
interrupted run continues from its newest complete checkpoint. `--safety_curve true` logs ASR and over-refusal
on prompts held out from the pair source while training (vlsafe.safety_curve). The same script runs as
`vlsafe dpo --config <model>` (vlsafe.cli).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from accelerate import PartialState
from datasets import Dataset
from trl import DPOConfig, ModelConfig, TrlParser

from vlsafe.data.preference_hub import push_preference_pairs, save_preference_pairs
from vlsafe.data.preferences import SYNTHETIC_COMPLIANCE, build_preference_pairs, load_preference_json
from vlsafe.data.vlguard import VLGUARD_REPO, load_vlguard
from vlsafe.errors import VlsafeError
from vlsafe.evaluation.generate import generate_records, process_state
from vlsafe.evaluation.judges.keyword import keyword_label
from vlsafe.evaluation.store import RecordStore, weights_fingerprint
from vlsafe.evaluation.vllm_engine import (
    PROBE_PROMPTS,
    VllmGenerator,
    VllmSettings,
    check_adapter,
    check_max_pixels,
    require_vllm,
)
from vlsafe.modeling import load_processor
from vlsafe.safety_curve import SafetyCurveArguments, add_safety_curve, benchmark_prompts, hold_out_prompts
from vlsafe.training import (
    DatasetRef,
    ImageDataArguments,
    ModelArguments,
    RunRecord,
    build_dpo_trainer,
    load_for_training,
    take_over_hub_push,
    train_and_save,
)

logger = logging.getLogger("vlsafe.recipes.dpo_safety")


@dataclass
class DPOSafetyArguments(SafetyCurveArguments, ImageDataArguments):
    """Where the preference pairs come from."""

    dataset: str = field(
        default=VLGUARD_REPO, metadata={"help": "VLGuard Hub id or local folder (pair source)."}
    )
    dataset_revision: str | None = field(default=None, metadata={"help": "Hub revision of the dataset."})
    preference_file: str | None = field(
        default=None, metadata={"help": "Import pairs from this json/jsonl instead."}
    )
    preference_image_root: str | None = field(
        default=None, metadata={"help": "Image folder of preference_file."}
    )
    sft_adapter: str | None = field(
        default=None, metadata={"help": "Continue this SFT adapter (folder or Hub id)."}
    )
    on_policy: bool = field(
        default=True, metadata={"help": "Reject the policy's own answers (else synthetic/template)."}
    )
    generation_batch_size: int = field(
        default=16,
        metadata={
            "help": "Batch size of the on-policy generation (transformers engine; vLLM batches itself)."
        },
    )
    generation_max_new_tokens: int = field(default=128, metadata={"help": "Length cap of on-policy answers."})
    generation_engine: str = field(
        default="transformers",
        metadata={
            "help": "Engine of the on-policy answers: transformers, or vllm (pip install 'vlsafe[vllm]'): one vLLM "
            "engine with the base weights, sft_adapter applied per request; it runs before the policy loads for "
            "training and frees the accelerator when done."
        },
    )
    vllm_tensor_parallel_size: int = field(
        default=1,
        metadata={"help": "generation_engine vllm: GPUs one engine spans (one engine per process)."},
    )
    vllm_gpu_memory_utilization: float = field(
        default=0.9,
        metadata={"help": "generation_engine vllm: share of each GPU's memory the engine may take."},
    )
    vllm_max_model_len: int | None = field(
        default=None, metadata={"help": "generation_engine vllm: longest prompt + answer in tokens."}
    )
    synthetic_compliance: str | None = field(
        default=SYNTHETIC_COMPLIANCE,
        metadata={"help": "Rejected answer for refused harmful prompts; empty: skip them."},
    )
    harmful_fraction: float | None = field(
        default=None, metadata={"help": "Share of pairs from harmful prompts."}
    )
    max_prompts: int | None = field(default=None, metadata={"help": "Use only the first N training prompts."})
    save_pairs: str | None = field(
        default=None, metadata={"help": "Folder to save the pairs to (Hub dataset layout: parquet + card)."}
    )
    push_pairs: str | None = field(
        default=None, metadata={"help": "Hub dataset repo to publish the pairs to."}
    )
    license: str = field(
        default="other",
        metadata={"help": "License in the model's card: the base model's (e.g. apache-2.0, llama2)."},
    )


def policy_answers(
    model,
    processor,
    rows: list[dict],
    data_args: DPOSafetyArguments,
    training_args: DPOConfig,
    model_args: ModelConfig,
) -> list[str]:
    """The policy's own answers to the pair prompts, stored in output_dir/pair_generations as they finish, so
    a re-run after an interruption generates only the missing ones (settings must match to reuse them)."""
    settings = {
        "policy": model_args.model_name_or_path,
        "sft_adapter": data_args.sft_adapter,
        "sft_adapter_weights": weights_fingerprint(data_args.sft_adapter),  # retrained: answers are stale
        "dataset": data_args.dataset,
        "max_new_tokens": data_args.generation_max_new_tokens,
    }
    if data_args.generation_engine == "vllm":  # not mixed with the other engine's answers (near-ties differ)
        settings["engine"] = "vllm"
    store = RecordStore(
        Path(training_args.output_dir) / "pair_generations",
        "policy",
        settings,
        rank=process_state().process_index,
        restart_if_stale=True,  # answers of another policy (e.g. a retrained SFT adapter) are of no use
    )
    keys = [f"{row['id']}/{row['kind']}" for row in rows]  # a VLGuard image has one sample per kind
    if data_args.generation_engine == "vllm":
        records = vllm_policy_records(rows, keys, store, data_args, training_args, model_args)
    else:
        records = generate_records(
            model,
            processor,
            rows,
            keys,
            store=store,
            batch_size=data_args.generation_batch_size,
            max_new_tokens=data_args.generation_max_new_tokens,
        )
    return [record["generation"] for record in records]


def vllm_policy_records(
    rows: list[dict],
    keys: list[str],
    store: RecordStore,
    data_args: DPOSafetyArguments,
    training_args: DPOConfig,
    model_args: ModelConfig,
) -> list[dict]:
    """The policy's answers from one vLLM engine: the base weights, with the SFT adapter (checked to be one vLLM
    applies in full, and on probe prompts seen to change the answers) on every request; the prompt rendered by the
    processor training uses. The engine starts only when answers are missing from `store`, and is shut down before
    training loads the policy."""
    base, adapter = model_args.model_name_or_path, data_args.sft_adapter or None
    trust_remote_code = training_args.trust_remote_code
    if all(key in store for key in keys):
        return [store.get(key) for key in keys]
    processor = load_processor(
        adapter or base,
        revision=None if adapter else model_args.model_revision,
        max_pixels=data_args.max_pixels,
        trust_remote_code=trust_remote_code,
    )
    checked = check_adapter(adapter, base, trust_remote_code=trust_remote_code) if adapter else None
    generator = VllmGenerator(
        base,
        max_new_tokens=data_args.generation_max_new_tokens,
        images_per_prompt=max((len(row.get("images") or []) for row in rows), default=0),
        adapter=checked,
        dtype=model_args.dtype or "auto",
        trust_remote_code=trust_remote_code,
        layout=VllmSettings(
            data_args.vllm_tensor_parallel_size,
            data_args.vllm_gpu_memory_utilization,
            data_args.vllm_max_model_len,
        ),
        max_pixels=data_args.max_pixels,
    )
    try:
        if adapter:  # the pairs must be the adapter's answers, not the base model's
            probe = rows[:PROBE_PROMPTS]
            generator.check_adapter_applied(probe, processor, processor, generator.lora_request)
        return generator.records(rows, keys, store, processor, tuned=adapter is not None)
    finally:
        generator.close()


def check_generation_engine(data_args: DPOSafetyArguments, model_args: ModelConfig) -> None:
    """Refuse generation settings whose answers would not be the trained policy's, naming the fix."""
    if data_args.generation_engine not in ("transformers", "vllm"):
        raise VlsafeError(
            f"Unknown generation_engine {data_args.generation_engine!r}; choose transformers or vllm."
        )
    if data_args.generation_engine != "vllm" or not data_args.on_policy or data_args.preference_file:
        return
    if model_args.load_in_4bit or model_args.load_in_8bit:
        raise VlsafeError(
            "generation_engine vllm answers with the unquantized weights, while this run trains a quantized "
            "policy (load_in_4bit / load_in_8bit): its pairs would not be on-policy. Use generation_engine "
            "transformers."
        )
    require_vllm()
    check_max_pixels(model_args.model_name_or_path, data_args.max_pixels)


def preference_pairs(
    model, processor, data_args: DPOSafetyArguments, training_args: DPOConfig, model_args: ModelConfig
) -> tuple[Dataset, list[dict] | None]:
    """The pairs to train on: imported from `preference_file`, or built from VLGuard train (on-policy answers
    from `model` unless `on_policy` is off); and the safety-curve prompts (None with the curve off), held out
    from the VLGuard prompts before any pair is built from them."""
    curve = None
    if data_args.safety_curve and data_args.safety_curve_benchmark:
        curve = benchmark_prompts(
            data_args.safety_curve_benchmark,
            data_args.safety_curve_benchmark_source,
            data_args.safety_curve_harmful,
            data_args.safety_curve_safe,
            seed=training_args.seed,
        )
    if data_args.preference_file:
        if data_args.safety_curve and curve is None:
            raise VlsafeError(
                "safety_curve with preference_file: imported pairs do not say which prompts are harmful, so none "
                "can be held out. Measure on a benchmark instead (--safety_curve_benchmark vlguard "
                "--safety_curve_benchmark_source <its folder or Hub id>)."
            )
        pairs = load_preference_json(
            data_args.preference_file,
            image_root=data_args.preference_image_root,
            skip_missing_images=data_args.skip_missing_images,
        )
        return pairs, curve
    rows = load_vlguard(
        data_args.dataset,
        "train",
        revision=data_args.dataset_revision,
        skip_missing_images=data_args.skip_missing_images,
    ).shuffle(seed=training_args.seed)
    if data_args.max_prompts:
        rows = rows.select(range(min(data_args.max_prompts, len(rows))))
    if data_args.safety_curve and curve is None:
        rows, curve = hold_out_prompts(
            rows, data_args.safety_curve_harmful, data_args.safety_curve_safe, seed=training_args.seed
        )
    rows = list(rows)
    generations = None
    if data_args.on_policy:
        generations = policy_answers(model, processor, rows, data_args, training_args, model_args)
    pairs = build_preference_pairs(
        rows,
        generations,
        judge=keyword_label,
        synthetic_compliance=data_args.synthetic_compliance or None,
        harmful_fraction=data_args.harmful_fraction,
        seed=training_args.seed,
    )
    return pairs, curve


def main(data_args: DPOSafetyArguments, training_args: DPOConfig, model_args: ModelArguments) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    token = training_args.hub_token  # for push_pairs: take_over_hub_push moves it out of the arguments
    hub_target = take_over_hub_push(training_args)  # vlsafe publishes the finished folder, in one commit
    check_generation_engine(data_args, model_args)
    # vLLM takes the accelerator's memory for its engine: it answers (and is shut down) before the policy loads.
    pairs_first = data_args.generation_engine == "vllm"
    if pairs_first:
        pairs, curve = preference_pairs(None, None, data_args, training_args, model_args)
    adapter = data_args.sft_adapter or None  # continued: TRL keeps a frozen copy of it as the reference
    model, processor, peft_config = load_for_training(
        model_args, training_args, max_pixels=data_args.max_pixels, processor_source=adapter, adapter=adapter
    )
    if not pairs_first:
        pairs, curve = preference_pairs(model, processor, data_args, training_args, model_args)
    if data_args.save_pairs or data_args.push_pairs:
        folder = data_args.save_pairs or f"{training_args.output_dir}/pairs"
        source = data_args.preference_file or data_args.dataset
        save_preference_pairs(pairs, folder, source=source, license=data_args.license)
        if data_args.push_pairs and PartialState().is_main_process:
            push_preference_pairs(folder, data_args.push_pairs, token=token)

    trainer = build_dpo_trainer(
        pairs, training_args, model_args, model, processor, peft_config, auto_speed=data_args.auto_speed
    )
    add_safety_curve(trainer, curve, data_args)
    train_and_save(trainer, run_record(data_args, model_args), hub_target)


def run_record(data_args: DPOSafetyArguments, model_args: ModelConfig) -> RunRecord:
    """The run as the card tells it: base model, the adapter it continued, where the pairs came from."""
    if data_args.preference_file:
        datasets, settings = [DatasetRef("preferences", data_args.preference_file)], {}
    else:
        datasets = [
            DatasetRef(
                "preference prompts",
                data_args.dataset,
                data_args.dataset_revision,
                split="train",
                samples=data_args.max_prompts,
            )
        ]
        settings = {
            "on_policy": data_args.on_policy,
            "generation_max_new_tokens": data_args.generation_max_new_tokens,
            "generation_engine": data_args.generation_engine,
            "synthetic_compliance": data_args.synthetic_compliance or None,
            "harmful_fraction": data_args.harmful_fraction,
        }
    return RunRecord(
        recipe="dpo_safety",
        base_model=model_args.model_name_or_path,
        base_revision=model_args.model_revision,
        datasets=datasets,
        license=data_args.license,
        continued_from=data_args.sft_adapter or None,
        settings=settings,
    )


def make_parser(prog: str | None = None, **kwargs) -> TrlParser:
    """The recipe's arguments (script, DPOConfig, model); `vlsafe dpo` parses with it too."""
    return TrlParser((DPOSafetyArguments, DPOConfig, ModelArguments), prog=prog, **kwargs)


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
