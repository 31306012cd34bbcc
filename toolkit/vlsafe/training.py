"""Assemble TRL trainers for vlsafe recipes (model + processor + LoRA on the language model or full fine-tuning of
it + training template), and turn a finished run into a self-contained output folder: adapter or full weights,
processor, training summary, model card, optionally published to the Hub in one commit.

Every `ModelConfig` flag the recipes parse does what it says or is refused with a message naming it: see
`check_model_args`, `model_init_kwargs` (dtype, attention, revision, 8-/4-bit quantization through TRL's
`get_quantization_config`) and `peft_config_for` (LoRA through TRL's `get_peft_config`, on the language model
unless `lora_target_modules` says otherwise; `use_peft false` trains the language model in full).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import is_peft_model
from datasets import Dataset, Features, Image, List
from huggingface_hub import HfApi
from peft import LoraConfig, PeftConfig, PeftModel
from transformers import PreTrainedModel, ProcessorMixin, Trainer
from transformers.trainer import TRAINER_STATE_NAME, TRAINING_ARGS_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import (
    DPOConfig,
    DPOTrainer,
    ModelConfig,
    SFTConfig,
    SFTTrainer,
    get_peft_config,
    get_quantization_config,
)

from vlsafe.cards import ADAPTER_CONFIG, SUMMARY, looks_like_repo_id, write_adapter_card
from vlsafe.data.formats import MESSAGES_FEATURE
from vlsafe.data.length import drop_too_long, token_lengths
from vlsafe.data.preferences import HARMFUL_KINDS
from vlsafe.errors import VlsafeError
from vlsafe.hub import HubTarget, push_target
from vlsafe.modeling import (
    PARTS,
    Family,
    family_of,
    load_model,
    load_processor,
    lora_target_modules,
    model_part,
    prepare_training_template,
    set_trainable_parts,
)
from vlsafe.safety_curve import find_callback
from vlsafe.speed import choose_and_apply

logger = logging.getLogger(__name__)
SUMMARY_VERSION = 1
MODEL_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
LORA_FLAGS = {  # ModelConfig flag -> LoraConfig attribute
    "lora_r": "r",
    "lora_alpha": "lora_alpha",
    "lora_dropout": "lora_dropout",
    "lora_target_modules": "target_modules",
    "lora_target_parameters": "target_parameters",
    "lora_modules_to_save": "modules_to_save",
    "use_rslora": "use_rslora",
    "use_dora": "use_dora",
}
FOUR_BIT_FLAGS = ("bnb_4bit_quant_type", "use_bnb_nested_quant", "bnb_4bit_quant_storage")
HUB_STRATEGIES = ("every_save", "end")  # the ones vlsafe's single push at the end fulfils


@dataclass(frozen=True)
class DatasetRef:
    """One dataset of the training mix, as the user named it."""

    role: str  # "safety", "helpfulness", "prompts", "preferences"
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


@dataclass
class ModelArguments(ModelConfig):
    """TRL's ModelConfig with vlsafe's default, LoRA (both papers' recipe; TRL's default is full fine-tuning),
    and the parts of the VLM that may train besides its language model."""

    use_peft: bool = field(
        default=True,
        metadata={
            "help": "LoRA on the language model (vlsafe's default); false: full fine-tuning of the language model "
            "(every parameter of it and its output layer), vision tower and projector frozen."
        },
    )
    train_vision_tower: bool = field(
        default=False,
        metadata={"help": "Also train the vision tower (with LoRA: in full, as a module to save)."},
    )
    train_projector: bool = field(
        default=False,
        metadata={"help": "Also train the projector (with LoRA: in full, as a module to save)."},
    )


@dataclass(frozen=True)
class RunRecord:
    """What a recipe knows about its run and the trainer does not: recorded in training_summary.json."""

    recipe: str
    base_model: str
    base_revision: str | None = None
    datasets: list[DatasetRef] = field(default_factory=list)
    license: str | None = None
    continued_from: str | None = None  # the adapter training started from (e.g. DPO after SFT)
    settings: dict[str, Any] = field(default_factory=dict)  # recipe settings worth recording


# -- flags ------------------------------------------------------------------------------------------------------
def trained_parts(model_args: ModelConfig) -> tuple[str, ...]:
    """The parts of the model that train in full: the language model (full fine-tuning only) and whichever of
    the vision tower and projector the flags unfreeze."""
    parts = () if model_args.use_peft else ("language_model",)
    return parts + tuple(
        part for part in ("vision_tower", "projector") if getattr(model_args, f"train_{part}", False)
    )


def check_model_args(model_args: ModelConfig) -> None:
    """Refuse flags that cannot do what they say, before anything is loaded; warn about LoRA flags that full
    fine-tuning does not use (a config file may carry them while the command line turns LoRA off)."""
    if not model_args.model_name_or_path:
        raise VlsafeError("model_name_or_path is not set: pass the base model's Hub id or local folder.")
    quantized = (
        "load_in_4bit" if model_args.load_in_4bit else "load_in_8bit" if model_args.load_in_8bit else None
    )
    if quantized and not model_args.use_peft:
        raise VlsafeError(
            f"{quantized} with use_peft false: quantized weights cannot be trained in full. Drop {quantized} for "
            "full fine-tuning, or keep use_peft true to train LoRA on the quantized model (QLoRA)."
        )
    if not model_args.load_in_4bit:
        stray = [flag for flag in FOUR_BIT_FLAGS if getattr(model_args, flag) != MODEL_DEFAULTS[flag]]
        if stray:
            raise VlsafeError(
                f"{', '.join(stray)} only apply to 4-bit loading, which is off: add --load_in_4bit true, or drop "
                f"{', '.join(stray)}."
            )
    if model_args.lora_task_type != "CAUSAL_LM":
        raise VlsafeError(
            f"lora_task_type={model_args.lora_task_type!r}: vlsafe trains generative VLMs, whose LoRA task type is "
            "CAUSAL_LM. Drop lora_task_type."
        )
    if not model_args.use_peft:
        unused = [flag for flag in LORA_FLAGS if getattr(model_args, flag) != MODEL_DEFAULTS[flag]]
        if unused:
            logger.warning("use_peft is false (full fine-tuning): %s do not apply", ", ".join(unused))


def kbit_device_map() -> dict[str, int] | None:
    """Each process's quantized model on its own GPU (what TRL's former get_kbit_device_map gave)."""
    return {"": PartialState().local_process_index} if torch.cuda.is_available() else None


def model_init_kwargs(model_args: ModelConfig, training_args: SFTConfig | DPOConfig) -> dict[str, Any]:
    """The from_pretrained keyword arguments the flags ask for: revision, dtype, attention implementation,
    trust_remote_code (a training argument in TRL), 8-/4-bit quantization (TRL's get_quantization_config) and
    the training config's own `model_init_kwargs`, which win, as in TRL's scripts."""
    kwargs: dict[str, Any] = {
        "revision": model_args.model_revision,
        "dtype": model_args.dtype,
        "attn_implementation": model_args.attn_implementation,
        "trust_remote_code": training_args.trust_remote_code,
    }
    quantize = model_args
    if model_args.load_in_4bit and model_args.dtype == "auto":  # 4-bit computes in a concrete dtype
        quantize = dataclasses.replace(model_args, dtype="bfloat16")
    quantization = get_quantization_config(quantize)
    if quantization is not None:
        kwargs |= {"quantization_config": quantization, "device_map": kbit_device_map()}
    return kwargs | dict(training_args.model_init_kwargs or {})


def lora_modules_to_save(model_args: ModelConfig, family: Family) -> list[str]:
    """The modules LoRA trains in full besides its adapters: `lora_modules_to_save` plus the vision tower and
    projector when their flags ask for it."""
    names = list(model_args.lora_modules_to_save or [])
    parts = [part for part in ("vision_tower", "projector") if getattr(model_args, f"train_{part}", False)]
    nested = family.projector.startswith(f"{family.vision_tower}.")
    if nested and parts == ["vision_tower"]:
        raise VlsafeError(
            f"train_vision_tower with LoRA on {family.name}: its projector ({family.projector}) is part of the vision "
            f"tower's module ({family.vision_tower}), which LoRA can only train whole. Add --train_projector true, "
            "or use full fine-tuning (--use_peft false), which trains them separately."
        )
    if nested and "vision_tower" in parts:
        parts = ["vision_tower"]
    return names + [getattr(family, part) for part in parts if getattr(family, part) not in names]


def peft_config_for(model_args: ModelConfig, family: Family) -> LoraConfig | None:
    """TRL's LoRA config for the flags (None with use_peft false): the language model's linear layers unless
    `lora_target_modules` names others, and the modules to save (`lora_modules_to_save`, train_* flags)."""
    config = get_peft_config(model_args)
    if config is None:
        return None
    targets = model_args.lora_target_modules
    if targets is None:
        targets = lora_target_modules(family)
    elif isinstance(targets, str) and targets != "all-linear" and re.fullmatch(r"\w+", targets):
        # TRL's parser turns a one-name list into a string, which PEFT would read as a regex of full names.
        targets = [targets]
    return dataclasses.replace(
        config, target_modules=targets, modules_to_save=lora_modules_to_save(model_args, family) or None
    )


def continue_adapter(model: PreTrainedModel, adapter: str, model_args: ModelConfig) -> PeftModel:
    """`model` with the trainable LoRA adapter `adapter` (folder or Hub id) on it; the adapter keeps its own
    LoRA settings, so LoRA flags that ask for others are refused."""
    if not model_args.use_peft:
        raise VlsafeError(
            f"use_peft false with the adapter {adapter}: full fine-tuning cannot continue a LoRA adapter. Drop the "
            "adapter to fully fine-tune the base, or pass a fully fine-tuned model as model_name_or_path."
        )
    folder = Path(adapter).expanduser()
    if folder.is_dir() and not (folder / ADAPTER_CONFIG).is_file():
        what = "a full model, not an adapter" if (folder / "config.json").is_file() else "no adapter"
        raise VlsafeError(
            f"{adapter} is {what} (no {ADAPTER_CONFIG}). Pass a fully fine-tuned model as model_name_or_path "
            "instead, or point at a LoRA adapter folder."
        )
    model = PeftModel.from_pretrained(model, adapter, is_trainable=True)
    own = model.peft_config["default"]
    for flag, attribute in LORA_FLAGS.items():
        value = getattr(model_args, flag)
        if value != MODEL_DEFAULTS[flag] and _as_set(value) != _as_set(getattr(own, attribute, None)):
            raise VlsafeError(
                f"{flag}={value!r} does not apply: the continued adapter {adapter} keeps its own "
                f"{attribute}={getattr(own, attribute, None)!r}. Drop {flag}, or drop the adapter to train a fresh LoRA."
            )
    for part in ("vision_tower", "projector"):
        if getattr(model_args, f"train_{part}", False):
            raise VlsafeError(
                f"train_{part} does not apply to the continued adapter {adapter} (its modules to save are "
                f"{own.modules_to_save}). Drop train_{part}, or drop the adapter to train a fresh LoRA."
            )
    logger.info("Continuing the adapter %s (r=%s); its LoRA settings stay as trained", adapter, own.r)
    return model


def _as_set(value: Any) -> Any:
    return set(value) if isinstance(value, list | tuple | set) else value


# -- loading and trainers ---------------------------------------------------------------------------------------
def load_for_training(
    model_args: ModelConfig,
    training_args: SFTConfig | DPOConfig,
    *,
    max_pixels: int | None = None,
    processor_source: str | None = None,
    adapter: str | None = None,
) -> tuple[PreTrainedModel, ProcessorMixin, LoraConfig | None]:
    """Model, processor (from `processor_source` if given, e.g. an SFT adapter's folder) and the LoRA config the
    flags ask for. With `adapter` the model carries that trainable adapter and the config is None; with
    use_peft false the config is None and only the parts to train take gradients (`trained_parts`)."""
    check_model_args(model_args)
    model = load_model(model_args.model_name_or_path, **model_init_kwargs(model_args, training_args))
    family = family_of(model.config.model_type)
    processor = load_processor(
        processor_source or model_args.model_name_or_path,
        revision=None if processor_source else model_args.model_revision,
        max_pixels=max_pixels,
        trust_remote_code=training_args.trust_remote_code,
    )
    if adapter:
        return continue_adapter(model, adapter, model_args), processor, None
    peft_config = peft_config_for(model_args, family)
    if peft_config is None:
        set_trainable_parts(model, family, trained_parts(model_args))
    return model, processor, peft_config


def _refuse_trainer_push(args: SFTConfig | DPOConfig) -> None:
    if args.push_to_hub:
        raise VlsafeError(
            "push_to_hub is still on: the Trainer would commit at every save and write its own card. Call "
            "vlsafe.training.take_over_hub_push(training_args) first and pass its target to train_and_save, "
            "which publishes the finished folder in one commit."
        )


def build_sft_trainer(
    train_dataset: Dataset,
    training_args: SFTConfig,
    model_args: ModelConfig,
    data_args: ImageDataArguments | None = None,
) -> SFTTrainer:
    """An SFTTrainer with LoRA on the language model (or, with use_peft false, full fine-tuning of it), samples
    longer than `max_length` left out (counted), and, with assistant-only loss, a template that masks images and
    prompts out of the loss. `data_args` (default: its defaults) gives the image resolution cap and whether the
    speed settings are chosen for this machine and the data (`auto_speed`, `vlsafe.speed`)."""
    _refuse_trainer_push(training_args)
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
    peft_config: LoraConfig | None,
    train_dataset: Dataset,
    training_args: SFTConfig,
    *,
    auto_speed: bool = True,
) -> SFTTrainer:
    """`build_sft_trainer` for a model already in memory (the benchmarks build random-weight ones); None as
    `peft_config` trains the parameters of `model` that take gradients."""
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
    training_args.model_init_kwargs = None  # applied when the model was loaded; TRL would call them ignored
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=processor,
        peft_config=peft_config,
    )
    fit_collator_to_mllama(trainer, processor)
    return trainer


def pair_lengths(pairs: Dataset, processor: ProcessorMixin) -> list[int]:
    """Tokens of each preference pair's longer sequence, prompt + chosen or prompt + rejected (images
    included), as DPO's max_length bounds both. Images are passed on undecoded (only their sizes count)."""
    images = pairs.cast_column("images", List(Image(decode=False)))["images"]
    features = Features({"messages": MESSAGES_FEATURE, "images": List(Image())})
    prompts = pairs["prompt"]
    sides = [
        Dataset.from_dict(
            {"messages": [p + a for p, a in zip(prompts, pairs[side], strict=True)], "images": images},
            features,
        )
        for side in ("chosen", "rejected")
    ]
    return [max(pair) for pair in zip(*(token_lengths(side, processor) for side in sides), strict=True)]


def build_dpo_trainer(
    pairs: Dataset,
    training_args: DPOConfig,
    model_args: ModelConfig,
    model: PreTrainedModel,
    processor: ProcessorMixin,
    peft_config: LoraConfig | None,
    *,
    auto_speed: bool = True,
) -> DPOTrainer:
    """A DPOTrainer for what `load_for_training` returned, with pairs longer than `max_length` left out (counted,
    never truncated) and, with `auto_speed`, speed settings for DPO's memory (chosen and rejected in one batch,
    the reference pass). The reference is the base with the adapter off (fresh LoRA), TRL's frozen copy of a
    continued adapter, or, for full fine-tuning, a frozen copy of the starting weights loaded like the model."""
    _refuse_trainer_push(training_args)
    lengths = None
    if training_args.max_length is not None or auto_speed:
        lengths = pair_lengths(pairs, processor)
    pairs = drop_too_long(pairs, processor, training_args.max_length, lengths=lengths)
    ref_model = None
    if peft_config is None and not is_peft_model(model):
        ref_model = load_model(model_args.model_name_or_path, **model_init_kwargs(model_args, training_args))
        ref_model.requires_grad_(False).eval()
    if auto_speed:
        fitting = [n for n in lengths if training_args.max_length is None or n <= training_args.max_length]
        choose_and_apply(
            training_args, model, peft_config, longest_sample=max(fitting, default=0), pairs=True
        )
    training_args.model_init_kwargs = None  # applied when the models were loaded
    trainer = DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=training_args,
        train_dataset=pairs,
        processing_class=processor,
        peft_config=peft_config,
    )
    fit_collator_to_mllama(trainer, processor)
    return trainer


