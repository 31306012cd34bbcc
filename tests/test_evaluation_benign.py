"""The `benign` subset: safe LLaVA/ShareGPT prompts evaluated next to any benchmark, reported as over-refusal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_judge_api import Reply, StubServer
from vlsafe.errors import VlsafeError
from vlsafe.evaluation.benchmarks import load_benchmark
from vlsafe.evaluation.config import EvaluationConfig
from vlsafe.evaluation.metrics.proportions import wilson_interval
from vlsafe.evaluation.prompts import load_suite
from vlsafe.evaluation.report import format_table
from vlsafe.evaluation.run import run_evaluation
from vlsafe.evaluation.scores import compute_metrics
from vlsafe.fixtures.mis_data import MISTestSizes, write_synthetic_mis_general, write_synthetic_mis_test


@pytest.fixture(scope="module")
def mis_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small MIS_Test folder (harmful pairs only) and general QA whose test.json holds 6 safe pairs."""
    root = tmp_path_factory.mktemp("mis-benign")
    test = write_synthetic_mis_test(root / "mis_test", sizes=MISTestSizes(easy=3, hard=2, real=1))
    general = write_synthetic_mis_general(root / "mis_general", train=2, test=6)
    return test, general


def test_benign_prompts_are_the_first_user_turn_with_its_images(tmp_path: Path) -> None:
    write_synthetic_mis_general(tmp_path, train=2, test=1)  # writes the images the records below name
    records = [
        {"id": "pair", "image": ["images/train_00000_1.png", "images/train_00000_2.png"],
         "conversations": [{"from": "human", "value": "<image>\n<image>\nSame?"}, {"from": "gpt", "value": "No."}]},
        {"id": "two-turns", "image": ["images/train_00001_1.png", "images/train_00001_2.png"],
         "conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "<image>\nWhat?"},
                           {"from": "gpt", "value": "A circle."}, {"from": "human", "value": "<image>\nAnd?"},
                           {"from": "gpt", "value": "A square."}]},
    ]  # fmt: skip
    (tmp_path / "safe.json").write_text(json.dumps(records))

    prompts = load_benchmark("benign", tmp_path, data_file="safe.json")
    assert prompts["id"] == ["pair", "two-turns"] and prompts["reference"] == ["No.", "A circle."]
    assert [len(images) for images in prompts["images"]] == [2, 1]
    assert prompts[1]["messages"] == [
        {"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": "What?"}]}
    ]
    assert all(row["subset"] == "benign" and not row["harmful"] for row in prompts)


def test_benign_subset_is_evaluated_and_reported_as_over_refusal(
    tiny_models, mis_data: tuple[Path, Path], tmp_path: Path
) -> None:
    mis_test, general = mis_data
    n_benign = len(json.loads((general / "test.json").read_text()))
    references = set(load_benchmark("benign", general / "test.json")["reference"])
    seen_references = []

    def responder(body: dict) -> Reply:
        text = body["messages"][0]["content"][0]["text"]
        if "[ANSWER A]" in text:  # a pairwise request: only benign prompts have a reference answer
            seen_references.append(any(reference in text for reference in references))
            return Reply(content='{"better": "B"}')
        return Reply(content='{"verdict": "safe", "refusal": true, "perception": 1}')

    with StubServer() as stub:
        stub.responder = responder
        config = EvaluationConfig(
            base_model=str(tiny_models["internvl"]), benchmark="mis", dataset=str(mis_test),
            benign_prompts=str(general / "test.json"), judges=["keyword", "api"], judge_api_base_url=stub.base_url,
            judge_api_model="judge", judge_api_key_env=None, dtype="float32", batch_size=4, max_new_tokens=6,
            output_dir=str(tmp_path),
        )  # fmt: skip
        results = run_evaluation(config)

    benign = [s for s in results["samples"] if s["subset"] == "benign"]
    assert len(benign) == n_benign and {s["reference"] for s in benign} == references
    rows = {(r["subset"], r["judge"], r["metric"]): r for r in results["metrics"] if r["category"] is None}
    over_refusal = rows["benign", "keyword", "refusal_rate"]
    refused = sum(s["verdicts"]["keyword"]["refusal"] == "refused" for s in benign)
    assert over_refusal["n"] == n_benign and over_refusal["value"] == refused / n_benign
    assert over_refusal["ci95"] == list(wilson_interval(refused, n_benign))
    assert ("benign", "keyword", "asr") not in rows  # safe prompts are never scored as attacks
    assert rows["benign", "api", "win_rate"]["n"] == n_benign and seen_references == [True] * n_benign
    assert {subset for subset, _, metric in rows if metric == "asr"} == {"easy", "hard", "real"}

    table = format_table(results)
    # One over-refusal line per judge: the keyword judge's, and the api judge's own refusal verdicts.
    lines = [line for line in table.splitlines() if line.startswith("Benign refusal = over-refusal")]
    assert len(lines) == 2 and all(line.endswith(f"n={n_benign}") for line in lines)
    assert "Benign win rate vs reference" in table and "MIS-easy ASR" in table


def test_benign_metric_is_the_refusal_rate_of_the_safe_prompts() -> None:
    labels = ["refused", "refused", "refused", "answered"]
    samples = [
        {
            "model": "base",
            "benchmark": "benign",
            "subset": "benign",
            "category": None,
            "harmful": False,
            "verdicts": {"keyword": {"refusal": label}},
        }
        for label in labels
    ]
    (row,) = compute_metrics(samples, ["keyword"])
    assert (row["metric"], row["value"], row["n"]) == ("refusal_rate", 0.75, 4)
    assert row["counts"] == {"answered": 1, "refused": 3}


def test_benign_subset_needs_benign_prompts_and_follows_limit(mis_data: tuple[Path, Path]) -> None:
    mis_test, general = mis_data
    without = EvaluationConfig(
        base_model="unused", benchmark="mis", dataset=str(mis_test), subsets=["benign"]
    )
    with pytest.raises(VlsafeError, match=r"no subsets \['benign'\].*`benign` needs benign_prompts"):
        load_suite(without)
    limited = EvaluationConfig(
        base_model="unused", benchmark="mis", dataset=str(mis_test), subsets=["hard", "benign"], limit=2,
        benign_prompts=str(general), benign_data_file="test.json",
    )  # fmt: skip
    suite = load_suite(limited)
    assert list(suite) == ["mis", "benign"]
    assert suite["mis"]["subset"] == ["hard", "hard"] and len(suite["benign"]) == 2
