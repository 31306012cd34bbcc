"""recipes/sft_vlguard.py end to end per tiny family, and the loss mask of the trainer it builds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor
from trl import SFTConfig

from tests.conftest import REPO, run_recipe
from vlsafe.data.mixture import mix_with_helpfulness
from vlsafe.data.sharegpt import load_sharegpt
from vlsafe.data.vlguard import load_vlguard
from vlsafe.fixtures import FAMILIES
from vlsafe.modeling import FAMILIES as MODEL_FAMILIES
from vlsafe.training import ModelArguments, build_sft_trainer


def recipe_argv(model: Path, vlguard: Path, helpful: Path, out: Path) -> list[str]:
    """The tiny YAML config + CLI overrides: one step of batch 2 on VLGuard + 4 helpfulness samples."""
    return [
        "--config", str(REPO / "recipes/configs/tiny/sft_vlguard.yaml"), "--model_name_or_path", str(model),
        "--dataset", str(vlguard), "--helpful_dataset", str(helpful), "--helpful_samples", "4",
        "--output_dir", str(out), "--max_steps", "1", "--per_device_train_batch_size", "2",
        "--logging_steps", "1", "--warmup_steps", "0",
    ]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_one_sft_step_trains_lora_on_the_language_model_only(
    family: str, tiny_models, synthetic_vlguard: Path, synthetic_helpful: Path, tmp_path: Path, capsys, caplog
) -> None:
    out = tmp_path / "out"
    argv = recipe_argv(tiny_models[family], synthetic_vlguard, synthetic_helpful, out)
    assert "'loss'" in run_recipe("sft_vlguard", argv, family, tmp_path, capsys, caplog)

    adapter = load_file(out / "adapter_model.safetensors")
    language_model = MODEL_FAMILIES[family].language_model
    assert adapter and all(f".{language_model}.layers." in name for name in adapter), sorted(adapter)[:5]
    assert not any(
        part in name for name in adapter for part in ("vision", "visual", "projector", "connector")
    )
    # lora_B starts at zero: after one optimizer step it must have moved.
    assert any(tensor.abs().sum() > 0 for name, tensor in adapter.items() if "lora_B" in name)

    base = AutoModelForImageTextToText.from_pretrained(tiny_models[family])
    tuned = AutoModelForImageTextToText.from_pretrained(
        out
    )  # adapter folder -> base + LoRA via PEFT integration
    assert tuned.active_adapters() == ["default"]
    base_vision = {
        n: p for n, p in base.named_parameters() if "lora" not in n and ("vision" in n or "visual" in n)
    }
    tuned_params = dict(tuned.named_parameters())
    assert base_vision and all(torch.equal(p, tuned_params[n]) for n, p in base_vision.items())
    processor = AutoProcessor.from_pretrained(out)
    assert type(processor).__name__ == type(AutoProcessor.from_pretrained(tiny_models[family])).__name__
    assert processor.chat_template


@pytest.fixture(scope="module")
def trainers(tiny_models, synthetic_vlguard: Path, synthetic_helpful: Path, tmp_path_factory) -> dict:
    """The trainer the recipe builds, per family, without training."""
    dataset = mix_with_helpfulness(
        load_vlguard(synthetic_vlguard, "train"), load_sharegpt(synthetic_helpful), 4, seed=0
    )
    built = {}
    for family in FAMILIES:
        args = SFTConfig(
            output_dir=str(tmp_path_factory.mktemp(family)),
            assistant_only_loss=True,
            max_length=None,
            bf16=False,
            use_cpu=True,
            report_to="none",
        )
        built[family] = (
            build_sft_trainer(dataset, args, ModelArguments(model_name_or_path=str(tiny_models[family]))),
            dataset,
        )
    return built


@pytest.mark.parametrize("family", FAMILIES)
def test_labels_cover_exactly_the_assistant_answers(family: str, trainers) -> None:
    trainer, dataset = trainers[family]
    rows = [dataset[i] for i in range(4)]
    batch = trainer.data_collator([dict(row) for row in rows])
    tokenizer = trainer.processing_class.tokenizer
    eos = tokenizer.eos_token
    for row, ids, labels in zip(rows, batch["input_ids"], batch["labels"], strict=True):
        trained = tokenizer.decode(ids[labels != -100])
        answers = [m["content"][0]["text"] for m in row["messages"] if m["role"] == "assistant"]
        # Every answer and its end-of-turn token carry loss, in order; nothing else but whitespace does.
        expected = "".join(f"{answer}{eos}" for answer in answers)
        assert "".join(trained.split()) == "".join(expected.split()), (trained, expected)
        image_token = getattr(trainer.processing_class, "image_token", None)
        if image_token is not None:
            image_id = tokenizer.convert_tokens_to_ids(image_token)
            assert (ids == image_id).any() and not (labels == image_id).any()
