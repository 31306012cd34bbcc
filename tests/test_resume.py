"""A training run killed mid-way (SIGKILL of `accelerate launch`) and restarted with the same command resumes
from its last checkpoint and ends with the same adapter as an uninterrupted run."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO, run_checked


def _command(tiny_models, vlguard: Path, helpful: Path, out: Path) -> list[str]:
    return [
        str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file", str(REPO / "recipes/accelerate/cpu.yaml"),
        str(REPO / "recipes/sft_vlguard.py"), "--config", str(REPO / "recipes/configs/tiny/sft_vlguard.yaml"),
        "--model_name_or_path", str(tiny_models["llava"]), "--dataset", str(vlguard), "--helpful_dataset", str(helpful),
        "--helpful_samples", "4", "--output_dir", str(out), "--max_steps", "12", "--per_device_train_batch_size", "2",
        "--save_strategy", "steps", "--save_steps", "2", "--warmup_steps", "0", "--logging_steps", "1",
    ]  # fmt: skip


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_adapter(
    tiny_models, synthetic_vlguard, synthetic_helpful, tmp_path
) -> None:
    straight = tmp_path / "straight"
    run_checked(_command(tiny_models, synthetic_vlguard, synthetic_helpful, straight), tmp_path)

    interrupted = tmp_path / "interrupted"
    command = _command(tiny_models, synthetic_vlguard, synthetic_helpful, interrupted)
    process = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 300
    while not (
        interrupted / "checkpoint-2" / "trainer_state.json"
    ).is_file():  # a complete checkpoint, then kill
        assert process.poll() is None and time.monotonic() < deadline, (
            "the run ended or stalled before checkpoint-2"
        )
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (interrupted / "adapter_model.safetensors").exists()
    cut_short = interrupted / "checkpoint-100"  # a checkpoint whose writing the kill interrupted
    cut_short.mkdir()
    (cut_short / "adapter_model.safetensors").write_bytes(b"partial")

    result = run_checked(command, tmp_path)  # the same command again
    log = result.stdout + result.stderr
    assert "Passing over" in log and "checkpoint-100" in log
    assert "Resuming the interrupted run from" in log
    expected, resumed = (
        load_file(folder / "adapter_model.safetensors") for folder in (straight, interrupted)
    )
    assert expected.keys() == resumed.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-4, atol=1e-6, msg=name)


def test_preference_pair_generation_resumes_without_redoing_or_dropping(
    tiny_models, synthetic_vlguard: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The DPO recipe's on-policy answers: after an interruption (a store cut mid-line), the re-run generates
    exactly the missing prompts, and every prompt ends with one answer equal to an uninterrupted run's."""
    import importlib.util

    from trl import DPOConfig, ModelConfig

    import vlsafe.evaluation.generate as generate
    from vlsafe.data.vlguard import load_vlguard
    from vlsafe.modeling import load_model, load_processor

    spec = importlib.util.spec_from_file_location("dpo_safety", REPO / "recipes/dpo_safety.py")
    recipe = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "dpo_safety", recipe)  # its dataclasses look their module up
    spec.loader.exec_module(recipe)
    generated: list[int] = []
    real_batch = generate._generate_batch

    def counting_batch(model, processor, prompts, max_new_tokens):  # a spy: the real generation runs
        generated.append(len(prompts))
        return real_batch(model, processor, prompts, max_new_tokens)

    monkeypatch.setattr(generate, "_generate_batch", counting_batch)
    model = load_model(str(tiny_models["llava"]), dtype="float32")
    processor = load_processor(str(tiny_models["llava"]))
    rows = list(load_vlguard(synthetic_vlguard, "train"))[:10]
    data_args = recipe.DPOSafetyArguments(
        dataset=str(synthetic_vlguard), generation_batch_size=4, generation_max_new_tokens=6
    )
    model_args = ModelConfig(model_name_or_path=str(tiny_models["llava"]))

    def answers(out: Path) -> list[str]:
        args = DPOConfig(output_dir=str(out), use_cpu=True, bf16=False, report_to="none")
        return recipe.policy_answers(model, processor, rows, data_args, args, model_args)

    uninterrupted = answers(tmp_path / "once")
    assert sum(generated) == 10
    shard = tmp_path / "once/pair_generations/policy.rank0.jsonl"
    lines = shard.read_text().splitlines()
    shard.write_text("\n".join(lines[:7]) + "\n" + lines[7][:20])  # header + 6 records + one cut short
    generated.clear()
    assert answers(tmp_path / "once") == uninterrupted
    assert sum(generated) == 4  # the cut record and the three never written
    generated.clear()
    assert answers(tmp_path / "once") == uninterrupted and sum(generated) == 0
    keys = []
    for line in shard.read_text().splitlines()[1:]:
        with contextlib.suppress(json.JSONDecodeError):  # the line the interruption cut short
            keys.append(json.loads(line)["key"])
    assert sorted(keys) == sorted(f"{row['id']}/{row['kind']}" for row in rows)  # each once, none lost
