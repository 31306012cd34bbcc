"""Load a VLM and its processor for safety fine-tuning; its parts, LoRA targets and training chat templates per
family.

The VLGuard recipe adapts only the language model: the vision tower and the projector stay untouched, so
LoRA targets are the attention and MLP projections of the language model's layers, per family, and full
fine-tuning (the MIS paper's released models) trains the language model's parameters and freezes the rest.

`FAMILIES` is the table of the architectures vlsafe knows (vlsafe.fixtures builds a tiny model of each). A model
of a type the table does not list is recognised from its structure (`recognise_family`): the submodule whose
decoder layers hold `self_attn.q_proj` and which owns the input embeddings is the language model, the vision
tower and projector are found by their usual names. So a close variant (a fine-tune under another model_type
name) works without a table entry.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import torch
from jinja2 import TemplateError
from peft import LoraConfig
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    AutoProcessor,
    BitsAndBytesConfig,
    PreTrainedConfig,
    PreTrainedModel,
    ProcessorMixin,
)
from transformers.image_utils import SizeDict
from trl.chat_template_utils import (
    get_training_chat_template,
    has_generation_markers,
    is_chat_template_stop_token_trained,
)

from vlsafe.errors import VlsafeError

logger = logging.getLogger(__name__)

LM_LINEAR_LAYERS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Gated-DeltaNet linear attention (Qwen3.5): its projections of the hidden state in and out. Its per-head decay
# and gate projections (in_proj_a, in_proj_b: one output per head) are not LoRA targets.
LINEAR_ATTENTION_LAYERS = ("in_proj_qkv", "in_proj_z", "out_proj")


@dataclass(frozen=True)
class Family:
    """What vlsafe needs to know about one VLM architecture: the names of its three parts (submodules of the
    model, e.g. ``model.language_model``), what LoRA adapts in the language model's decoder layers, its training
    chat template, and whether its checkpoints were trained with several images per prompt."""

    name: str
    language_model: str  # the language-model submodule (its layers are LoRA's targets)
    vision_tower: str
    projector: str  # may sit inside the vision tower's module (Qwen-VL's `visual.merger`)
    # vlsafe's template(s) with {% generation %} markers, where TRL has none (or its own does not fit); with
    # several, the one that renders prompts like the checkpoint's template is used.
    training_template: str | tuple[str, ...] | None = None
    model_types: tuple[str, ...] = ()  # transformers model types of the family; () means (name,)
    lora_modules: tuple[str, ...] = (
        "self_attn",
        "mlp",
    )  # blocks of a decoder layer whose linears LoRA adapts
    lora_linear: tuple[str, ...] = LM_LINEAR_LAYERS  # the linear layers of those blocks LoRA adapts
    # More parts of the projector outside its module: DeepStack mergers (Qwen3-VL), the learned row separator
    # of anyres tiling (LLaVA-NeXT/OneVision's `image_newline` parameter).
    projector_extras: tuple[str, ...] = ()
    multi_image: bool = True  # False: the checkpoints were trained with one image per prompt

    @property
    def types(self) -> tuple[str, ...]:
        """The transformers model types this family covers."""
        return self.model_types or (self.name,)


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family(
            "llava",
            "language_model",
            "vision_tower",
            "multi_modal_projector",
            training_template="llava_training.jinja",
            multi_image=False,
        ),
        Family(
            "qwen2_5_vl", "language_model", "visual", "visual.merger", model_types=("qwen2_5_vl", "qwen2_vl")
        ),
        Family("idefics3", "text_model", "vision_model", "connector", model_types=("idefics3", "smolvlm")),
        # InternVL2.5/3 in transformers' native format (the OpenGVLab/*-hf checkpoints); TRL has no training
        # template for them. The vision tower's layers are `encoder.layer.N.attention`, outside the LM anyway.
        Family(
            "internvl",
            "language_model",
            "vision_tower",
            "multi_modal_projector",
            training_template="internvl_training.jinja",
        ),
        Family(
            "qwen3_vl",
            "language_model",
            "visual",
            "visual.merger",
            projector_extras=("visual.deepstack_merger_list",),
        ),
        # Qwen3.5 dense and MoE: linear-attention and full-attention layers; in the MoE one LoRA adapts the shared
        # expert, while the routed experts (fused 3-D parameters, not linear layers) and the router stay frozen.
        Family(
            "qwen3_5",
            "language_model",
            "visual",
            "visual.merger",
            training_template=("qwen3_5_nothink_training.jinja", "qwen3_5_think_training.jinja"),
            model_types=("qwen3_5", "qwen3_5_moe"),
            lora_modules=("self_attn", "linear_attn", "mlp", "mlp.shared_expert"),
            lora_linear=LM_LINEAR_LAYERS + LINEAR_ATTENTION_LAYERS,
        ),
        Family("gemma3", "language_model", "vision_tower", "multi_modal_projector"),
        # Gemma 4's per-layer-input gates and projections (E2B/E4B) are not attention or MLP: frozen.
        Family(
            "gemma4",
            "language_model",
            "vision_tower",
            "embed_vision",
            training_template="gemma4_training.jinja",
        ),
        Family(
            "llava_onevision",
            "language_model",
            "vision_tower",
            "multi_modal_projector",
            training_template="llava_onevision_training.jinja",
            projector_extras=("image_newline",),
        ),
        Family(
            "llava_next",
            "language_model",
            "vision_tower",
            "multi_modal_projector",
            projector_extras=("image_newline",),
            multi_image=False,
        ),
        # Llama 3.2 Vision: images reach the language model only through its cross-attention layers, which LoRA
        # adapts with the self-attention and MLP projections (their tanh gates train with full fine-tuning only).
        Family(
            "mllama",
            "language_model",
            "vision_model",
            "multi_modal_projector",
            training_template="mllama_training.jinja",
            lora_modules=("self_attn", "cross_attn", "mlp"),
            multi_image=False,
        ),
        Family(
            "mistral3",
            "language_model",
            "vision_tower",
            "multi_modal_projector",
            training_template="mistral3_training.jinja",
        ),
    )
}
MODEL_TYPES: dict[str, Family] = {
    model_type: family for family in FAMILIES.values() for model_type in family.types
}
LM_HEAD = "lm_head"  # the language model's output layer, outside its submodule in transformers' VLM classes
PARTS = ("language_model", "vision_tower", "projector")

# Usual names of the parts, for recognising a model whose type the table does not list.
VISION_TOWER_NAMES = ("vision_tower", "visual", "vision_model", "vision_encoder", "vision")
PROJECTOR_NAMES = (
    "multi_modal_projector",
    "merger",
    "connector",
    "embed_vision",
    "mm_projector",
    "projector",
)
DECODER_BLOCKS = ("self_attn", "cross_attn", "linear_attn", "mlp", "mlp.shared_expert")
_ATTENTION_QUERY = re.compile(r"(?:(?P<lm>.+)\.)?layers\.\d+\.self_attn\.q_proj")
_RECOGNISED: dict[
    str, Family
] = {}  # families recognised from a model's structure in this process, by model type


def family_of(model: str | PreTrainedConfig | torch.nn.Module) -> Family:
    """The Family of a transformers `model_type`, a model config or a model: the table's entry for its type, else
    (for a config or model) the family recognised from the model's structure, else a clear error."""
    if isinstance(model, str):
        model_type = model
    elif isinstance(model, PreTrainedConfig):
        model_type = model.model_type
    else:
        model_type = model.config.model_type
    family = MODEL_TYPES.get(model_type) or _RECOGNISED.get(model_type)
    if family is not None:
        return family
    if isinstance(model, str):
        raise _unsupported(model_type)
    if isinstance(model, PreTrainedConfig):
        model = _skeleton(model)
    family = recognise_family(model)
    _RECOGNISED[model_type] = family
    logger.info(
        "Model type %r is not in vlsafe's table; recognised from its structure: language model %s, vision tower "
        "%s, projector %s",
        model_type,
        family.language_model,
        family.vision_tower,
        family.projector,
    )
    return family


