"""Every family across vlsafe's capabilities: the capability table (which test backs each cell), full fine-tuning
and the Space per family, QLoRA's refusal without bitsandbytes, the Qwen3.5 mixture-of-experts variant, and a
close variant (another model_type name) recognised from its structure."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import torch
from peft import get_peft_model
from PIL import Image
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    BitsAndBytesConfig,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
)
from trl import SFTConfig

from tests.conftest import REPO
from vlsafe.compare import CompareConfig, Comparer
from vlsafe.errors import VlsafeError
from vlsafe.fixtures import FAMILIES, build_tiny_vlm
from vlsafe.modeling import (
    FAMILIES as MODEL_FAMILIES,
)
from vlsafe.modeling import (
    family_of,
    load_model,
    load_processor,
    lora_config,
    lora_target_modules,
    model_part,
    recognise_family,
    set_trainable_parts,
)
from vlsafe.training import ModelArguments, build_sft_trainer

# Which test backs each capability, for every family (each is parametrised over vlsafe.fixtures.FAMILIES).
CAPABILITY_TESTS = {
    "sft": [
        "tests/test_recipe_sft.py::test_one_sft_step_trains_lora_on_the_language_model_only",
        "tests/test_recipe_sft.py::test_labels_cover_exactly_the_assistant_answers",
        "tests/test_modeling.py::test_lora_wraps_the_language_model_s_attention_and_mlp_and_nothing_else",
    ],
    "mis": [
        "tests/test_recipe_mis.py::test_one_sft_step_on_image_pairs_per_family",
        "tests/test_recipe_mis.py::test_labels_cover_exactly_the_chain_of_thought_over_two_images",
    ],
    "dpo": ["tests/test_preferences.py::test_one_dpo_step_per_family"],
    "evaluation": [
        "tests/test_evaluation.py::test_batched_generation_equals_one_at_a_time",
        "tests/test_evaluation.py::test_text_only_prompts_go_through_every_family",
    ],
    "space": ["tests/test_families.py::test_the_space_compares_base_and_tuned_answers"],
    "full_fine_tuning": ["tests/test_families.py::test_full_fine_tuning_trains_the_language_model_only"],
    "qlora": ["tests/test_families.py::test_qlora_without_bitsandbytes_is_refused_before_loading_weights"],
}
# Families whose checkpoints were trained with one image per prompt: the MIS recipe runs on them (tested above),
# but image pairs are new to them. Every other family's checkpoints take several images.
SINGLE_IMAGE = {"llava", "llava_next", "mllama"}


def _test_functions(path: Path) -> set[str]:
    return {node.name for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.FunctionDef)}


def test_the_capability_table_names_tests_that_exist_and_the_image_capability_of_each_family() -> None:
    for tests in CAPABILITY_TESTS.values():
        for test in tests:
            path, name = test.split("::")
            assert name in _test_functions(REPO / path), test
            assert "FAMILIES" in (REPO / path).read_text(), f"{path} is not parametrised over the families"
    assert {name for name, family in MODEL_FAMILIES.items() if not family.multi_image} == SINGLE_IMAGE


def _chat(image: Image.Image | None = None) -> list[dict]:
    content = ([{"type": "image", "image": image}] if image else []) + [
        {"type": "text", "text": "Describe it."}
    ]
    return [
        {"role": "user", "content": content},
        {"role": "assistant", "content": [{"type": "text", "text": "A red square on white."}]},
    ]


@pytest.mark.parametrize("family", FAMILIES)
def test_full_fine_tuning_trains_the_language_model_only(family: str, tiny_models) -> None:
    model = load_model(str(tiny_models[family]), dtype="float32")
    spec = family_of(model)
    parts = {model_part(spec, name) for name, _ in model.named_parameters()}
    assert parts == {"language_model", "vision_tower", "projector"}  # every parameter has its part
    set_trainable_parts(model, spec, ("language_model",))
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    processor = load_processor(str(tiny_models[family]))
    inputs = processor.apply_chat_template(
        _chat(Image.new("RGB", (64, 64), (200, 30, 30))), tokenize=True, return_dict=True, return_tensors="pt"
    )
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0).step()
    moved = {name for name, parameter in model.named_parameters() if not torch.equal(parameter, before[name])}
    assert moved and {model_part(spec, name) for name in moved} == {"language_model"}
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable == {name for name in before if model_part(spec, name) == "language_model"}


@pytest.mark.parametrize("family", FAMILIES)
def test_qlora_without_bitsandbytes_is_refused_before_loading_weights(
    family: str, tiny_models, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bitsandbytes is not installed here: what is tested is that the quantization config reaches load_model and
    is refused with the fix; 4-bit training itself is not run."""
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(VlsafeError, match=r"load_in_4bit needs bitsandbytes.*vlsafe\[quant\]"):
        load_model(str(tiny_models[family]), quantization_config=BitsAndBytesConfig(load_in_4bit=True))


@pytest.mark.parametrize("family", FAMILIES)
def test_the_space_compares_base_and_tuned_answers(family: str, tiny_models, tmp_path: Path) -> None:
    adapter = tmp_path / "adapter"
    peft_model = get_peft_model(
        load_model(str(tiny_models[family]), dtype="float32"), lora_config(family_of(family))
    )
    with torch.no_grad():  # a trained-looking adapter: lora_B starts at zero, which would change nothing
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 1.0, generator=torch.Generator().manual_seed(0))
    peft_model.save_pretrained(adapter)
    load_processor(str(tiny_models[family])).save_pretrained(adapter)
    comparer = Comparer.load(
        CompareConfig(
            adapter=str(adapter), base_model=str(tiny_models[family]), dtype="float32", max_new_tokens=4
        )
    )
    images = [Image.new("RGB", (64, 64), (200, 30, 30)), Image.new("RGB", (48, 80), (30, 30, 200))]
    answers = [comparer.compare("What is shown?", shown) for shown in (images[:1], images, [])]
    assert all(base.done and tuned.done for base, tuned in answers)
    assert any(base.text != tuned.text for base, tuned in answers)  # the adapter is on for one side only


