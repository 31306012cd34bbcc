"""The `vlsafe` console script, run as users run it (subprocesses): help of every command, errors that name the
problem, a real tiny run of fixtures -> sft-vlguard -> eval -> publish (to the loopback Hub), env, and the wheel:
built, installed into a fresh venv, resolving packaged configs from outside the clone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from setuptools import find_packages

from tests.conftest import REPO, run_checked
from tests.hub_server import FakeHub

VLSAFE = str(Path(sys.executable).parent / "vlsafe")
TOKEN = "hf_vlsafe_FAKE_cli_token_7d1e"  # alice's write token: must never show up in any output
HELP = {  # command line -> what its help must say
    (): ["sft-vlguard", "sft-mis", "dpo", "eval", "run", "publish", "space", "fixtures", "env"],
    ("sft-vlguard",): ["usage: vlsafe sft-vlguard", "--learning_rate", "--safety_curve", "--num_processes 8"],
    ("sft-vlguard", "--config", "tiny"): ["default: outputs/demo/sft_vlguard", "accelerate"],
    ("sft-mis",): ["usage: vlsafe sft-mis", "--general_ratio", "internvl3-8b"],
    ("dpo",): ["usage: vlsafe dpo", "--beta", "--sft_adapter"],
    ("eval",): ["usage: vlsafe eval", "--benchmark", "data-parallel"],
    ("run",): ["usage: vlsafe run", "--repo_id", "tiny", "llava-1.5-7b-vlguard"],
    ("publish",): ["usage: vlsafe publish", "--repo_id", "--base_model_repo"],
    ("space",): ["usage: vlsafe space", "--adapter", "--push"],
    ("space", "--push"): ["usage: vlsafe space --push", "--space_id"],
    ("fixtures",): ["usage: vlsafe fixtures", "--family"],
    ("env",): ["usage: vlsafe env"],
}


def vlsafe(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`vlsafe <args>`, checked."""
    return run_checked([VLSAFE, *args], cwd, env=env)


def test_pyproject_ships_every_package() -> None:
    """The package list is explicit (recipes/ is mapped into vlsafe.recipes): a new subpackage must be added."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert set(setuptools["packages"]) == set(find_packages(str(REPO / "toolkit"))) | {"vlsafe.recipes"}
    assert setuptools["package-dir"]["vlsafe.recipes"] == "recipes"


def test_every_command_has_help(tmp_path: Path) -> None:
    env = os.environ | {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    commands = list(HELP)
    for start in range(0, len(commands), 4):  # four at a time: each loads torch and TRL
        running = {
            args: subprocess.Popen([VLSAFE, *args, "--help"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
            for args in commands[start : start + 4]
        }  # fmt: skip
        for args, process in running.items():
            out, err = process.communicate(timeout=900)
            assert process.returncode == 0, (args, err[-2000:])
            for expected in HELP[args]:
                assert expected in " ".join(out.split()), (args, expected, out[-1500:])


def test_errors_name_the_problem_and_the_fix(tmp_path: Path) -> None:
    def failing(*args: str) -> str:
        result = subprocess.run([VLSAFE, *args], cwd=tmp_path, capture_output=True, text=True, timeout=900)
        assert result.returncode == 2, result.stderr[-2000:]
        assert "Traceback" not in result.stderr
        return " ".join(result.stderr.split())

    assert "packaged name" in (message := failing("sft-vlguard", "--config", "qwen9"))
    packaged = sorted(path.parent.name for path in (REPO / "recipes/configs").glob("*/sft_vlguard.yaml"))
    assert f"{', '.join(packaged)} (in" in message and "tiny" in packaged  # every packaged name, listed
    message = failing("sft-vlguard", "--config", "tiny", "--lerning_rate", "1e-4")
    assert "Unknown option(s) --lerning_rate" in message and "accelerate launch" in message
    assert "invalid choice: 'trian'" in failing("trian")
    assert "unknown setting(s) recpie" in failing("run", "--config", "tiny", "--set", "sft.recpie=sft_mis")


@pytest.mark.slow
def test_tiny_run_fixtures_train_evaluate_publish(hub_server: FakeHub, tmp_path: Path) -> None:
    """The embedded default through the command alone: the tiny config's relative paths meet the fixtures."""
    hub_server.add_user("alice", TOKEN)
    vlsafe("fixtures", cwd=tmp_path)  # default --out: outputs/demo/fixtures, where the tiny configs look
    fixtures = tmp_path / "outputs/demo/fixtures"
    assert (fixtures / "tiny-llava/config.json").is_file() and (fixtures / "vlguard/train.zip").is_file()

    result = vlsafe(
        "sft-vlguard", "--config", "tiny", "--max_steps", "2", "--per_device_train_batch_size", "2",
        "--helpful_samples", "4", "--safety_curve", "false", "--logging_steps", "1",
        "--accelerate_config", "cpu", "--num_cpu_threads_per_process", "1",  # accelerate's options, passed through
        cwd=tmp_path,
    )  # fmt: skip
    assert (
        "accelerate launch --config_file" in result.stderr
        and "--num_cpu_threads_per_process 1" in result.stderr
    )
    adapter = tmp_path / "outputs/demo/sft_vlguard"
    summary = json.loads((adapter / "training_summary.json").read_text())
    assert summary["training"]["global_steps"] == 2 and (adapter / "adapter_model.safetensors").is_file()

    result = vlsafe("eval", "--config", "tiny", "--limit", "2", "--max_new_tokens", "8", cwd=tmp_path)
    assert (
        "Unsafe ASR (lower better)" in result.stdout
    )  # the table, printed by the evaluation in this process
    results = json.loads((tmp_path / "outputs/demo/eval/results.json").read_text())
    assert len(results["samples"]) == 2 * 3 * 2 and (adapter / "results.json").is_file()  # the card got them

    result = vlsafe(
        "publish", "--folder", str(adapter), "--repo_id", "alice/tiny-cli", "--base_model_repo", "alice/tiny-llava",
        cwd=tmp_path, env={"HF_TOKEN": TOKEN},
    )  # fmt: skip
    assert "Published" in result.stdout and TOKEN not in result.stdout + result.stderr
    files = hub_server.repos[("model", "alice/tiny-cli")].files()
    assert {"adapter_model.safetensors", "README.md", "results.json"} <= set(files)
    assert json.loads(files["adapter_config.json"].data)["base_model_name_or_path"] == "alice/tiny-llava"


