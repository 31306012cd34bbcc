"""recipes/sft_mis.py end to end per tiny family (two images per sample), the mixing ratio, the length filter
in the recipe, and the loss mask over two images."""
# ruff: noqa: F811

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from safetensors.torch import load_file
from trl import SFTConfig

from tests.conftest import REPO, run_recipe

# Session fixtures shared with test_data_mis (imported so pytest finds them; parameters reuse their names).
from tests.test_data_mis import synthetic_mis_general, synthetic_mis_train  # noqa: F401
from vlsafe.data.mis import load_mis_train
from vlsafe.data.mixture import mix_with_helpfulness
from vlsafe.data.sharegpt import load_sharegpt
from vlsafe.fixtures import FAMILIES
from vlsafe.modeling import FAMILIES as MODEL_FAMILIES
from vlsafe.training import ModelArguments, build_sft_trainer

# Where 150 tokens would not cut through the mix (its samples are 178-261 tokens for gemma4, whose image processor
# gives each image at least ~66 soft tokens; 47-130 for mllama, one <|image|> token per image): a length inside
# the family's range, so some samples are left out and some train.
MIS_MAX_LENGTH = {"gemma4": 250, "mllama": 120}


def recipe_argv(model: Path, mis_train: Path, general: Path, out: Path, *extra: str) -> list[str]:
    """The tiny YAML config + CLI overrides: one step of batch 2, general share 0.25."""
    return [
        "--config", str(REPO / "recipes/configs/tiny/sft_mis.yaml"),
        "--model_name_or_path", str(model), "--dataset", str(mis_train),
        "--general_dataset", str(general / "train.json"), "--general_ratio", "0.25",
        "--output_dir", str(out), "--max_steps", "1", "--per_device_train_batch_size", "2",
        "--logging_steps", "1", "--warmup_steps", "0",
        *extra,
    ]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_one_sft_step_on_image_pairs_per_family(
    family: str,
    tiny_models,
    synthetic_mis_train: Path,
    synthetic_mis_general: Path,
    tmp_path: Path,
    capsys,
    caplog,
) -> None:
    out = tmp_path / "out"
    # 24 MIS samples at ratio 0.25 draw 8 general ones; max_length cuts through the longest samples.
    max_length = MIS_MAX_LENGTH.get(family, 150)
    argv = recipe_argv(
        tiny_models[family], synthetic_mis_train, synthetic_mis_general, out, "--max_length", str(max_length)
    )
    log = run_recipe("sft_mis", argv, family, tmp_path, capsys, caplog)
    assert "'loss'" in log and "Mixture: 24 safety + 8 helpfulness samples" in log
    dropped = re.search(rf"Left out (\d+) of 32 samples longer than max_length={max_length} tokens", log)
    assert dropped and 0 < int(dropped[1]) < 32, log[-3000:]

    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["recipe"] == "sft_mis" and summary["training"]["max_length"] == max_length
    assert summary["samples"]["total"] == 32 - int(dropped[1])
    assert [d["role"] for d in summary["datasets"]] == ["safety", "helpfulness"]
    assert summary["datasets"][1]["samples"] == 8
    adapter = load_file(out / "adapter_model.safetensors")
    language_model = MODEL_FAMILIES[family].language_model
    assert adapter and all(f".{language_model}.layers." in name for name in adapter)
    assert any(tensor.abs().sum() > 0 for name, tensor in adapter.items() if "lora_B" in name)


@pytest.mark.parametrize("family", FAMILIES)
def test_labels_cover_exactly_the_chain_of_thought_over_two_images(
    family: str, tiny_models, synthetic_mis_train: Path, synthetic_mis_general: Path, tmp_path: Path
) -> None:
    dataset = mix_with_helpfulness(
        load_mis_train(synthetic_mis_train), load_sharegpt(synthetic_mis_general / "train.json"), 4, seed=0
    )
    args = SFTConfig(
        output_dir=str(tmp_path), assistant_only_loss=True, max_length=None, use_cpu=True, report_to="none"
    )
    trainer = build_sft_trainer(dataset, args, ModelArguments(model_name_or_path=str(tiny_models[family])))
    rows = [dict(dataset[i]) for i in range(4)]
    batch = trainer.data_collator([dict(row) for row in rows])
    tokenizer = trainer.processing_class.tokenizer
    image_id = tokenizer.convert_tokens_to_ids(trainer.processing_class.image_token)
    per_image = []
    for row, ids, labels in zip(rows, batch["input_ids"], batch["labels"], strict=True):
        answer = row["messages"][-1]["content"][0]["text"]
        trained = tokenizer.decode(ids[labels != -100])
        assert "".join(trained.split()) == "".join(f"{answer}{tokenizer.eos_token}".split())
        assert len(row["images"]) == 2 and not (labels == image_id).any()
        per_image.append(int((ids == image_id).sum()) / 2)
    assert all(count > 0 and count.is_integer() for count in per_image)  # both images were expanded
