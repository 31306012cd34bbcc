"""vlsafe.modeling: family detection, LoRA targets, training templates."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model
from trl.chat_template_utils import has_generation_markers

from vlsafe.errors import VlsafeError
from vlsafe.fixtures import FAMILIES
from vlsafe.modeling import family_of, load_model, load_processor, lora_config, prepare_training_template


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_wraps_every_language_model_linear_and_nothing_else(family: str, tiny_models) -> None:
    model = load_model(str(tiny_models[family]), dtype="float32")
    spec = family_of(model.config.model_type)
    expected = {
        f"base_model.model.{name}"
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and f".{spec.language_model}.layers." in name
    }
    peft_model = get_peft_model(model, lora_config(spec))
    wrapped = {
        name for name, module in peft_model.named_modules() if hasattr(module, "lora_A") and module.lora_A
    }
    layers = model.config.get_text_config().num_hidden_layers
    assert len(wrapped) == 7 * layers and wrapped == expected
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


@pytest.mark.parametrize("family", ["qwen2_5_vl", "idefics3"])
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


@pytest.mark.parametrize("family", ["llava", "internvl"])
def test_a_checkpoint_with_another_prompt_format_keeps_its_template(family: str, tiny_models) -> None:
    """vlsafe's training template replaces the original only where both prompt the model alike."""
    processor = load_processor(str(tiny_models[family]))
    other = processor.chat_template.replace("assistant", "bot").replace("ASSISTANT", "BOT")
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