def fit_collator_to_mllama(trainer: SFTTrainer | DPOTrainer, processor: ProcessorMixin) -> None:
    """Wrap the trainer's TRL collator, in place, where mllama needs it (a no-op for other processors): batches
    may mix examples with and without images (`MixedImageBatchCollator`), and DPO batches get a cross-attention
    mask over the whole sequence (`CrossAttentionPreferenceCollator`)."""
    if type(processor).__name__ != "MllamaProcessor":
        return
    collator = MixedImageBatchCollator(trainer.data_collator)
    if isinstance(trainer, DPOTrainer):
        collator = CrossAttentionPreferenceCollator(collator, processor.image_token_id)
    trainer.data_collator = collator


@dataclass
class MixedImageBatchCollator:
    """A TRL vision collator made to take mllama batches that mix examples with and without images.

    MllamaImageProcessor (transformers 5.23) fails on such a batch when its first example has no image
    (`pad_batches_and_tiles`), and its `aspect_ratio_ids` / `aspect_ratio_mask` stop at the last example with
    an image (`reorder_images` forgets trailing empty ones). So the examples with images go first (the order
    within a batch changes neither the loss nor, for DPO, which answers pair up), and the missing trailing rows
    get what mllama gives any missing image: aspect ratio id 0, the first tile unmasked. Their cross-attention
    mask is all zero already, so those rows never see an image.
    """

    collator: Any

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(sorted(examples, key=lambda example: not _has_images(example)))
        rows = len(batch["input_ids"])
        for key in ("aspect_ratio_ids", "aspect_ratio_mask"):
            if key in batch and len(batch[key]) < rows:
                missing = batch[key].new_zeros((rows - len(batch[key]), *batch[key].shape[1:]))
                if key == "aspect_ratio_mask":
                    missing[..., 0] = 1
                batch[key] = torch.cat([batch[key], missing])
        return batch


