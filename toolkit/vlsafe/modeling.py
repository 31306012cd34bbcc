"""Load a VLM and its processor for safety fine-tuning; its parts, LoRA targets and training chat templates per
family.

The VLGuard recipe adapts only the language model: the vision tower and the projector stay untouched, so
LoRA targets are the attention and MLP projections of the language model's layers, per family, and full
fine-tuning (the MIS paper's released models) trains the language model's parameters and freezes the rest.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from importlib import resources
from typing import Any

import torch
from peft import LoraConfig
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    AutoProcessor,
    BitsAndBytesConfig,
    PreTrainedModel,
    ProcessorMixin,
)
from trl.chat_template_utils import get_training_chat_template, has_generation_markers

from vlsafe.errors import VlsafeError

logger = logging.getLogger(__name__)

LM_LINEAR_LAYERS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Family:
    """What vlsafe needs to know about one VLM architecture: the names of its three parts (submodules of the
    model, e.g. ``model.language_model``) and its training chat template."""

    name: str
    language_model: str  # the language-model submodule (its layers are LoRA's targets)
    vision_tower: str
    projector: str  # may sit inside the vision tower's module (Qwen-VL's `visual.merger`)
    training_template: str | None = None  # vlsafe's template with {% generation %} markers, if TRL has none


FAMILIES = {
    "llava": Family(
        "llava",
        "language_model",
        "vision_tower",
        "multi_modal_projector",
        training_template="llava_training.jinja",
    ),
    "qwen2_5_vl": Family("qwen2_5_vl", "language_model", "visual", "visual.merger"),
    "qwen2_vl": Family("qwen2_vl", "language_model", "visual", "visual.merger"),
    "idefics3": Family("idefics3", "text_model", "vision_model", "connector"),
    "smolvlm": Family("smolvlm", "text_model", "vision_model", "connector"),
    # InternVL2.5/3 in transformers' native format (the OpenGVLab/*-hf checkpoints); TRL has no training
    # template for them. The vision tower's layers are `encoder.layer.N.attention`, so the regex never hits them.
    "internvl": Family(
        "internvl",
        "language_model",
        "vision_tower",
        "multi_modal_projector",
        training_template="internvl_training.jinja",
    ),
}
LM_HEAD = "lm_head"  # the language model's output layer, outside its submodule in transformers' VLM classes
PARTS = ("language_model", "vision_tower", "projector")


def family_of(model_type: str) -> Family:
    """The Family of a transformers `model_type`, or a clear error listing the supported ones."""
    try:
        return FAMILIES[model_type]
    except KeyError:
        raise VlsafeError(
            f"Model type {model_type!r} is not a supported VLM family; vlsafe supports {sorted(FAMILIES)}. "
            "Pick a model of one of these families, or add a Family entry in vlsafe.modeling."
        ) from None


def lora_target_modules(family: Family) -> str:
    """A PEFT regex for the linear layers of the language model only (never the vision tower or projector)."""
    return rf".*\.{family.language_model}\.layers\.\d+\.(self_attn|mlp)\.({'|'.join(LM_LINEAR_LAYERS)})"


def model_part(family: Family, parameter_name: str) -> str:
    """Which part of a `family` model a parameter (or module) belongs to: "language_model" (its output layer
    included), "vision_tower", "projector", or "other". Works on PEFT-wrapped names too."""
    name = f".{parameter_name}."
    if f".{family.projector}." in name:  # first: Qwen-VL's projector sits inside the vision tower's module
        return "projector"
    if f".{family.vision_tower}." in name:
        return "vision_tower"
    if f".{family.language_model}." in name or f".{LM_HEAD}." in name:
        return "language_model"
    return "other"


@dataclass(frozen=True)
class TrainedParts:
    """What full fine-tuning trains: parameter counts per part, and which parts train."""

    trained: tuple[str, ...]
    frozen: tuple[str, ...]
    trained_parameters: int
    total_parameters: int


def set_trainable_parts(model: PreTrainedModel, family: Family, trained: tuple[str, ...]) -> TrainedParts:
    """Let exactly the parameters of the `trained` parts (of PARTS) take gradients, freeze every other one.

    Full fine-tuning of the language model leaves the vision tower and projector as they are, like LoRA does;
    parameters of no known part (none in the supported families) are frozen and logged.
    """
    unknown = set(trained) - set(PARTS)
    if unknown:
        raise VlsafeError(f"Unknown model part(s) {sorted(unknown)}; the parts are {list(PARTS)}.")
    counts = dict.fromkeys((*PARTS, "other"), 0)
    trained_count = 0
    for name, parameter in model.named_parameters():  # a tied weight appears once
        part = model_part(family, name)
        parameter.requires_grad_(part in trained)
        counts[part] += parameter.numel()
        trained_count += parameter.numel() if part in trained else 0
    missing = [part for part in trained if counts[part] == 0]
    if missing:
        raise VlsafeError(
            f"No parameters of the {', '.join(missing)} found in this {family.name} model (looked for "
            f"{[getattr(family, part) for part in missing]}); the Family entry in vlsafe.modeling needs fixing."
        )
    if counts["other"]:
        logger.warning("%d parameters belong to no known part of the model: frozen", counts["other"])
    frozen = tuple(part for part in PARTS if part not in trained)
    logger.info(
        "Full fine-tuning of %s: %d of %d parameters train; %s frozen",
        ", ".join(trained),
        trained_count,
        sum(counts.values()),
        ", ".join(frozen) or "nothing",
    )
    return TrainedParts(tuple(trained), frozen, trained_count, sum(counts.values()))


def lora_config(
    family: Family,
    *,
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.05,
    target_modules: str | list[str] | None = None,
    use_rslora: bool = False,
    use_dora: bool = False,
) -> LoraConfig:
    """LoRA on the language model of `family`; explicit `target_modules` override the family default."""
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules or lora_target_modules(family),
        bias="none",
        use_rslora=use_rslora,
        use_dora=use_dora,
    )


def load_processor(
    name_or_path: str,
    *,
    revision: str | None = None,
    max_pixels: int | None = None,
    min_pixels: int | None = None,
    trust_remote_code: bool = False,
) -> ProcessorMixin:
    """The model's processor; `max_pixels` caps each image's pixels, so its tokens (and memory).

    Qwen-VL processors resize images to [`min_pixels`, `max_pixels`]; InternVL's cuts an image into fixed-size
    tiles, so there `max_pixels` caps the number of tiles instead (:func:`cap_image_tiles`).
    """
    kwargs = {
        key: value
        for key, value in (("max_pixels", max_pixels), ("min_pixels", min_pixels))
        if value is not None
    }
    processor = AutoProcessor.from_pretrained(
        name_or_path, revision=revision, trust_remote_code=trust_remote_code, **kwargs
    )
    image_processor = getattr(processor, "image_processor", None)
    if max_pixels is not None and hasattr(image_processor, "max_patches"):
        cap_image_tiles(image_processor, max_pixels)
    return processor


def cap_image_tiles(image_processor, max_pixels: int) -> None:
    """Let a tiling image processor (InternVL's) use at most `max_pixels` worth of tiles per image.

    Above one tile the processor adds a thumbnail tile, so `max_patches` is one less than the tiles that fit;
    one tile is the least an image gets.
    """
    tiles = max_pixels // (image_processor.size.height * image_processor.size.width)
    image_processor.max_patches = tiles - 1 if tiles >= 3 else 1
    most = 1 if image_processor.max_patches == 1 else tiles
    logger.info("max_pixels=%d: at most %d tile(s) per image", max_pixels, most)


def load_model(
    name_or_path: str,
    *,
    revision: str | None = None,
    dtype: str | torch.dtype = "auto",
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    quantization_config: BitsAndBytesConfig | None = None,
    **init_kwargs: Any,
) -> PreTrainedModel:
    """Load the VLM with the Auto class, safetensors only. Quantized loading (QLoRA: `quantization_config`,
    e.g. from TRL's get_quantization_config) needs the `quant` extra (bitsandbytes); `init_kwargs` go to
    from_pretrained as they are (e.g. device_map)."""
    config = AutoConfig.from_pretrained(name_or_path, revision=revision, trust_remote_code=trust_remote_code)
    family_of(config.model_type)  # fail early, before downloading weights, on an unsupported family
    if quantization_config is not None and importlib.util.find_spec("bitsandbytes") is None:
        flag = "load_in_8bit" if quantization_config.load_in_8bit else "load_in_4bit"
        raise VlsafeError(
            f"{flag} needs bitsandbytes, which is not installed: install vlsafe with the `quant` extra "
            f"(pip install 'vlsafe[quant]'), or drop {flag} to train on unquantized weights."
        )
    if quantization_config is not None:
        init_kwargs["quantization_config"] = quantization_config
    return AutoModelForImageTextToText.from_pretrained(
        name_or_path,
        revision=revision,
        dtype=dtype,
        attn_implementation=attn_implementation,
        trust_remote_code=trust_remote_code,
        use_safetensors=True,
        **init_kwargs,
    )


# Prompts the original and the training template must render alike: what the model sees at inference.
PROBE_PROMPTS = (
    [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}],
    [
        {"role": "system", "content": [{"type": "text", "text": "Be careful."}]},
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Compare."}],
        },
    ],
)


def _check_same_prompts(processor: ProcessorMixin, original: str, training: str, family: Family) -> None:
    """Refuse to swap in vlsafe's training template when it would prompt the model differently from the
    checkpoint's own template (e.g. a later release of the family with another chat format)."""
    for messages in PROBE_PROMPTS:
        rendered = [
            processor.apply_chat_template(
                messages, chat_template=t, tokenize=False, add_generation_prompt=True
            )
            for t in (original, training)
        ]
        if rendered[0] != rendered[1]:
            raise VlsafeError(
                f"This {family.name} checkpoint's chat template renders prompts differently from the template "
                f"vlsafe trains {family.name} models with ({family.training_template}): {rendered[0]!r:.200} vs "
                f"{rendered[1]!r:.200}. Pass a chat template with {{% generation %}} markers via "
                "`chat_template_path`, or set assistant_only_loss to false."
            )


def prepare_training_template(processor: ProcessorMixin, family: Family) -> None:
    """Make the processor's chat template mark assistant tokens with {% generation %} for assistant-only loss.

    TRL swaps in a training template for the families it knows (Qwen2.5-VL, SmolVLM); for the others vlsafe
    sets its own: InternVL, and LLaVA-1.5, whose shipped template also leaves out the end-of-turn token, so
    the model never learns to stop. The template renders the same text as the original, so it is saved with
    the adapter and inference prompts do not change.
    """
    template = processor.chat_template
    if has_generation_markers(template):
        return
    if family.training_template is not None:
        training = resources.files("vlsafe").joinpath("templates", family.training_template).read_text()
        _check_same_prompts(processor, template, training, family)
        processor.chat_template = training
        logger.info("Using vlsafe's %s training chat template (assistant-only loss)", family.name)
        return
    try:
        get_training_chat_template(processor)
    except ValueError:
        raise VlsafeError(
            f"The chat template of this {family.name} model has no {{% generation %}} markers and TRL cannot patch it, "
            "so assistant-only loss cannot mask the prompt. Use the model's original chat template, or pass a "
            "template with generation markers via `chat_template_path`."
        ) from None
