"""Tests for the tiny random-weight VLM fixtures: they must load, chat, see images and generate like the real ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor
from trl.chat_template_utils import get_training_chat_template

from vlsafe.fixtures.data import tokenizer_corpus
from vlsafe.fixtures.models import FAMILIES, VARIANTS, _trl_chat_template, build_tiny_vlm
from vlsafe.fixtures.models_llama_mistral import (
    LLAMA_3_2_VISION_CHAT_TEMPLATE,
    MISTRAL_SMALL_3_1_CHAT_TEMPLATE,
)
from vlsafe.fixtures.models_llava_next import LLAVA_ONEVISION_CHAT_TEMPLATE
from vlsafe.modeling import FAMILIES as MODEL_FAMILIES

# Real class names per family: processor, image processor, model.
CLASSES = {
    "llava": ("LlavaProcessor", "CLIPImageProcessor", "LlavaForConditionalGeneration"),
    "qwen2_5_vl": ("Qwen2_5_VLProcessor", "Qwen2VLImageProcessor", "Qwen2_5_VLForConditionalGeneration"),
    "idefics3": ("Idefics3Processor", "Idefics3ImageProcessor", "Idefics3ForConditionalGeneration"),
    "internvl": ("InternVLProcessor", "GotOcr2ImageProcessor", "InternVLForConditionalGeneration"),
    "qwen3_vl": ("Qwen3VLProcessor", "Qwen2VLImageProcessor", "Qwen3VLForConditionalGeneration"),
    "qwen3_5": ("Qwen3VLProcessor", "Qwen2VLImageProcessor", "Qwen3_5ForConditionalGeneration"),
    "gemma3": ("Gemma3Processor", "Gemma3ImageProcessor", "Gemma3ForConditionalGeneration"),
    "gemma4": ("Gemma4Processor", "Gemma4ImageProcessor", "Gemma4ForConditionalGeneration"),
    "llava_onevision": (
        "LlavaOnevisionProcessor",
        "LlavaOnevisionImageProcessor",
        "LlavaOnevisionForConditionalGeneration",
    ),
    "llava_next": ("LlavaNextProcessor", "LlavaNextImageProcessor", "LlavaNextForConditionalGeneration"),
    "mllama": ("MllamaProcessor", "MllamaImageProcessor", "MllamaForConditionalGeneration"),
    "mistral3": ("PixtralProcessor", "PixtralImageProcessor", "Mistral3ForConditionalGeneration"),
}
# End-of-turn token (= eos) and the family's other special tokens, under their real names.
END_OF_TURN = {
    "llava": "</s>",
    "qwen2_5_vl": "<|im_end|>",
    "idefics3": "<end_of_utterance>",
    "internvl": "<|im_end|>",
    "qwen3_vl": "<|im_end|>",
    "qwen3_5": "<|im_end|>",
    "gemma3": "<end_of_turn>",
    "gemma4": "<turn|>",
    "llava_onevision": "<|im_end|>",
    "llava_next": "</s>",
    "mllama": "<|eot_id|>",
    "mistral3": "</s>",
}
SPECIAL_TOKENS = {
    "llava": ("<s>", "</s>", "<unk>", "<pad>", "<image>"),
    "qwen2_5_vl": (
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|image_pad|>",
        "<|video_pad|>",
    ),
    "idefics3": (
        "<|im_start|>",
        "<end_of_utterance>",
        "<image>",
        "<fake_token_around_image>",
        "<global-img>",
        "<row_1_col_1>",
        "<row_6_col_6>",
    ),
    "internvl": (
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<img>",
        "</img>",
        "<IMG_CONTEXT>",
        "<video>",
        "<ref>",
        "</box>",
    ),
    "qwen3_vl": ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>", "<|video_pad|>"),
    "qwen3_5": ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>", "<|vision_end|>"),
    "gemma3": ("<bos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<image_soft_token>"),
    "gemma4": ("<bos>", "<|turn>", "<turn|>", "<|image>", "<|image|>", "<image|>", "<|channel>", "<|video|>"),
    "llava_onevision": ("<|im_start|>", "<|im_end|>", "<image>", "<video>"),
    "llava_next": ("<s>", "</s>", "<unk>", "<pad>", "<image>"),
    "mllama": ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|image|>"),
    "mistral3": ("<s>", "</s>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[IMG]", "[IMG_BREAK]", "[IMG_END]"),
}
# Qwen3 tokens the templates write as text (tool calls, thinking), ordinary added tokens as in the real tokenizers.
PLAIN_TOKENS = {family: ("<think>", "</think>", "<tool_call>") for family in ("qwen3_vl", "qwen3_5")}
# What the chat template writes for one image, and how many image tokens the processor expands it to.
PLACEHOLDER = {
    "llava": "<image>\n",
    "qwen2_5_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "idefics3": "<image>",
    "internvl": "<IMG_CONTEXT>\n",
    "qwen3_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "qwen3_5": "<|vision_start|><|image_pad|><|vision_end|>",
    "gemma3": "<start_of_image>",
    "gemma4": "<|image|>",
    "llava_onevision": "<image>\n",
    "llava_next": "<image>\n",
    "mllama": "<|image|>",
    "mistral3": "[IMG]",
}
# InternVL tiles a 64x64 image into 2x2 tiles of 32 px plus a thumbnail, 4 tokens each; LLaVA-NeXT/OneVision
# give a base tile and one grid tile (16 features each) and a newline per grid row; Gemma 4 resizes to its
# least budget of 70 soft tokens (8x8); Llama 3.2 Vision keeps one <|image|> (the image goes in by
# cross-attention); Mistral 3 counts its [IMG] tokens (4 rows of 4), not the row breaks.
IMAGE_TOKENS_64PX = {
    "llava": 16,
    "qwen2_5_vl": 9,
    "idefics3": 16,
    "internvl": 20,
    "qwen3_vl": 16,
    "qwen3_5": 16,
    "gemma3": 16,
    "gemma4": 64,
    "llava_onevision": 36,
    "llava_next": 36,
    "mllama": 1,
    "mistral3": 16,
}
# Families whose tiny model ships its checkpoints' template as TRL keeps it, which TRL swaps for a training one.
TRL_TEMPLATES = ("qwen2_5_vl", "idefics3", "qwen3_vl", "qwen3_5", "gemma3", "llava_next")
# The chat template each tiny model ships, and where it comes from (byte-identical copies of the checkpoints').
SHIPPED_TEMPLATES = {
    "qwen2_5_vl": _trl_chat_template("qwen2_5_vl"),
    "idefics3": _trl_chat_template("smolvlm"),
    "qwen3_vl": _trl_chat_template("qwen3_vl"),
    "qwen3_5": _trl_chat_template("qwen3_5_nothink"),
    "gemma3": _trl_chat_template("gemma3"),
    "gemma4": _trl_chat_template("gemma4_v5"),
    "llava_next": _trl_chat_template("llava_next"),
    "llava_onevision": LLAVA_ONEVISION_CHAT_TEMPLATE,
    "mllama": LLAMA_3_2_VISION_CHAT_TEMPLATE,
    "mistral3": MISTRAL_SMALL_3_1_CHAT_TEMPLATE,
}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each family built once (seed 0) for the whole module."""
    root = tmp_path_factory.mktemp("tiny_vlms")
    return {family: build_tiny_vlm(family, root / family, seed=0) for family in FAMILIES}