def _has_images(example: dict[str, Any]) -> bool:
    return bool(example.get("images") or example.get("image"))


@dataclass
class CrossAttentionPreferenceCollator:
    """TRL's vision preference collator, with mllama's `cross_attention_mask` rebuilt for the whole sequence.

    TRL (1.16) processes the prompts alone, then appends the chosen/rejected completions and flushes the rows
    left, but keeps the prompts' cross-attention mask: shorter than `input_ids` and not shifted with them, so
    the cross-attention layers fail. The mask is rebuilt from the final `input_ids` with mllama's own rule
    (each image is attended from its token to the next image's, the last one to the end: the answer sees it),
    with each image's tile count read from the prompts' mask.
    """

    collator: Any
    image_token_id: int

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        from transformers.models.mllama.processing_mllama import (
            convert_sparse_cross_attention_mask_to_dense,
            get_cross_attention_token_mask,
        )

        batch = self.collator(examples)
        prompt_mask = batch.get("cross_attention_mask")
        if prompt_mask is None:  # no image in this batch
            return batch
        ids = batch["input_ids"]
        num_tiles = prompt_mask.amax(dim=1).sum(dim=-1).tolist()  # (rows, images): tiles each image has
        dense = convert_sparse_cross_attention_mask_to_dense(
            [get_cross_attention_token_mask(row, self.image_token_id) for row in ids.tolist()],
            num_tiles=num_tiles,
            max_num_tiles=prompt_mask.shape[-1],
            length=ids.shape[1],
        )
        batch["cross_attention_mask"] = torch.from_numpy(dense).to(prompt_mask.dtype)
        return batch