def test_qwen3_5_moe_gets_lora_on_attention_and_the_shared_expert_and_trains(
    tiny_models, synthetic_vlguard: Path, tmp_path: Path
) -> None:
    from vlsafe.data.vlguard import load_vlguard

    path = build_tiny_vlm("qwen3_5_moe", tmp_path / "moe")
    model = load_model(str(path), dtype="float32")
    spec = family_of(model)
    assert spec.name == "qwen3_5" and model.config.model_type == "qwen3_5_moe"
    peft_model = get_peft_model(model, lora_config(spec))
    wrapped = {
        name.split(".layers.", 1)[1]
        for name, module in peft_model.named_modules()
        if getattr(module, "lora_A", None)
    }
    assert wrapped == {
        "0.linear_attn.in_proj_qkv", "0.linear_attn.in_proj_z", "0.linear_attn.out_proj",
        "1.self_attn.q_proj", "1.self_attn.k_proj", "1.self_attn.v_proj", "1.self_attn.o_proj",
        *(f"{layer}.mlp.shared_expert.{proj}" for layer in (0, 1) for proj in ("gate_proj", "up_proj", "down_proj")),
    }  # fmt: skip  # routed experts (3-D parameters), the router and the shared expert's gate stay frozen

    dataset = load_vlguard(synthetic_vlguard, "train").select(range(4))
    args = SFTConfig(
        output_dir=str(tmp_path / "out"), assistant_only_loss=True, max_length=None, max_steps=1,
        per_device_train_batch_size=2, learning_rate=1e-2, use_cpu=True, report_to="none", save_strategy="no",
    )  # fmt: skip
    trainer = build_sft_trainer(dataset, args, ModelArguments(model_name_or_path=str(path)))
    batch = trainer.data_collator([dict(dataset[i]) for i in range(2)])
    tokenizer = trainer.processing_class.tokenizer
    trained = tokenizer.decode(batch["input_ids"][0][batch["labels"][0] != -100])
    answer = dataset[0]["messages"][-1]["content"][0]["text"]
    assert "".join(trained.split()) == "".join(f"{answer}{tokenizer.eos_token}".split())
    experts = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if ".experts." in n}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert experts and all(torch.equal(value, after[name]) for name, value in experts.items())
    assert any(p.abs().sum() > 0 for n, p in after.items() if "lora_B" in n)


class _VariantConfig(Qwen3VLConfig):
    """A Qwen3-VL fine-tune published under its own model_type, as close variants are."""

    model_type = "vlsafe_test_qwen3_vl_variant"


class _VariantModel(Qwen3VLForConditionalGeneration):
    config_class = _VariantConfig


def test_a_close_variant_under_another_model_type_is_recognised_from_its_structure(
    tiny_models, tmp_path: Path
) -> None:
    AutoConfig.register(_VariantConfig.model_type, _VariantConfig, exist_ok=True)
    AutoModelForImageTextToText.register(_VariantConfig, _VariantModel, exist_ok=True)
    original = AutoModelForImageTextToText.from_pretrained(tiny_models["qwen3_vl"])
    variant = _VariantModel(_VariantConfig(**original.config.to_dict()))
    variant.load_state_dict(original.state_dict())
    variant.save_pretrained(tmp_path / "variant")

    model = load_model(str(tmp_path / "variant"), dtype="float32")
    family = family_of(model)
    assert family.name not in MODEL_FAMILIES and family_of(_VariantConfig.model_type) is family
    assert (family.language_model, family.vision_tower, family.projector) == (
        "model.language_model", "model.visual", "model.visual.merger"
    )  # fmt: skip
    wrapped = {
        name
        for name, module in get_peft_model(model, lora_config(family)).named_modules()
        if getattr(module, "lora_A", None)
    }
    table = {
        name
        for name, module in get_peft_model(
            load_model(str(tiny_models["qwen3_vl"])), lora_config(family_of("qwen3_vl"))
        ).named_modules()
        if getattr(module, "lora_A", None)
    }
    assert wrapped == table and len(wrapped) == 14  # the same layers as the table's Qwen3-VL entry
    parts = set_trainable_parts(load_model(str(tmp_path / "variant")), family, ("language_model",))
    assert 0 < parts.trained_parameters < parts.total_parameters


def test_what_cannot_be_recognised_is_named() -> None:
    class TextOnly(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed_tokens = torch.nn.Embedding(8, 4)
            self.layers = torch.nn.ModuleList([torch.nn.Module()])
            self.layers[0].self_attn = torch.nn.Module()
            self.layers[0].self_attn.q_proj = torch.nn.Linear(4, 4)

        def get_input_embeddings(self) -> torch.nn.Module:
            return self.embed_tokens

    outer = torch.nn.Module()
    outer.language_model = TextOnly()
    outer.get_input_embeddings = outer.language_model.get_input_embeddings
    with pytest.raises(VlsafeError, match="could not find the vision tower .* named one of"):
        recognise_family(outer)
    with pytest.raises(VlsafeError, match="could not find the language model"):
        recognise_family(torch.nn.Linear(2, 2))
    assert "language_model" in lora_target_modules(family_of("llava"))