@pytest.fixture(scope="module")
def loaded(built: dict[str, Path]) -> dict[str, tuple]:
    """Each family reloaded through the Auto classes only, as downstream code does."""
    return {
        family: (AutoModelForImageTextToText.from_pretrained(path), AutoProcessor.from_pretrained(path))
        for family, path in built.items()
    }


def _image_prompt(image: Image.Image, text: str = "What color is the circle?") -> list[dict]:
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}]


def _inputs(processor, image: Image.Image) -> dict[str, torch.Tensor]:
    return processor.apply_chat_template(
        _image_prompt(image),
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )


@pytest.fixture
def image() -> Image.Image:
    return Image.new("RGB", (64, 64), (200, 40, 40))


@pytest.mark.parametrize("family", FAMILIES)
def test_reloads_with_real_classes_and_is_tiny(family: str, built: dict[str, Path], loaded: dict) -> None:
    model, processor = loaded[family]
    assert (
        type(processor).__name__,
        type(processor.image_processor).__name__,
        type(model).__name__,
    ) == CLASSES[family]
    assert (built[family] / "model.safetensors").stat().st_size < 10_000_000
    assert sum(p.numel() for p in model.parameters()) < 1_000_000


@pytest.mark.parametrize("family", FAMILIES)
def test_special_tokens_and_eos(family: str, loaded: dict) -> None:
    model, processor = loaded[family]
    tokenizer = processor.tokenizer
    for token in SPECIAL_TOKENS[family] + PLAIN_TOKENS.get(family, ()):
        assert tokenizer.encode(token, add_special_tokens=False) == [
            tokenizer.convert_tokens_to_ids(token)
        ], token
    assert not set(PLAIN_TOKENS.get(family, ())) & set(tokenizer.all_special_tokens)
    eos_id = tokenizer.convert_tokens_to_ids(END_OF_TURN[family])
    assert tokenizer.eos_token == END_OF_TURN[family]
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != eos_id
    assert model.generation_config.eos_token_id == eos_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    assert model.config.text_config.vocab_size == len(tokenizer)

    # The template closes an assistant turn with the end-of-turn token, right after the answer.
    chat = [
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello there."}]},
    ]
    ids = processor.apply_chat_template(chat, tokenize=True, return_dict=True)["input_ids"][0]
    end = max(i for i, token_id in enumerate(ids) if token_id == eos_id)
    assert processor.tokenizer.decode(ids[:end]).endswith("Hello there.")


