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


def test_max_pixels_caps_qwen_image_tokens(tiny_models) -> None:
    from PIL import Image

    image = Image.new("RGB", (256, 256))
    default = load_processor(str(tiny_models["qwen2_5_vl"]))
    capped = load_processor(str(tiny_models["qwen2_5_vl"]), max_pixels=4 * 28 * 28, min_pixels=4 * 28 * 28)

    def patches(processor) -> int:
        return processor.image_processor(images=[image], return_tensors="pt")["image_grid_thw"].prod().item()

    assert patches(capped) == 16 < patches(default)  # 4 merged tokens = 16 patches of 14 px