def test_env_reports_versions_and_never_the_token(tmp_path: Path) -> None:
    out = vlsafe("env", cwd=tmp_path, env={"HF_TOKEN": TOKEN}).stdout
    for expected in (
        "- torch: ",
        "- trl: ",
        "- accelerator(s): ",
        "- Hub token: configured",
        "- extras:",
        "quant",
    ):
        assert expected in out, out
    assert f"- recipes: {REPO / 'recipes'}" in out and TOKEN not in out


@pytest.mark.slow
def test_wheel_installs_and_resolves_packaged_configs_outside_the_clone(tmp_path: Path) -> None:
    """pip wheel, a fresh venv (its own site-packages first; the dependencies from this one, nothing downloaded),
    then `vlsafe` from a folder that is not the clone: configs, accelerate configs and pipelines are in the wheel."""
    run_checked(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "wheel"),
         str(REPO)],
        tmp_path,
    )  # fmt: skip
    (wheel,) = (tmp_path / "wheel").glob("vlsafe-*.whl")
    venv = tmp_path / "venv"
    run_checked([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path)
    site = next((venv / "lib").glob("python3*/site-packages"))
    shared = next(
        path for path in map(Path, sys.path) if path.name == "site-packages" and (path / "trl").is_dir()
    )
    (site / "zz_dependencies.pth").write_text(
        f"{shared}\n"
    )  # a plain path: its .pth files (the clone) stay out
    run_checked([sys.executable, "-m", "pip", "--python", str(venv / "bin/python"), "install", "--no-deps", "-q",
                 str(wheel)], tmp_path)  # fmt: skip
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    command = str(venv / "bin/vlsafe")
    env = {"PYTHONPATH": ""}

    help_text = run_checked([command, "sft-vlguard", "--config", "tiny", "--help"], outside, env=env).stdout
    assert "default: outputs/demo/fixtures/tiny-llava" in " ".join(help_text.split())
    qwen = run_checked([command, "sft-mis", "--config", "qwen2.5-vl-7b", "--help"], outside, env=env).stdout
    assert "Qwen/Qwen2.5-VL-7B-Instruct" in qwen
    report = run_checked([command, "env"], outside, env=env).stdout
    installed = f"- recipes: {site / 'vlsafe/recipes'}"
    assert installed in report, report  # the wheel's copy, not the clone's
    for packaged in ("recipes/accelerate/cpu.yaml", "recipes/pipelines/tiny.yaml", "recipes/configs/tiny/sft_vlguard.yaml",
                     "card_templates/adapter_card.md.jinja", "evaluation/metrics/attack_success_rate/attack_success_rate.py"):  # fmt: skip
        assert (site / "vlsafe" / packaged).is_file(), packaged