@pytest.mark.parametrize("family", FAMILIES)
def test_tokenizer_is_trained_on_the_corpus(family: str, loaded: dict) -> None:
    tokenizer = loaded[family][1].tokenizer
    sentence = max(tokenizer_corpus(), key=len)
    ids = tokenizer.encode(sentence, add_special_tokens=False)
    assert len(ids) < len(sentence) / 3  # learned merges, not bytes
    assert tokenizer.decode(ids) == sentence
    assert 300 < len(tokenizer) < 5000


@pytest.mark.parametrize("family", FAMILIES)
def test_image_placeholder_is_expanded_to_the_model_image_tokens(
    family: str, loaded: dict, image: Image.Image
) -> None:
    model, processor = loaded[family]
    prompt = processor.apply_chat_template(_image_prompt(image), add_generation_prompt=True, tokenize=False)
    assert prompt.count(PLACEHOLDER[family]) == 1

    inputs = _inputs(processor, image)
    n_image_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert n_image_tokens == IMAGE_TOKENS_64PX[family]
    with torch.no_grad():
        logits = model(**inputs).logits  # the model checks its image features fill exactly these tokens
    assert logits.shape == (1, inputs["input_ids"].shape[1], len(processor.tokenizer))
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_is_deterministic_and_stops_at_end_of_turn(
    family: str, loaded: dict, image: Image.Image
) -> None:
    model, processor = loaded[family]
    inputs = _inputs(processor, image)
    prompt_len = inputs["input_ids"].shape[1]
    first = model.generate(**inputs, max_new_tokens=5)
    assert torch.equal(first, model.generate(**inputs, max_new_tokens=5))
    assert torch.equal(first[:, :prompt_len], inputs["input_ids"])
    assert 1 <= first.shape[1] - prompt_len <= 5
    assert isinstance(processor.decode(first[0, prompt_len:], skip_special_tokens=True), str)

    # Make the end-of-turn token overwhelmingly likely: generation must stop right after it.
    eos_id = processor.tokenizer.convert_tokens_to_ids(END_OF_TURN[family])
    stopped = model.generate(**inputs, max_new_tokens=5, sequence_bias={(eos_id,): 1e4})
    assert stopped[0, prompt_len:].tolist() == [eos_id]


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_weights(family: str, built: dict[str, Path], tmp_path: Path) -> None:
    reference = load_file(built[family] / "model.safetensors")
    same = load_file(build_tiny_vlm(family, tmp_path / "same", seed=0) / "model.safetensors")
    other = load_file(build_tiny_vlm(family, tmp_path / "other", seed=1) / "model.safetensors")
    assert reference.keys() == same.keys() == other.keys()
    assert all(torch.equal(reference[name], same[name]) for name in reference)
    assert not all(torch.equal(reference[name], other[name]) for name in reference)
    assert (built[family] / "tokenizer.json").read_bytes() == (
        tmp_path / "same" / "tokenizer.json"
    ).read_bytes()


