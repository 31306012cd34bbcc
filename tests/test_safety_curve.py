"""vlsafe.safety_curve: held-out prompts, the callback inside real training runs (single process and DDP). The
curve of the demo (ASR falls while training) is tested with the demo, tests/test_demo.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import get_peft_model_state_dict
from transformers import TrainerCallback, set_seed
from trl import SFTConfig

from tests.conftest import REPO, run_checked, torchrun
from vlsafe.data.mixture import mix_with_helpfulness
from vlsafe.data.sharegpt import load_sharegpt
from vlsafe.data.vlguard import load_vlguard
from vlsafe.errors import DataError
from vlsafe.safety_curve import (
    ASR,
    OVER_REFUSAL,
    PLOT,
    SafetyCurveArguments,
    add_safety_curve,
    benchmark_prompts,
    curve_metrics,
    hold_out_prompts,
    is_harmful,
)
from vlsafe.training import ImageDataArguments, ModelArguments, build_sft_trainer, training_summary


@pytest.fixture(scope="module")
def training_data(synthetic_vlguard: Path, synthetic_helpful: Path):
    """VLGuard train (36 samples of 24 images) mixed with 4 helpfulness conversations."""
    return mix_with_helpfulness(
        load_vlguard(synthetic_vlguard, "train"), load_sharegpt(synthetic_helpful), 4, seed=0
    )


def test_held_out_prompts_leave_the_training_set_with_their_images(training_data) -> None:
    train, prompts = hold_out_prompts(training_data, 5, 4, seed=1)
    assert [p["harmful"] for p in prompts] == [True] * 5 + [False] * 4
    held = {p["id"] for p in prompts}
    assert not held & set(train["id"])  # never trained on, nor another sample of the same image
    assert len(train) <= len(training_data) - len(prompts)  # whole images leave, not only the chosen samples
    for prompt in prompts:  # one user turn, its images, no answer
        assert [m["role"] for m in prompt["messages"]] == ["user"] and len(prompt["images"]) == 1
    assert all(is_harmful(p["kind"]) == p["harmful"] for p in prompts)
    again_train, again = hold_out_prompts(training_data, 5, 4, seed=1)  # seeded: the same split
    assert [p["id"] for p in again] == [p["id"] for p in prompts] and again_train["id"] == train["id"]
    with pytest.raises(DataError, match="lower safety_curve_harmful"):
        hold_out_prompts(training_data, 500, 4, seed=1)
    with pytest.raises(DataError, match="positive number"):
        hold_out_prompts(training_data, 0, 0, seed=1)


def test_metrics_follow_the_evaluation_conventions() -> None:
    labels = ["answered", "refused", "empty", "refused", "answered"]
    harmful = [True, True, True, False, False]
    assert curve_metrics(labels, harmful) == {ASR: 1 / 3, OVER_REFUSAL: 1 / 2}  # empty: neither
    assert curve_metrics(["refused"], [True]) == {ASR: 0.0}  # no safe prompts: no over-refusal


class Recorder(TrainerCallback):
    """What every `report_to` integration receives: the logs passed to on_log, with their step."""

    def __init__(self):
        self.logs: list[tuple[int, dict]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append((state.global_step, dict(logs or {})))


def _train(model: Path, dataset, out: Path, prompts=None, benchmark: str | None = None) -> tuple:
    set_seed(0)  # LoRA's initial weights: the same in both runs
    args = SFTConfig(
        output_dir=str(out), max_steps=4, per_device_train_batch_size=4, learning_rate=3e-3, logging_steps=1,
        save_strategy="no", report_to="none", use_cpu=True, bf16=False, seed=0, max_length=None,
        assistant_only_loss=True, gradient_checkpointing=True, dataloader_num_workers=0,
    )  # fmt: skip
    model_args = ModelArguments(
        model_name_or_path=str(model), dtype="float32", lora_r=8, lora_alpha=16, lora_dropout=0.2
    )
    trainer = build_sft_trainer(dataset, args, model_args, ImageDataArguments(auto_speed=False))
    curve_args = SafetyCurveArguments(
        safety_curve=True,
        safety_curve_steps=2,
        safety_curve_max_new_tokens=8,
        safety_curve_batch_size=8,
        safety_curve_benchmark=benchmark,
    )
    callback = add_safety_curve(trainer, prompts, curve_args)
    recorder = Recorder()
    trainer.add_callback(recorder)
    trainer.train()
    weights = {k: v.detach().clone() for k, v in get_peft_model_state_dict(trainer.model).items()}
    return trainer, callback, recorder, weights


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl"])
def test_measuring_does_not_change_training(
    family: str, tiny_models, training_data, synthetic_vlguard: Path, tmp_path: Path
) -> None:
    """With dropout and gradient checkpointing on, a run that measures its safety curve ends with exactly the
    weights of one that does not: generation switched to eval mode and back, and left the random streams alone."""
    prompts = benchmark_prompts(
        "vlguard", str(synthetic_vlguard), 3, 2, seed=0
    )  # nothing held out: same data
    plain = _train(tiny_models[family], training_data, tmp_path / "plain")
    trainer, callback, recorder, weights = _train(
        tiny_models[family], training_data, tmp_path / "curve", prompts, "vlguard"
    )
    assert weights.keys() == plain[3].keys()
    for name, tensor in weights.items():
        torch.testing.assert_close(tensor, plain[3][name], rtol=0, atol=0, msg=name)
    measured = [(step, logs) for step, logs in recorder.logs if ASR in logs]
    assert [step for step, _ in measured] == [0, 2, 4]  # at the start, every 2 steps, the last one once
    assert all(OVER_REFUSAL in logs and 0 <= logs[ASR] <= 1 for _, logs in measured)
    assert any("loss" in logs for _, logs in recorder.logs)  # beside the loss, in the same stream
    summary = training_summary(trainer)["safety_curve"]
    assert summary["prompts"] == {"harmful": 3, "safe": 2} and len(summary["points"]) == 3
    assert summary["source"].startswith("benchmark vlguard")
    assert (tmp_path / "curve" / PLOT).stat().st_size > 5_000 and callback.every == 2


@pytest.mark.slow
def test_curve_under_ddp(
    tiny_models, synthetic_vlguard: Path, synthetic_helpful: Path, tmp_path: Path
) -> None:
    """Two CPU processes (torchrun, as on GPUs with accelerate launch --multi_gpu): each answers its share of an
    uneven number of prompts, the verdicts are gathered, training goes on, and the main process writes the curve."""
    run_checked(
        [*torchrun(2), str(REPO / "recipes/sft_vlguard.py"),
         "--config", str(REPO / "recipes/configs/tiny/sft_vlguard.yaml"), "--model_name_or_path", str(tiny_models["llava"]),
         "--dataset", str(synthetic_vlguard), "--helpful_dataset", str(synthetic_helpful), "--helpful_samples", "4",
         "--output_dir", "ddp", "--max_steps", "2", "--per_device_train_batch_size", "2", "--safety_curve", "true", "--safety_curve_harmful", "3",
         "--safety_curve_safe", "2", "--safety_curve_steps", "1", "--safety_curve_max_new_tokens", "8"],
        tmp_path,
        env={"ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    summary = json.loads((tmp_path / "ddp/training_summary.json").read_text())
    assert summary["training"]["world_size"] == 2
    curve = summary["safety_curve"]
    assert curve["prompts"] == {"harmful": 3, "safe": 2}
    assert [point["step"] for point in curve["points"]] == [0, 1, 2]
    for point in curve["points"]:  # verdicts of all 5 prompts gathered: ASR in thirds, over-refusal in halves
        assert min(abs(point["asr"] - k / 3) for k in range(4)) < 1e-9 and point["over_refusal"] in (
            0,
            0.5,
            1,
        )
    assert (tmp_path / "ddp" / PLOT).is_file()
