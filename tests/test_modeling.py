"""vlsafe.modeling: family detection, LoRA targets, training templates."""

from __future__ import annotations

import pytest
import torch
from jinja2 import TemplateError
from peft import get_peft_model
from trl.chat_template_utils import has_generation_markers

from vlsafe.errors import VlsafeError
from vlsafe.fixtures import FAMILIES
from vlsafe.modeling import family_of, load_model, load_processor, lora_config, prepare_training_template

# The linear layers of the language model's decoder layers that LoRA leaves frozen (all others it adapts): Qwen3.5's
# per-head decay and gate projections of its linear attention, Gemma 4's per-layer-input gate and projection.
FROZEN_LM_LINEARS = {
    "qwen3_5": {"linear_attn.in_proj_a", "linear_attn.in_proj_b"},
    "gemma4": {"per_layer_input_gate", "per_layer_projection"},
}
# Linear layers LoRA adapts in the tiny model's two decoder layers: Qwen3.5's first is a linear-attention layer
# (3 projections + MLP), Llama 3.2 Vision's second a cross-attention one (4 projections + MLP).
LORA_LINEARS = {"qwen3_5": 6 + 7, "mllama": 7 + 7}


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_wraps_the_language_model_s_attention_and_mlp_and_nothing_else(family: str, tiny_models) -> None:
    model = load_model(str(tiny_models[family]), dtype="float32")
    spec = family_of(model.config.model_type)
    layer_linears = {
        name: name.split(".layers.", 1)[1].split(".", 1)[1]  # the path within its decoder layer
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and f".{spec.language_model}.layers." in name
    }
    expected = {
        f"base_model.model.{name}"
        for name, inner in layer_linears.items()
        if inner not in FROZEN_LM_LINEARS.get(family, set())
    }
    assert {inner for inner in layer_linears.values()} >= FROZEN_LM_LINEARS.get(family, set())
    peft_model = get_peft_model(model, lora_config(spec))
    wrapped = {
        name for name, module in peft_model.named_modules() if hasattr(module, "lora_A") and module.lora_A
    }
    layers = model.config.get_text_config().num_hidden_layers
    assert len(wrapped) == LORA_LINEARS.get(family, 7 * layers) and wrapped == expected
    trainable = [name for name, parameter in peft_model.named_parameters() if parameter.requires_grad]
    assert trainable and all("lora_" in name and f".{spec.language_model}." in name for name in trainable)


def test_unknown_family_names_the_supported_ones(tmp_path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(
        VlsafeError, match=r"'gpt2' is not a supported VLM family; vlsafe supports \[.*'llava'"
    ):
        load_model(str(tmp_path))


def test_llava_gets_a_training_template_that_renders_like_the_original(tiny_models) -> None:
    processor = load_processor(str(tiny_models["llava"]))
    original = processor.chat_template
    conversation = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
        {"role": "user", "content": [{"type": "text", "text": "Sure?"}]},
    ]
    before = processor.apply_chat_template(conversation, add_generation_prompt=True)
    prepare_training_template(processor, family_of("llava"))
    assert not has_generation_markers(original) and has_generation_markers(processor.chat_template)
    assert (
        processor.apply_chat_template(conversation, add_generation_prompt=True)
        == before
        == ("USER: <image>\nWhat is it? ASSISTANT: A cat.</s>USER: Sure? ASSISTANT:")
    )