# -- running and saving -----------------------------------------------------------------------------------------
def take_over_hub_push(args: SFTConfig | DPOConfig) -> HubTarget | None:
    """Where to publish the run (None when ``push_to_hub`` is off), with the Trainer's own push turned off.

    vlsafe publishes the finished folder once, with its card; the Trainer would create the repo when built,
    commit at every save and write TRL's card. The token always moves out of `args`, so that no later file (a
    checkpoint's training_args.bin) or log of the arguments holds it.
    """
    token, args.hub_token = args.hub_token, None
    if not args.push_to_hub:
        return None
    if not args.hub_model_id:
        raise VlsafeError(
            "push_to_hub is set but hub_model_id is not: set hub_model_id to <user-or-org>/<name>, the model "
            "repo the result is published to."
        )
    strategy = str(getattr(args.hub_strategy, "value", args.hub_strategy))
    if strategy not in HUB_STRATEGIES:
        raise VlsafeError(
            f"hub_strategy={strategy!r} would push checkpoints; vlsafe publishes the finished folder once, at the "
            "end (checkpoints stay local, resumable from output_dir). Drop hub_strategy."
        )
    target = HubTarget(args.hub_model_id, bool(args.hub_private_repo), args.hub_revision, token)
    args.push_to_hub = False
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
    trainer: Trainer, record: RunRecord | None = None, hub_target: HubTarget | None = None
) -> Path:
    """Train (SFT or DPO) and make the output folder stand on its own: adapter or full safetensors weights +
    processor, then, on the main process, training_summary.json and the model card, and a one-commit push to
    `hub_target`.

    An interrupted run resumes: re-running the same command continues from the newest checkpoint in
    output_dir (unless `resume_from_checkpoint` names another one); use a fresh output_dir to start over.
    """
    trainer.train(resume_from_checkpoint=resume_checkpoint(trainer.args))
    out = Path(trainer.args.output_dir)
    main = trainer.accelerator.is_main_process
    summary = (
        training_summary(trainer, record, hub_model_id=hub_target.repo_id if hub_target else None)
        if main
        else None
    )
    policy = trainer.accelerator.unwrap_model(trainer.model)
    if "ref" in getattr(policy, "peft_config", {}):
        policy.delete_adapter(
            "ref"
        )  # TRL's frozen copy of a continued adapter: DPO's reference, not the result
    trainer.save_model(str(out))
    if not main:
        return out
    trainer.processing_class.save_pretrained(str(out))
    (out / TRAINING_ARGS_NAME).unlink(missing_ok=True)  # a pickle; training_summary.json records the settings
    logger.info("Saved the %s and processor to %s", "adapter" if is_peft_model(policy) else "model", out)
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    write_adapter_card(out)
    if hub_target is not None:
        try:
            push_target(hub_target, out)
        except VlsafeError:
            logger.error(
                "The trained model is saved in %s; once the problem below is fixed, publish it with: "
                "vlsafe publish --folder %s --repo_id %s",
                out,
                out,
                hub_target.repo_id,
            )
            raise
    return out


