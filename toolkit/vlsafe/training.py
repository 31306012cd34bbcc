"""Assemble TRL trainers for vlsafe recipes (model + processor + LoRA on the language model + template), and
turn a finished run into a self-contained output folder: adapter, processor, training summary, model card,
optionally published to the Hub in one commit."""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from datasets import Dataset
from huggingface_hub import HfApi
from peft import LoraConfig
from transformers import PreTrainedModel, ProcessorMixin
from transformers.trainer import TRAINER_STATE_NAME, TRAINING_ARGS_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import DPOConfig, ModelConfig, SFTConfig, SFTTrainer

from vlsafe.cards import SUMMARY, looks_like_repo_id, write_adapter_card
from vlsafe.data.length import drop_too_long, token_lengths
from vlsafe.errors import VlsafeError
from vlsafe.hub import HubTarget, push_target
from vlsafe.modeling import family_of, load_model, load_processor, lora_config, prepare_training_template
from vlsafe.speed import choose_and_apply

logger = logging.getLogger(__name__)
SUMMARY_VERSION = 1


@dataclass(frozen=True)
class DatasetRef:
    """One dataset of the training mix, as the user named it."""

    role: str  # "safety", "helpfulness"
    source: str
    revision: str | None = None
    split: str | None = None
    samples: int | None = None  # drawn from it, when not all


@dataclass
class ImageDataArguments:
    """Options every recipe's data shares (recipes subclass this)."""

    skip_missing_images: bool = field(
        default=False,
        metadata={
            "help": "Leave out samples whose image is missing (counted in the log) instead of failing."
        },
    )
    max_pixels: int | None = field(
        default=None, metadata={"help": "Image resolution cap (Qwen-VL processors)."}
    )
    auto_speed: bool = field(
        default=True,
        metadata={
            "help": "Let vlsafe choose gradient checkpointing (off when the estimated peak memory fits), "
            "micro-batch size, dataloader workers and Liger kernels for this machine, logging each choice; "
            "false keeps those training arguments as configured."
        },
    )


@dataclass(frozen=True)
class RunRecord:
    """What a recipe knows about its run and the trainer does not: recorded in training_summary.json."""

    recipe: str
    base_model: str
    base_revision: str | None = None
    datasets: list[DatasetRef] = field(default_factory=list)
    license: str | None = None


def load_for_training(
    model_args: ModelConfig,
    training_args: SFTConfig | DPOConfig,
    *,
    max_pixels: int | None = None,
    processor_source: str | None = None,
) -> tuple[PreTrainedModel, ProcessorMixin, LoraConfig]:
    """Model, processor (from `processor_source` if given, e.g. an SFT adapter's folder) and the LoRA config
    for its family: LoRA on the language model only."""
    model = load_model(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        dtype=model_args.dtype,
        attn_implementation=model_args.attn_implementation,
        load_in_4bit=model_args.load_in_4bit,
        trust_remote_code=training_args.trust_remote_code,
    )
    processor = load_processor(
        processor_source or model_args.model_name_or_path,
        revision=None if processor_source else model_args.model_revision,
        max_pixels=max_pixels,
        trust_remote_code=training_args.trust_remote_code,
    )
    peft_config = lora_config(
        family_of(model.config.model_type),
        r=model_args.lora_r,
        alpha=model_args.lora_alpha,
        dropout=model_args.lora_dropout,
        target_modules=model_args.lora_target_modules,
        use_rslora=model_args.use_rslora,
        use_dora=model_args.use_dora,
    )
    return model, processor, peft_config


