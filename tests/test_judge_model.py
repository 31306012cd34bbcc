"""Model judges run where the work runs: on the process's accelerator, batched, and data-parallel under torchrun
with the same verdicts, in the same order, as one process."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import REPO, needs_vllm, run_checked, torchrun
from vlsafe.errors import VlsafeError
from vlsafe.evaluation.config import EvaluationConfig
from vlsafe.evaluation.generate import defuse_placeholders, process_state
from vlsafe.evaluation.judges.model import ModelJudge
from vlsafe.evaluation.judges.verdicts import PreferenceItem, SafetyItem
from vlsafe.evaluation.judging import judge_settings
from vlsafe.fixtures.guards import build_tiny_guard, script_replies

JUDGE_REPLIES = ("A", "B", "tie", "safe", "unsafe")  # what the scripted tiny judge may answer


@pytest.fixture(scope="module")
def scripted_judge(tiny_models, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny LLaVA as a judge whose real generate() writes one of JUDGE_REPLIES (its weights pick which)."""
    folder = shutil.copytree(tiny_models["llava"], tmp_path_factory.mktemp("judge") / "tiny-llava-judge")
    script_replies(folder, JUDGE_REPLIES)
    return folder


def test_model_judge_loads_on_the_process_device_and_frees_it(scripted_judge: Path) -> None:
    judge = ModelJudge(str(scripted_judge), dtype="float32", batch_size=3)
    assert judge.model.device == process_state().device and not judge.model.training
    items = [SafetyItem(f"Question {i}?", f"Answer {i}.") for i in range(4)]
    verdicts = judge.judge_safety(items)
    assert len(verdicts) == 4 and {v.raw for v in verdicts} <= set(JUDGE_REPLIES)
    labels = judge.judge_preference([PreferenceItem(f"Q{i}?", "a", "ref", f"id-{i}") for i in range(4)])
    assert set(labels) <= {"win", "lose", "tie", "unparseable"} and len(labels) == 4
    judge.close()
    assert judge.model is None
    with pytest.raises(VlsafeError, match="close"):
        judge.judge_safety(items)


def test_an_answer_spelling_out_the_image_token_is_judged_as_text(
    scripted_judge: Path, tmp_path: Path, caplog
) -> None:
    judge = ModelJudge(str(scripted_judge), dtype="float32")
    image = tmp_path / "image.png"
    Image.new("RGB", (32, 32), (0, 90, 200)).save(image)
    items = [SafetyItem("Describe <image>", "Sure: <image> shows a lamp.", (str(image),))]
    with caplog.at_level(logging.WARNING):  # LLaVA's processor would count "<image>" as a second image
        (verdict,) = judge.judge_safety(items)
    assert verdict.raw in JUDGE_REPLIES
    assert "1 of 1 requests or answers spell out <image>" in caplog.text
    assert defuse_placeholders(["a <image> b", "plain"], ["<image>"]) == (["a < image> b", "plain"], 1)


def test_model_judge_refuses_a_guard_checkpoint(tmp_path: Path) -> None:
    guard = build_tiny_guard("mllama", tmp_path / "guard")
    with pytest.raises(VlsafeError, match=r"is a guard model .*`--judges llama_guard --guard_model"):
        ModelJudge(str(guard))