def training_summary(
    trainer: Trainer, record: RunRecord | None = None, *, hub_model_id: str | None = None
) -> dict[str, Any]:
    """What the card tells about the run: recipe, base model, data (with revisions and counts per ``kind``, and
    the provenance of preference pairs), what trained (LoRA settings, or the parts fully fine-tuned), the
    schedule and, when measured, the safety curve. Only what the user passed or the run computed: no tokens, no resolved paths."""
    args, model = trainer.args, trainer.accelerator.unwrap_model(trainer.model)
    peft = model.peft_config["default"] if is_peft_model(model) else None
    base = str(peft.base_model_name_or_path) if peft else model.config.name_or_path
    record = record or RunRecord(recipe="sft", base_model=base)
    dataset = trainer.train_dataset
    columns = getattr(dataset, "column_names", None) or []
    kinds = Counter(dataset["kind"]) if "kind" in columns else Counter()
    losses = [entry["train_loss"] for entry in trainer.state.log_history if "train_loss" in entry]
    summary = {
        "vlsafe_summary_version": SUMMARY_VERSION,
        "recipe": record.recipe,
        "method": "dpo" if isinstance(trainer, DPOTrainer) else "sft",
        "base_model": {"name_or_path": record.base_model, "revision": record.base_revision},
        "continued_from": record.continued_from,
        "datasets": [dataset_entry(d) for d in record.datasets],
        "samples": {"total": len(dataset), "by_kind": dict(sorted(kinds.items()))},
        "finetuning": finetuning_entry(model, peft),
        "training": {
            "learning_rate": args.learning_rate,
            "lr_scheduler_type": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
            "num_train_epochs": args.num_train_epochs,
            "max_steps": args.max_steps,
            "per_device_train_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "world_size": args.world_size,
            "assistant_only_loss": getattr(args, "assistant_only_loss", None),
            "max_length": args.max_length,
            "seed": args.seed,
            "global_steps": trainer.state.global_step,
            "train_loss": round(losses[-1], 4) if losses else None,
        },
        "license": record.license,
        "hub_model_id": hub_model_id,
        "versions": {name: _version(name) for name in ("vlsafe", "transformers", "trl", "peft", "torch")},
    }
    if peft is not None:
        summary["lora"] = lora_entry(peft)
    if isinstance(trainer, DPOTrainer):
        summary["dpo"] = {
            "beta": args.beta,
            "loss_type": list(args.loss_type),
            "reference": _reference(trainer),
        }
    if "rejected_source" in columns:
        summary["preference_pairs"] = pair_counts(dataset)
    if record.settings:
        summary["recipe_settings"] = record.settings
    curve = find_callback(trainer)
    if curve is not None:  # ASR and over-refusal measured while training (vlsafe.safety_curve)
        summary["safety_curve"] = curve.summary(trainer.state)
    return summary