def test_unknown_family_raises_naming_known_families(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as error:
        build_tiny_vlm("gpt4v", tmp_path)
    assert "gpt4v" in str(error.value)
    assert all(family in str(error.value) for family in FAMILIES)
    assert not any(tmp_path.iterdir())


def test_there_is_one_tiny_model_per_family_of_vlsafe_s_table() -> None:
    assert FAMILIES == tuple(MODEL_FAMILIES)
    assert all(variant in MODEL_FAMILIES["qwen3_5"].types for variant in VARIANTS)


@pytest.mark.parametrize("family", sorted(SHIPPED_TEMPLATES))
def test_the_shipped_chat_template_is_the_checkpoints_byte_for_byte(
    family: str, built: dict[str, Path]
) -> None:
    saved = (built[family] / "chat_template.jinja").read_bytes()
    assert saved == SHIPPED_TEMPLATES[family].encode("utf-8")


@pytest.mark.parametrize("family", TRL_TEMPLATES)
def test_trl_recognizes_the_original_templates(family: str, loaded: dict) -> None:
    processor = loaded[family][1]
    training_template = get_training_chat_template(processor)
    assert training_template is not None and "{% generation %}" in training_template


def test_llava_template_has_llava_1_5_shape(loaded: dict) -> None:
    processor = loaded["llava"][1]
    chat = [
        {"role": "system", "content": "Be safe."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
        {"role": "assistant", "content": "A circle."},
        {"role": "user", "content": "Is it red?"},
    ]
    rendered = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert (
        rendered
        == "Be safe. USER: <image>\nWhat is this? ASSISTANT: A circle.</s>USER: Is it red? ASSISTANT:"
    )
    no_prompt = processor.apply_chat_template(chat[1:3], tokenize=False)
    assert no_prompt == "USER: <image>\nWhat is this? ASSISTANT: A circle.</s>"
    # The tokenizer adds <s> in front, as LLaVA's Llama tokenizer does.
    ids = processor.apply_chat_template(chat[3:], add_generation_prompt=True, tokenize=True, return_dict=True)
    assert ids["input_ids"][0][0] == processor.tokenizer.bos_token_id


def test_internvl_template_is_the_hf_checkpoints_and_each_image_is_wrapped(
    loaded: dict, built: dict[str, Path], image: Image.Image
) -> None:
    model, processor = loaded["internvl"]
    # OpenGVLab/InternVL3-*-hf ship this template as a 481-byte chat_template.jinja.
    assert (built["internvl"] / "chat_template.jinja").stat().st_size == 481
    chat = [
        {"role": "system", "content": "Be safe."},
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Same?"}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "No."}]},
        {"role": "user", "content": "Why?"},
    ]
    assert processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) == (
        "<|im_start|>system\nBe safe.<|im_end|>\n"
        "<|im_start|>user\n<IMG_CONTEXT>\n<IMG_CONTEXT>\nSame?<|im_end|>\n"
        "<|im_start|>assistant\nNo.<|im_end|>\n<|im_start|>user\nWhy?<|im_end|>\n<|im_start|>assistant\n"
    )
    # Two images of 5 tiles each: pixel_values stacks the 10 tiles, and each image's tokens sit in <img>...</img>.
    pair = [
        {"role": "user", "content": [*[{"type": "image", "image": image}] * 2, {"type": "text", "text": "?"}]}
    ]
    inputs = processor.apply_chat_template(
        pair, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    assert inputs["pixel_values"].shape[0] == 10
    text = processor.tokenizer.decode(inputs["input_ids"][0])
    assert text.count("<img>" + "<IMG_CONTEXT>" * IMAGE_TOKENS_64PX["internvl"] + "</img>") == 2
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).logits).all()


def test_custom_corpus_trains_the_tokenizer(tmp_path: Path) -> None:
    corpus = ["zebra quokka axolotl"] * 50
    processor = AutoProcessor.from_pretrained(build_tiny_vlm("idefics3", tmp_path, corpus=corpus))
    assert processor.tokenizer.tokenize(" axolotl") == ["Ġaxolotl"]