def test_internvl_gets_a_training_template_that_renders_like_the_original(tiny_models) -> None:
    processor = load_processor(str(tiny_models["internvl"]))
    original = processor.chat_template
    conversations = [
        [
            {"role": "system", "content": "Be safe."},
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Why?"}],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
            {"role": "user", "content": "Sure?"},
        ],
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
    ]
    before = [
        processor.apply_chat_template(c, add_generation_prompt=g, tokenize=False)
        for c in conversations
        for g in (False, True)
    ]
    prepare_training_template(processor, family_of("internvl"))
    assert not has_generation_markers(original) and has_generation_markers(processor.chat_template)
    after = [
        processor.apply_chat_template(c, add_generation_prompt=g, tokenize=False)
        for c in conversations
        for g in (False, True)
    ]
    assert after == before
    # The loss covers each answer and its end-of-turn token, nothing of the prompt.
    encoded = processor.apply_chat_template(
        conversations[1], tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = encoded["input_ids"][0], encoded["assistant_masks"][0]
    trained = processor.tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert trained == "Hello.<|im_end|>"


@pytest.mark.parametrize("family", ["qwen2_5_vl", "idefics3", "qwen3_vl", "gemma3", "llava_next"])
def test_trl_known_templates_are_left_for_trl_to_patch(family: str, tiny_models) -> None:
    processor = load_processor(str(tiny_models[family]))
    original = processor.chat_template
    prepare_training_template(processor, family_of(family))
    assert processor.chat_template == original


def test_unpatchable_template_is_explained(tiny_models) -> None:
    processor = load_processor(str(tiny_models["qwen2_5_vl"]))
    processor.chat_template = "{% for m in messages %}{{ m['role'] }}{% endfor %}"
    with pytest.raises(VlsafeError, match="no \\{% generation %\\} markers and TRL cannot patch it"):
        prepare_training_template(processor, family_of("qwen2_5_vl"))


@pytest.mark.parametrize("family", [name for name in FAMILIES if family_of(name).training_template])
def test_a_checkpoint_with_another_prompt_format_keeps_its_template(family: str, tiny_models) -> None:
    """vlsafe's training template replaces the original only where both prompt the model alike."""
    processor = load_processor(str(tiny_models[family]))
    other = processor.chat_template + "{{- ' (a later revision)' }}"
    processor.chat_template = other
    with pytest.raises(VlsafeError, match="renders prompts differently"):
        prepare_training_template(processor, family_of(family))
    assert processor.chat_template == other


def test_max_pixels_caps_qwen_image_tokens(tiny_models) -> None:
    from PIL import Image

    image = Image.new("RGB", (256, 256))
    default = load_processor(str(tiny_models["qwen2_5_vl"]))
    capped = load_processor(str(tiny_models["qwen2_5_vl"]), max_pixels=4 * 28 * 28, min_pixels=4 * 28 * 28)

    def patches(processor) -> int:
        return processor.image_processor(images=[image], return_tensors="pt")["image_grid_thw"].prod().item()

    assert patches(capped) == 16 < patches(default)  # 4 merged tokens = 16 patches of 14 px


def test_max_pixels_caps_internvl_tiles(tiny_models) -> None:
    from PIL import Image

    def tiles(processor, width: int, height: int) -> int:
        return len(processor.image_processor(images=[Image.new("RGB", (width, height))])["pixel_values"])

    tile = 32 * 32  # the tiny InternVL's tile size
    default = load_processor(str(tiny_models["internvl"]))
    assert tiles(default, 64, 64) == 5  # 2x2 tiles + thumbnail (up to 12 tiles)
    for budget in (1, 2, 3, 5):
        capped = load_processor(str(tiny_models["internvl"]), max_pixels=budget * tile)
        assert all(tiles(capped, w, h) <= budget for w, h in ((64, 64), (128, 64), (256, 64)))
    assert tiles(load_processor(str(tiny_models["internvl"]), max_pixels=3 * tile), 128, 64) == 3


# Conversations the training templates must render as the checkpoints' own templates do, answers included.
CONVERSATIONS = [
    [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A red circle."}]},
    ],
    [
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello."}]},
        {"role": "user", "content": [{"type": "text", "text": "How do I pick a lock?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "I cannot help with that."}]},
    ],
    [
        {"role": "system", "content": [{"type": "text", "text": "Be safe."}]},
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Same?"}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "No, they differ."}]},
    ],
]
VLSAFE_TEMPLATES = [name for name in FAMILIES if family_of(name).training_template]


def _rendered(processor, conversation: list[dict], **kwargs) -> str:
    try:
        return processor.apply_chat_template(conversation, tokenize=False, **kwargs)
    except TemplateError as error:  # Llama 3.2 Vision refuses a system message next to an image
        return f"error: {error}"


@pytest.mark.parametrize("family", VLSAFE_TEMPLATES)
def test_vlsafe_s_training_template_renders_like_the_checkpoint_s_and_trains_answer_and_end_of_turn(
    family: str, tiny_models
) -> None:
    processor = load_processor(str(tiny_models[family]))
    cases = [(c, {}) for c in CONVERSATIONS] + [
        (c[:-1], {"add_generation_prompt": True}) for c in CONVERSATIONS
    ]
    before = [_rendered(processor, conversation, **kwargs) for conversation, kwargs in cases]
    prepare_training_template(processor, family_of(family))
    assert has_generation_markers(processor.chat_template)
    assert [_rendered(processor, conversation, **kwargs) for conversation, kwargs in cases] == before
    assert sum(text.startswith("error") for text in before) <= 2  # only Llama 3.2 Vision's system + image
    # The loss covers each answer and its end-of-turn token, nothing of the prompts.
    encoded = processor.apply_chat_template(
        CONVERSATIONS[1], tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = encoded["input_ids"][0], encoded["assistant_masks"][0]
    trained = processor.tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m])
    eos = processor.tokenizer.eos_token
    assert "".join(trained.split()) == "".join(f"Hello.{eos}I cannot help with that.{eos}".split())


def test_a_thinking_qwen3_5_checkpoint_gets_the_thinking_training_template(tiny_models) -> None:
    from vlsafe.fixtures.models import _trl_chat_template

    processor = load_processor(str(tiny_models["qwen3_5"]))
    processor.chat_template = _trl_chat_template("qwen3_5_think")  # what Qwen3.5-4B and larger ship
    prompt = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    before = processor.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    prepare_training_template(processor, family_of("qwen3_5"))
    assert "thinking-on variant" in processor.chat_template
    assert processor.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True) == before
    assert before.endswith("<|im_start|>assistant\n<think>\n")


@pytest.mark.parametrize(
    ("revision", "alike"),
    [("gemma4", True), ("gemma4_v2", False), ("gemma4_v3", False), ("gemma4_v4", True), ("gemma4_v5", True)],
)
def test_gemma4_template_revisions_train_with_vlsafe_s_template_where_they_prompt_alike(
    revision: str, alike: bool, tiny_models
) -> None:
    """Of the five revisions of google/gemma-4-E2B-it's template TRL keeps, the current one (v5) and the two
    nearest (gemma4, v4) prompt like vlsafe's training template; the release revision (v2: blank lines around
    images) and the next one (v3: a system message in parts renders as a Python list) do not, and are refused."""
    from vlsafe.fixtures.models import _trl_chat_template

    processor = load_processor(str(tiny_models["gemma4"]))
    processor.chat_template = _trl_chat_template(revision)
    before = [_rendered(processor, conversation) for conversation in CONVERSATIONS]
    if not alike:
        with pytest.raises(VlsafeError, match="renders prompts differently"):
            prepare_training_template(processor, family_of("gemma4"))
        return
    prepare_training_template(processor, family_of("gemma4"))
    assert has_generation_markers(processor.chat_template)
    assert [_rendered(processor, conversation) for conversation in CONVERSATIONS] == before


def _image_tokens(processor, size: tuple[int, int]) -> int:
    from PIL import Image

    prompt = [{"role": "user", "content": [{"type": "image", "image": Image.new("RGB", size)}]}]
    ids = processor.apply_chat_template(prompt, tokenize=True, return_dict=True)["input_ids"][0]
    return sum(token == processor.image_token_id for token in ids)


def test_max_pixels_caps_qwen3_image_tokens(tiny_models) -> None:
    for family in ("qwen3_vl", "qwen3_5"):
        default = load_processor(str(tiny_models[family]))
        capped = load_processor(str(tiny_models[family]), max_pixels=4 * 32 * 32, min_pixels=4 * 32 * 32)
        assert _image_tokens(capped, (256, 256)) == 4 < _image_tokens(default, (256, 256))


def test_max_pixels_caps_gemma4_soft_tokens_mistral3_sides_and_mllama_tiles(tiny_models) -> None:
    gemma4 = load_processor(str(tiny_models["gemma4"]), max_pixels=140 * (4 * 3) ** 2)
    assert gemma4.image_processor.max_soft_tokens == 140 and 100 < _image_tokens(gemma4, (200, 200)) <= 140
    assert load_processor(str(tiny_models["gemma4"]), max_pixels=1).image_processor.max_soft_tokens == 70
    mistral = load_processor(str(tiny_models["mistral3"]), max_pixels=32 * 32)
    assert (
        _image_tokens(mistral, (256, 256))
        == 2 * 2
        < _image_tokens(load_processor(str(tiny_models["mistral3"])), (256, 256))
    )
    mllama = load_processor(str(tiny_models["mllama"]), max_pixels=2 * 16 * 16)
    assert mllama.image_processor.max_image_tiles == 2
    assert (
        load_processor(str(tiny_models["gemma3"]), max_pixels=100).image_processor.size.height == 32
    )  # fixed


def test_max_pixels_on_an_anyres_model_is_refused_with_the_reason(tiny_models) -> None:
    for family in ("llava_next", "llava_onevision"):
        with pytest.raises(VlsafeError, match="anyres grid is set in the model's config"):
            load_processor(str(tiny_models[family]), max_pixels=32 * 32)
    with pytest.raises(VlsafeError, match="min_pixels applies to Qwen-VL processors only"):
        load_processor(str(tiny_models["gemma4"]), max_pixels=10**6, min_pixels=10)