def build_sft_trainer(
    train_dataset: Dataset,
    training_args: SFTConfig,
    model_args: ModelConfig,
    data_args: ImageDataArguments | None = None,
) -> SFTTrainer:
    """An SFTTrainer with LoRA on the language model only, samples longer than `max_length` left out (counted),
    and, with assistant-only loss, a template that masks images and prompts out of the loss. `data_args`
    (default: its defaults) gives the image resolution cap and whether the speed settings are chosen for this
    machine and the data (`auto_speed`, `vlsafe.speed`)."""
    if training_args.push_to_hub:
        raise VlsafeError(
            "push_to_hub is still on: the Trainer would commit at every save and write its own card. Call "
            "vlsafe.training.take_over_hub_push(training_args) first and pass its target to train_and_save, "
            "which publishes the finished folder in one commit."
        )
    data_args = data_args or ImageDataArguments()
    model, processor, peft_config = load_for_training(
        model_args, training_args, max_pixels=data_args.max_pixels
    )
    return assemble_sft_trainer(
        model, processor, peft_config, train_dataset, training_args, auto_speed=data_args.auto_speed
    )


def assemble_sft_trainer(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    peft_config: LoraConfig,
    train_dataset: Dataset,
    training_args: SFTConfig,
    *,
    auto_speed: bool = True,
) -> SFTTrainer:
    """`build_sft_trainer` for a model already in memory (the benchmarks build random-weight ones)."""
    if training_args.assistant_only_loss:
        prepare_training_template(processor, family_of(model.config.model_type))
    lengths = None
    if training_args.max_length is not None or auto_speed:
        lengths = token_lengths(train_dataset, processor)
    # Leave out what TRL's collator would truncate (through image tokens, or mid-answer), counted in the log.
    train_dataset = drop_too_long(train_dataset, processor, training_args.max_length, lengths=lengths)
    if auto_speed:
        fitting = [n for n in lengths if training_args.max_length is None or n <= training_args.max_length]
        choose_and_apply(training_args, model, peft_config, longest_sample=max(fitting, default=0))
    return SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=processor,
        peft_config=peft_config,
    )


def take_over_hub_push(args: SFTConfig) -> HubTarget | None:
    """Where to publish the run (None when ``push_to_hub`` is off), with the Trainer's own push turned off.

    vlsafe publishes the finished folder once, with its card; the Trainer would create the repo when built,
    commit at every save and write TRL's card. The token moves out of `args`, so that no later file (a
    checkpoint's training_args.bin) or log of the arguments holds it.
    """
    if not args.push_to_hub:
        return None
    if not args.hub_model_id:
        raise VlsafeError(
            "push_to_hub is set but hub_model_id is not: set hub_model_id to <user-or-org>/<name>, the model "
            "repo the adapter is published to."
        )
    target = HubTarget(args.hub_model_id, bool(args.hub_private_repo), args.hub_revision, args.hub_token)
    args.push_to_hub, args.hub_token = False, None
    return target