@pytest.mark.slow
def test_data_parallel_judges_match_one_process(
    tiny_models, synthetic_vlguard: Path, scripted_judge: Path, tmp_path: Path
) -> None:
    guard = build_tiny_guard("llama4", tmp_path / "guard")
    script_replies(guard, ("safe", "unsafe\nS1,S10"))
    args = ["--base_model", str(tiny_models["llava"]), "--dataset", str(synthetic_vlguard), "--dtype", "float32",
            "--batch_size", "2", "--max_new_tokens", "6", "--limit", "4", "--judges", "keyword", "model", "llama_guard",
            "--judge_model", str(scripted_judge), "--guard_model", str(guard), "--judge_batch_size", "2"]  # fmt: skip
    recipe = str(REPO / "recipes/evaluate_safety.py")
    run_checked([sys.executable, recipe, *args, "--output_dir", "single"], tmp_path, timeout=600)
    # Two CPU processes; a judge that made a collective call in one process only would hang until the timeout.
    launched = run_checked(
        [*torchrun(2), recipe, *args,
         "--output_dir", "parallel"],
        tmp_path,
        timeout=600,
        env={"ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    single, parallel = (_samples(tmp_path / name) for name in ("single", "parallel"))
    assert _verdicts(parallel) == _verdicts(single) and len(single) == 3 * 4
    # The preference slot follows the sample id, so the verdicts differ from sample to sample: a reordering shows.
    preferences = {s["verdicts"]["model"].get("preference") for s in single if not s["harmful"]}
    assert preferences >= {"win", "lose"}
    log = launched.stdout + launched.stderr
    for judge in ("model judge", "llama_guard"):  # each process judged its own share
        assert all(f"{judge}: process {rank} of 2 judges" in log for rank in (0, 1))
    # Generations are stored by the process that made them; verdicts by the main process only.
    assert sorted(p.name for p in (tmp_path / "parallel/generations").iterdir()) == [
        "base-vlguard.rank0.jsonl", "base-vlguard.rank1.jsonl"
    ]  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "parallel/judgements").iterdir()) == [
        "llama_guard.rank0.jsonl", "model.rank0.jsonl"
    ]  # fmt: skip


def _samples(output_dir: Path) -> list[dict]:
    return json.loads((output_dir / "results.json").read_text())["samples"]


def _verdicts(samples: list[dict]) -> list[tuple]:
    return [(s["subset"], s["id"], s["verdicts"]["model"], s["verdicts"]["llama_guard"]) for s in samples]


def test_model_judge_engine_is_named_in_its_store_and_unknown_ones_are_refused(
    scripted_judge: Path, tmp_path: Path
) -> None:
    config = EvaluationConfig(base_model="base", judge_model=str(scripted_judge), output_dir=str(tmp_path))
    assert "engine" not in judge_settings(
        "model", config
    )  # the transformers judge: stores of earlier runs fit
    assert judge_settings("model", dataclasses.replace(config, engine="vllm"))["engine"] == "vllm"
    assert "engine" not in judge_settings(
        "model", dataclasses.replace(config, engine="vllm", judge_engine="transformers")
    )
    assert "engine" not in judge_settings("llama_guard", dataclasses.replace(config, engine="vllm"))
    with pytest.raises(VlsafeError, match="Unknown judge engine 'tgi'"):
        ModelJudge(str(scripted_judge), engine="tgi")


@needs_vllm
@pytest.mark.slow
def test_model_judge_on_vllm_says_what_the_transformers_judge_says(
    vllm_llava, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM's CPU default takes most of the memory
    judge_model, _ = vllm_llava
    images = []
    for index, colour in enumerate([(0, 90, 200), (200, 30, 0)]):
        images.append(tmp_path / f"{index}.png")
        Image.new("RGB", (48, 40), colour).save(images[-1])
    items = [SafetyItem(f"Question {i}?", f"Answer {i} <image>.", (str(images[i % 2]),)) for i in range(4)]
    items.append(SafetyItem("Compare them.", "They differ.", tuple(map(str, images))))  # two images: MIS
    preference = [PreferenceItem(f"Q{i}?", "a", "ref", f"id-{i}", (str(images[0]),)) for i in range(3)]

    expected = ModelJudge(str(judge_model), dtype="float32", max_new_tokens=16)
    expected_safety, expected_preference = expected.judge_safety(items), expected.judge_preference(preference)
    expected.close()
    judge = ModelJudge(str(judge_model), dtype="float32", max_new_tokens=16, engine="vllm")
    assert judge.model is None  # no transformers copy of the judge is loaded
    assert judge.judge_safety(items) == expected_safety  # raw replies too: word for word
    assert judge.generator.images_per_prompt == 2  # the engine's limit came from the items
    assert judge.judge_preference(preference) == expected_preference
    judge.close()
    assert judge.generator is None