def _unsupported(model_type: str) -> VlsafeError:
    return VlsafeError(
        f"Model type {model_type!r} is not a supported VLM family; vlsafe supports {sorted(FAMILIES)} (model "
        f"types {sorted(MODEL_TYPES)}) and image-text-to-text models of their structure. Pick a model of one of "
        "these families, or add a Family entry in vlsafe.modeling."
    )


def _skeleton(config: PreTrainedConfig) -> torch.nn.Module:
    """The model `config` describes, on the meta device (no memory, no weights), to look at its structure."""
    try:
        with torch.device("meta"):
            return AutoModelForImageTextToText.from_config(config)
    except (ValueError, KeyError):  # not an image-text-to-text architecture
        raise _unsupported(config.model_type) from None


def recognise_family(model: torch.nn.Module) -> Family:
    """A Family for `model` read off its structure: the language model is the submodule whose decoder layers hold
    `self_attn.q_proj` and which owns the input embeddings; the vision tower and projector are the outermost
    submodules with one of their usual names; LoRA adapts the linear layers of the decoder layers' attention and
    MLP blocks. A clear error names what could not be found."""
    model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    modules = dict(model.named_modules())
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    candidates = {
        match["lm"] or ""
        for name in modules
        if (match := _ATTENTION_QUERY.fullmatch(name)) and isinstance(modules[name], torch.nn.Linear)
    }
    owners = [path for path in candidates if any(m is embeddings for m in modules[path].modules())]
    if len(owners) != 1 or not owners[0]:
        raise VlsafeError(
            f"vlsafe could not find the language model of this {model_type!r} model: no single submodule has both "
            f"decoder layers with self_attn.q_proj and the input embeddings (candidates: {sorted(candidates)}). "
            "Add a Family entry for it in vlsafe.modeling."
        )
    language_model = owners[0]
    parts = {}
    for part, names in (("vision tower", VISION_TOWER_NAMES), ("projector", PROJECTOR_NAMES)):
        found = sorted(
            (path for path in modules if path.rsplit(".", 1)[-1] in names), key=lambda p: (p.count("."), p)
        )
        if not found:
            raise VlsafeError(
                f"vlsafe could not find the {part} of this {model_type!r} model (a submodule named one of "
                f"{list(names)}). Add a Family entry for it in vlsafe.modeling."
            )
        parts[part] = found[0]
    layers = [
        module
        for path, module in modules.items()
        if re.fullmatch(rf"{re.escape(language_model)}\.layers\.\d+", path)
    ]
    layer_modules = [dict(layer.named_modules()) for layer in layers]
    blocks = [block for block in DECODER_BLOCKS if any(block in named for named in layer_modules)]
    linear = sorted(
        {
            name
            for named in layer_modules
            for block in blocks
            if block in named
            for name, child in named[block].named_children()
            if isinstance(child, torch.nn.Linear)
        }
    )
    return Family(
        model_type,
        language_model,
        parts["vision tower"],
        parts["projector"],
        lora_modules=tuple(blocks),
        lora_linear=tuple(linear),
    )