def resume_checkpoint(args: SFTConfig | DPOConfig) -> str | None:
    """The checkpoint to resume from: the one asked for, else the newest complete one in output_dir, else None.

    The Trainer writes trainer_state.json last, so a checkpoint without it was cut short by the interruption
    and is passed over."""
    if args.resume_from_checkpoint or not Path(args.output_dir).is_dir():
        return args.resume_from_checkpoint
    checkpoints = sorted(
        (
            path
            for path in Path(args.output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*")
            if path.name.split("-")[-1].isdigit()
        ),
        key=lambda path: int(path.name.split("-")[-1]),
        reverse=True,
    )
    for checkpoint in checkpoints:
        if (checkpoint / TRAINER_STATE_NAME).is_file():
            logger.info("Resuming the interrupted run from %s", checkpoint)
            return str(checkpoint)
        logger.warning("Passing over %s: it was cut short (no %s)", checkpoint, TRAINER_STATE_NAME)
    return None


def train_and_save(
    trainer: SFTTrainer, record: RunRecord | None = None, hub_target: HubTarget | None = None
) -> Path:
    """Train and make the output folder stand on its own: adapter + processor, then, on the main process,
    training_summary.json and the model card, and a one-commit push to `hub_target`.

    An interrupted run resumes: re-running the same command continues from the newest checkpoint in
    output_dir (unless `resume_from_checkpoint` names another one); use a fresh output_dir to start over.
    """
    trainer.train(resume_from_checkpoint=resume_checkpoint(trainer.args))
    out = Path(trainer.args.output_dir)
    trainer.save_model(str(out))
    if not trainer.accelerator.is_main_process:
        return out
    trainer.processing_class.save_pretrained(str(out))
    (out / TRAINING_ARGS_NAME).unlink(missing_ok=True)  # a pickle; training_summary.json records the settings
    logger.info("Saved adapter and processor to %s", out)
    summary = training_summary(trainer, record, hub_model_id=hub_target.repo_id if hub_target else None)
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    write_adapter_card(out)
    if hub_target is not None:
        try:
            push_target(hub_target, out)
        except VlsafeError:
            logger.error(
                "The trained adapter is saved in %s; once the problem below is fixed, publish it with: "
                "python -m vlsafe.publish --folder %s --repo_id %s",
                out,
                out,
                hub_target.repo_id,
            )
            raise
    return out


def training_summary(
    trainer: SFTTrainer, record: RunRecord | None = None, *, hub_model_id: str | None = None
) -> dict[str, Any]:
    """What the card tells about the run: recipe, base model, data (with revisions and counts per ``kind``),
    LoRA and schedule settings. Only what the user passed or the run computed: no tokens, no resolved paths."""
    args, peft = trainer.args, trainer.model.peft_config["default"]
    record = record or RunRecord(recipe="sft", base_model=str(peft.base_model_name_or_path))
    targets = peft.target_modules
    columns = getattr(trainer.train_dataset, "column_names", None) or []
    kinds = Counter(trainer.train_dataset["kind"]) if "kind" in columns else Counter()
    losses = [entry["train_loss"] for entry in trainer.state.log_history if "train_loss" in entry]
    return {
        "vlsafe_summary_version": SUMMARY_VERSION,
        "recipe": record.recipe,
        "base_model": {"name_or_path": record.base_model, "revision": record.base_revision},
        "datasets": [dataset_entry(d) for d in record.datasets],
        "samples": {"total": len(trainer.train_dataset), "by_kind": dict(sorted(kinds.items()))},
        "lora": {
            "r": peft.r,
            "alpha": peft.lora_alpha,
            "dropout": peft.lora_dropout,
            "target_modules": sorted(targets) if isinstance(targets, set | list) else targets,
            "use_rslora": peft.use_rslora,
            "use_dora": bool(peft.use_dora),
        },
        "training": {
            "learning_rate": args.learning_rate,
            "lr_scheduler_type": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
            "num_train_epochs": args.num_train_epochs,
            "max_steps": args.max_steps,
            "per_device_train_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "world_size": args.world_size,
            "assistant_only_loss": args.assistant_only_loss,
            "max_length": args.max_length,
            "seed": args.seed,
            "global_steps": trainer.state.global_step,
            "train_loss": round(losses[-1], 4) if losses else None,
        },
        "license": record.license,
        "hub_model_id": hub_model_id,
        "versions": {name: _version(name) for name in ("vlsafe", "transformers", "trl", "peft", "torch")},
    }


def dataset_entry(ref: DatasetRef) -> dict[str, Any]:
    """The dataset entry, plus the commit its revision resolved to when it is a Hub dataset (best effort:
    the Hub may be unreachable after a long run; the run's result does not depend on it)."""
    entry = {k: v for k, v in asdict(ref).items() if v is not None}
    if looks_like_repo_id(ref.source):
        try:
            entry["resolved_revision"] = HfApi().dataset_info(ref.source, revision=ref.revision).sha
        except Exception as error:  # any failure only leaves the commit unrecorded
            logger.info(
                "Could not resolve the commit of %s (%s); recording the revision as given",
                ref.source,
                type(error).__name__,
            )
    return entry


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
