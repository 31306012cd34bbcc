"""Smoke tests: each benchmark runs in its quick CPU mode and prints its figures (not timed here: speed
claims come from the benchmarks' own side-by-side ratios, recorded in benchmarks/RESULTS.md)."""

from __future__ import annotations

import re
import sys

import pytest

from tests.conftest import REPO, run_checked

pytestmark = pytest.mark.slow


def run_benchmark(name: str, *args: str, tmp_path) -> str:
    result = run_checked(
        [sys.executable, str(REPO / "benchmarks" / name), *args], cwd=tmp_path, env={"TMPDIR": str(tmp_path)}
    )
    return result.stdout


def test_data_prep(tmp_path):
    out = run_benchmark("data_prep.py", "--images", "40", tmp_path=tmp_path)
    assert re.search(r"\| first \(cold cache\) \| \d+ \|", out) and "second (warm cache)" in out
    assert "faster, same counts" in out


def test_train_throughput(tmp_path):
    out = run_benchmark(
        "train_throughput.py",
        *("--steps", "2", "--warmup", "1", "--rounds", "1", "--batch_size", "2", "--lora_r", "4"),
        tmp_path=tmp_path,
    )
    assert "auto_speed: gradient_checkpointing = False (was True)" in out
    assert re.search(r"\| TRL defaults \| [\d.]+ \|", out)
    assert re.search(r"speed-up vlsafe / TRL: [\d.]+x", out)
    # Turning checkpointing off changes no arithmetic: the loss curves agree.
    assert re.search(r"largest relative difference 0\.0\d%", out), out


def test_eval_throughput(tmp_path):
    out = run_benchmark(
        "eval_throughput.py",
        *("--prompts", "8", "--baseline_prompts", "4", "--max_new_tokens", "4"),
        tmp_path=tmp_path,
    )
    assert "| vlsafe engine, batch 16 |" in out  # evaluate_safety.py's choice on a CPU
    assert re.search(r"speed-up \(tokens/s\): [\d.]+x", out)
    assert "identical answers: 4/4" in out