def lora_target_modules(family: Family) -> str:
    """A PEFT regex for the linear layers of the language model only (never the vision tower or projector)."""
    blocks = "|".join(re.escape(block) for block in family.lora_modules)
    return rf"(?:.*\.)?{re.escape(family.language_model)}\.layers\.\d+\.({blocks})\.({'|'.join(family.lora_linear)})"


def model_part(family: Family, parameter_name: str) -> str:
    """Which part of a `family` model a parameter (or module) belongs to: "language_model" (its output layer
    included), "vision_tower", "projector", or "other". Works on PEFT-wrapped names too."""
    name = f".{parameter_name}."
    # Projector first: Qwen-VL's sits inside the vision tower's module.
    if any(f".{projector}." in name for projector in (family.projector, *family.projector_extras)):
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
    parameters of no known part (e.g. Gemma 4's audio tower) are frozen and logged.
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

    Qwen-VL processors resize images to [`min_pixels`, `max_pixels`]; for the other families
    :func:`cap_image_resolution` says what the cap sets.
    """
    processor = AutoProcessor.from_pretrained(
        name_or_path, revision=revision, trust_remote_code=trust_remote_code
    )
    if max_pixels is None and min_pixels is None:
        return processor
    image_processor = getattr(processor, "image_processor", None)
    if _resizes_to_pixel_range(image_processor):  # Qwen-VL: its own arguments, saved with it
        kwargs = {
            key: value
            for key, value in (("max_pixels", max_pixels), ("min_pixels", min_pixels))
            if value is not None
        }
        return AutoProcessor.from_pretrained(
            name_or_path, revision=revision, trust_remote_code=trust_remote_code, **kwargs
        )
    if min_pixels is not None:
        raise VlsafeError(
            f"min_pixels applies to Qwen-VL processors only, not {type(image_processor).__name__}; drop it."
        )
    cap_image_resolution(image_processor, max_pixels)
    return processor


def _resizes_to_pixel_range(image_processor: Any) -> bool:
    """Qwen-VL's image processors (Qwen2-VL's, used by Qwen2/2.5/3-VL and Qwen3.5) resize to a pixel range."""
    return hasattr(image_processor, "merge_size") and hasattr(image_processor, "temporal_patch_size")


def cap_image_resolution(image_processor: Any, max_pixels: int) -> None:
    """Make `image_processor` give each image at most about `max_pixels` pixels' worth of image tokens.

    - tiling processors (InternVL): at most that many tiles (:func:`cap_image_tiles`);
    - Llama 3.2 Vision: at most that many tiles (its image takes one text token; the cap bounds the
      cross-attention's work);
    - Gemma 4: the largest soft-token budget (70, 140, 280, 560 or 1120 tokens) whose pooled patches fit;
    - Pixtral (Mistral 3): the longest side at most sqrt(max_pixels);
    - Gemma 3 resizes every image to one fixed size (256 tokens): nothing to cap.
    LLaVA-NeXT/OneVision's anyres grids are fixed by the model's config as well as the processor's, so a cap
    here would break the model: that is refused; raise max_length instead.
    """
    name = type(image_processor).__name__
    if hasattr(image_processor, "max_patches") and getattr(image_processor, "size", None) is not None:
        cap_image_tiles(image_processor, max_pixels)
    elif getattr(image_processor, "max_image_tiles", None) is not None:
        tile = image_processor.size.height * image_processor.size.width
        image_processor.max_image_tiles = max(1, max_pixels // tile)
        logger.info(
            "max_pixels=%d: at most %d tile(s) per image", max_pixels, image_processor.max_image_tiles
        )
    elif getattr(image_processor, "max_soft_tokens", None) is not None:
        pooled = (image_processor.patch_size * image_processor.pooling_kernel_size) ** 2
        budgets = (70, 140, 280, 560, 1120)  # the budgets Gemma 4's image processor accepts
        fitting = [budget for budget in budgets if budget * pooled <= max_pixels]
        image_processor.max_soft_tokens = fitting[-1] if fitting else budgets[0]
        logger.info(
            "max_pixels=%d: at most %d soft tokens per image", max_pixels, image_processor.max_soft_tokens
        )
    elif name.startswith("Pixtral"):
        image_processor.size = SizeDict(longest_edge=math.isqrt(max_pixels))
        logger.info("max_pixels=%d: images at most %d pixels a side", max_pixels, math.isqrt(max_pixels))
    elif name.startswith("Gemma3"):
        logger.info("%s gives every image the same number of tokens; max_pixels has nothing to cap", name)
    elif getattr(image_processor, "image_grid_pinpoints", None) is not None:
        raise VlsafeError(
            f"max_pixels cannot cap {name}: its anyres grid is set in the model's config as well. Drop "
            "max_pixels and choose max_length for its largest grid (the recipe configs say how many tokens)."
        )
    else:
        raise VlsafeError(f"vlsafe does not know how to cap the resolution of {name}; drop max_pixels.")


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
    family_of(config)  # fail early, before downloading weights, on a model vlsafe cannot tune
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
    [{"role": "user", "content": [{"type": "text", "text": "Hello?"}]}],
)


def _render(processor: ProcessorMixin, messages: list[dict], template: str) -> str:
    """The prompt `template` renders, or the error it raises (Llama 3.2 Vision refuses a system message next to
    an image): two templates that refuse the same prompt alike agree on it."""
    try:
        return processor.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=True
        )
    except TemplateError as error:
        return f"error: {error}"


def _renders_alike(processor: ProcessorMixin, original: str, training: str) -> tuple[str, str] | None:
    """None when both templates render every probe prompt alike, else the first pair that differs."""
    for messages in PROBE_PROMPTS:
        rendered = (_render(processor, messages, original), _render(processor, messages, training))
        if rendered[0] != rendered[1]:
            return rendered
    return None


def _vlsafe_template(name: str) -> str:
    return resources.files("vlsafe").joinpath("templates", name).read_text(encoding="utf-8")


def prepare_training_template(processor: ProcessorMixin, family: Family) -> None:
    """Make the processor's chat template mark assistant tokens with {% generation %} for assistant-only loss.

    A template whose markers already cover each answer and its end-of-turn token is kept. Otherwise vlsafe sets
    its own template for the families that have one (LLaVA-1.5, whose shipped template also leaves out the
    end-of-turn token, InternVL, Qwen3.5, Gemma 4, LLaVA-OneVision, Llama 3.2 Vision, Mistral 3), else TRL swaps
    in its training template (Qwen2.5-VL, Qwen3-VL, SmolVLM, Gemma 3, LLaVA-NeXT). vlsafe's template renders
    the same text as the original, so it is saved with the adapter and inference prompts do not change.
    """
    template = processor.chat_template
    marked = has_generation_markers(template)
    if marked and is_chat_template_stop_token_trained(processor):
        return
    if family.training_template is not None:
        names = (
            (family.training_template,)
            if isinstance(family.training_template, str)
            else family.training_template
        )
        differences = []
        for name in names:
            training = _vlsafe_template(name)
            difference = _renders_alike(processor, template, training)
            if difference is None:
                processor.chat_template = training
                logger.info(
                    "Using vlsafe's %s training chat template %s (assistant-only loss)", family.name, name
                )
                return
            differences.append(difference)
        raise VlsafeError(
            f"This {family.name} checkpoint's chat template renders prompts differently from the template vlsafe "
            f"trains {family.name} models with ({', '.join(names)}): {differences[0][0]!r:.200} vs "
            f"{differences[0][1]!r:.200}. Pass a chat template with {{% generation %}} markers via "
            "`chat_template_path`, or set assistant_only_loss to false."
        )
    if marked:
        logger.warning(
            "The chat template of this %s model marks the answers but not their end-of-turn token: the model may "
            "not learn to stop. Pass a chat template via `chat_template_path` whose {%% generation %%} block ends "
            "with it.",
            family.name,
        )
        return
    try:
        get_training_chat_template(processor)
    except ValueError:
        raise VlsafeError(
            f"The chat template of this {family.name} model has no {{% generation %}} markers and TRL cannot patch it, "
            "so assistant-only loss cannot mask the prompt. Use the model's original chat template, or pass a "
            "template with generation markers via `chat_template_path`."
        ) from None