def lora_entry(peft: PeftConfig) -> dict[str, Any]:
    """The LoRA settings of an adapter, as the card shows them."""
    targets = peft.target_modules
    return {
        "r": peft.r,
        "alpha": peft.lora_alpha,
        "dropout": peft.lora_dropout,
        "target_modules": sorted(targets) if isinstance(targets, set | list) else targets,
        "modules_to_save": sorted(peft.modules_to_save or []),
        "use_rslora": peft.use_rslora,
        "use_dora": bool(peft.use_dora),
    }


def finetuning_entry(model: PreTrainedModel, peft: PeftConfig | None) -> dict[str, Any]:
    """How the model was tuned: "lora" or "full", the parameters trained, and for full fine-tuning which parts
    of the model trained and which stayed frozen."""
    # A tied weight counts once; TRL's reference copy of a continued adapter (adapter "ref") is no part of it.
    parameters = {name: p for name, p in model.named_parameters() if ".ref." not in name}
    trained = {name: p for name, p in parameters.items() if p.requires_grad}
    entry = {
        "method": "lora" if peft is not None else "full",
        "trained_parameters": sum(p.numel() for p in trained.values()),
        "total_parameters": sum(p.numel() for p in parameters.values()),
    }
    if peft is None:
        family = family_of(model.config.model_type)
        parts = {model_part(family, name) for name in trained}
        entry["trained_parts"] = [part for part in PARTS if part in parts]
        entry["frozen_parts"] = [part for part in PARTS if part not in parts]
    return entry


def pair_counts(pairs: Dataset) -> dict[str, Any]:
    """Provenance of DPO pairs: harmful vs safe vs imported prompts, and where the rejected answers came from
    (on_policy: the policy's own; synthetic: a fixed compliant answer; template: a refusal template)."""
    kinds, rejected = pairs["kind"], pairs["rejected_source"]
    harmful = sum(kind in HARMFUL_KINDS for kind in kinds)
    imported = sum(kind == "imported" for kind in kinds)
    both = Counter(zip(kinds, rejected, strict=True))
    return {
        "total": len(pairs),
        "harmful": harmful,
        "safe": len(pairs) - harmful - imported,
        "imported": imported,
        "by_rejected_source": dict(sorted(Counter(rejected).items())),
        "by_kind_and_rejected_source": [
            {"kind": kind, "rejected_source": source, "pairs": n}
            for (kind, source), n in sorted(both.items())
        ],
    }


def _reference(trainer: DPOTrainer) -> str:
    if trainer.ref_model is not None:
        return "frozen copy of the starting weights"
    if "ref" in getattr(trainer.accelerator.unwrap_model(trainer.model), "peft_config", {}):
        return "frozen copy of the continued adapter"
    return "the base model (adapter disabled)"


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
