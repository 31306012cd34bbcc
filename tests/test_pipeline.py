"""vlsafe.pipeline (`vlsafe run`): stage records and fingerprints, a run killed mid-training (SIGKILL) that resumes to
the same adapter and report, skipping what is done, redoing what an input change made stale, and the Hub stages
(adapter, then the Space serving it) against the loopback Hub."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import run_checked
from tests.hub_server import FakeHub
from vlsafe.errors import VlsafeError
from vlsafe.pipeline import Pipeline, Stage, execute, load_pipeline, read_record

VLSAFE = str(Path(sys.executable).parent / "vlsafe")
TOKEN = "hf_vlsafe_FAKE_pipeline_token_2b9c"


# -- stage records, without training --------------------------------------------------------------------------------
def test_stages_skip_resume_and_restart_by_their_records(tmp_path: Path) -> None:
    output, runs, restarts = tmp_path / "out.txt", [], []

    def stage(inputs: dict, fail: bool = False) -> Stage:
        def run(resume: bool) -> None:
            runs.append(resume)
            if fail:
                raise KeyboardInterrupt  # the run dies mid-way: its record stays "started"
            output.write_text(json.dumps(inputs))

        return Stage(
            "train", {"config": inputs}, run=run, check=lambda: {"text": output.read_text()} if output.exists() else None,
            restart=lambda: restarts.append(True),
        )  # fmt: skip

    work = tmp_path / "work"
    assert execute(stage({"lr": 1}), work) == "ran" and runs == [False] and restarts == []
    assert execute(stage({"lr": 1}), work) == "skipped" and runs == [False]
    output.write_text("edited by hand")  # its output changed: run again, from scratch
    assert execute(stage({"lr": 1}), work) == "ran" and restarts == [True]
    with pytest.raises(KeyboardInterrupt):
        execute(stage({"lr": 2}, fail=True), work)  # other inputs: a fresh start, interrupted
    assert read_record(work, "train").status == "started" and restarts == [True, True]
    assert execute(stage({"lr": 2}), work) == "resumed" and runs[-1] is True and len(restarts) == 2
    assert execute(stage({"lr": 2}), work) == "skipped"
    remote = Stage("push", {"repo": "a/b"}, run=lambda resume: {"commit": "abc"})  # nothing local to check
    assert execute(remote, work) == "ran" and execute(remote, work) == "skipped"
    assert read_record(work, "push").outputs == {"commit": "abc"}


def test_bad_pipelines_are_refused_before_anything_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(VlsafeError, match=r"unknown setting\(s\) confg; known: recipe, config, args"):
        load_pipeline("tiny", overrides=["sft.confg=tiny"])
    with pytest.raises(VlsafeError, match="sft_vlguard or sft_mis"):
        load_pipeline("tiny", overrides=["sft.recipe=dpo_safety"])
    with pytest.raises(VlsafeError, match="KEY=VALUE"):
        load_pipeline("tiny", overrides=["sft.args.max_steps"])
    with pytest.raises(VlsafeError, match="serves the published adapter"):
        Pipeline(load_pipeline("tiny", space_id="alice/space"))
    with pytest.raises(VlsafeError, match="set publish.base_model_repo"):  # the tiny base is a local folder
        Pipeline(load_pipeline("tiny", repo_id="alice/adapter", space_id="alice/space"))
    with pytest.raises(VlsafeError, match="does not know"):  # a stage's recipe config is checked too
        Pipeline(load_pipeline("tiny", overrides=["sft.args.lerning_rate=0.1"]))
    assert not (tmp_path / "outputs/demo/sft_vlguard").exists()  # nothing trained


# -- real runs on the tiny default -----------------------------------------------------------------------------------
def _pipeline(root: Path, name: str) -> Path:
    """A short version of the demo pipeline writing under <root>/<name>: 12 steps with checkpoints every 4, a safety
    curve, an evaluation of 3 prompts per subset. Relative paths (the tiny configs') resolve from `root`."""
    config = {
        "work_dir": f"{name}/pipeline",
        "accelerate_config": "cpu",
        "accelerate_args": ["--num_cpu_threads_per_process", "1"],
        "fixtures": "outputs/demo/fixtures",
        "sft": {"recipe": "sft_vlguard", "config": "tiny", "args": {
            "output_dir": f"{name}/sft", "max_steps": 12, "per_device_train_batch_size": 2, "helpful_samples": 8,
            "warmup_steps": 0, "logging_steps": 1, "save_strategy": "steps", "save_steps": 4,
            "safety_curve": True, "safety_curve_harmful": 3, "safety_curve_safe": 3, "safety_curve_steps": 4,
            "safety_curve_max_new_tokens": 8}},
        "evaluate": {"config": "tiny", "args": {"output_dir": f"{name}/eval", "limit": 3, "max_new_tokens": 8}},
    }  # fmt: skip
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A folder in which the short pipeline ran once, uninterrupted, and its output."""
    root = tmp_path_factory.mktemp("pipeline")
    result = run_checked([VLSAFE, "run", "--config", str(_pipeline(root, "straight"))], root, timeout=3600)
    return root, result.stdout + result.stderr


def _samples(results: Path) -> list[tuple]:
    data = json.loads(results.read_text())
    return [(s["model"], s["subset"], s["id"], s["generation"], s["verdicts"]) for s in data["samples"]]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_adapter_and_report(straight: tuple[Path, str]) -> None:
    root, log = straight
    assert "Pipeline: sft ran, evaluate ran, card ran" in log
    command = [VLSAFE, "run", "--config", str(_pipeline(root, "killed"))]
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 1200
    while not (
        root / "killed/sft/checkpoint-4/trainer_state.json"
    ).is_file():  # a complete checkpoint, then kill
        assert process.poll() is None and time.monotonic() < deadline, (
            "the run ended or stalled before checkpoint-4"
        )
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # the pipeline, accelerate and the training process
    process.wait()
    assert not (root / "killed/sft/adapter_model.safetensors").exists()
    assert read_record(root / "killed/pipeline", "sft").status == "started"

    result = run_checked(command, root, timeout=3600)  # the same command again
    log = result.stdout + result.stderr
    assert "Pipeline: sft resumed, evaluate ran, card ran" in log
    assert "Resuming the interrupted run from" in log
    expected, resumed = (
        load_file(root / run / "sft/adapter_model.safetensors") for run in ("straight", "killed")
    )
    assert expected.keys() == resumed.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-4, atol=1e-6, msg=name)
    assert _samples(root / "killed/eval/results.json") == _samples(root / "straight/eval/results.json")
    curves = [json.loads((root / run / "sft/training_summary.json").read_text())["safety_curve"]["points"]
              for run in ("straight", "killed")]  # fmt: skip
    assert [p["step"] for p in curves[1]] == [0, 4, 8, 12]  # the resumed run kept its curve, no point twice
    assert [p["step"] for p in curves[0]] == [0, 4, 8, 12]


@pytest.mark.slow
def test_hub_stages_publish_the_adapter_then_its_space_once(
    straight: tuple[Path, str], hub_server: FakeHub
) -> None:
    root, _ = straight
    hub_server.add_user("alice", TOKEN)
    command = [VLSAFE, "run", "--config", str(_pipeline(root, "straight")), "--repo_id", "alice/tiny-pipeline",
               "--base_model_repo", "alice/tiny-llava", "--space_id", "alice/tiny-compare"]  # fmt: skip
    out = run_checked(command, root, env={"HF_TOKEN": TOKEN}).stdout
    assert "Pipeline: sft skipped, evaluate skipped, card skipped, publish ran, space ran" in out
    assert "Unsafe ASR (lower better)" in out  # the table of the (skipped) evaluation, printed again
    adapter = hub_server.repos[("model", "alice/tiny-pipeline")].files()
    assert {"adapter_model.safetensors", "README.md", "results.json", "safety_curve.png"} <= set(adapter)
    assert json.loads(adapter["adapter_config.json"].data)["base_model_name_or_path"] == "alice/tiny-llava"
    space = hub_server.repos[("space", "alice/tiny-compare")].files()
    config = json.loads(space["compare_config.json"].data)
    assert config["adapter"] == "alice/tiny-pipeline" and config["base_model"] == "alice/tiny-llava"
    commits = [path for method, path, _ in hub_server.requests if method == "POST" and "/commit/" in path]
    assert len(commits) == 2 and TOKEN not in out

    again = run_checked(command, root, env={"HF_TOKEN": TOKEN}).stdout
    assert "Pipeline: sft skipped, evaluate skipped, card skipped, publish skipped, space skipped" in again
    assert (
        len([p for m, p, _ in hub_server.requests if m == "POST" and "/commit/" in p]) == 2
    )  # nothing pushed


@pytest.mark.slow
def test_a_changed_setting_redoes_only_the_stages_it_reaches(straight: tuple[Path, str]) -> None:
    root, _ = straight
    weights = root / "straight/sft/adapter_model.safetensors"
    stamp = weights.stat().st_mtime_ns
    command = [
        VLSAFE,
        "run",
        "--config",
        str(_pipeline(root, "straight")),
        "--set",
        "evaluate.args.max_new_tokens=6",
    ]
    result = run_checked(command, root)
    log = result.stdout + result.stderr
    assert "Pipeline: sft skipped, evaluate ran, card ran" in log and "Stage evaluate: running" in log
    assert weights.stat().st_mtime_ns == stamp
    results = json.loads((root / "straight/eval/results.json").read_text())
    assert results["config"]["max_new_tokens"] == 6 and results["config"]["resume"] is False  # answers redone
