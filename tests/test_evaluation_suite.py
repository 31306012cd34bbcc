"""Several benchmarks in one run: where their prompts come from, one model load, one report with a suite summary."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from vlsafe.errors import VlsafeError
from vlsafe.evaluation.config import EvaluationConfig
from vlsafe.evaluation.prompts import benchmark_names, load_suite
from vlsafe.evaluation.report import format_table, write_results
from vlsafe.evaluation.run import run_evaluation
from vlsafe.evaluation.scores import suite_summary
from vlsafe.fixtures.mis_data import MISTestSizes, write_synthetic_mis_general, write_synthetic_mis_test


@pytest.fixture(scope="module")
def bench_root(tmp_path_factory: pytest.TempPathFactory, synthetic_vlguard: Path) -> Path:
    """A folder of benchmark folders named as the benchmarks, as `--benchmark_root` expects."""
    root = tmp_path_factory.mktemp("bench")
    shutil.copytree(synthetic_vlguard, root / "vlguard")
    write_synthetic_mis_test(root / "mis", sizes=MISTestSizes(easy=3, hard=2, real=1))
    write_synthetic_mis_general(root / "general", train=1, test=3)
    return root


def _config(root: Path, **overrides) -> EvaluationConfig:
    settings = {"base_model": "unused", "benchmark": ["vlguard", "mis"], "benchmark_root": str(root)}
    return EvaluationConfig(**(settings | overrides))


def test_benchmarks_come_from_the_root_in_report_order(bench_root: Path) -> None:
    config = _config(
        bench_root, benchmark=["mis", "vlguard"], benign_prompts=str(bench_root / "general/test.json")
    )
    assert benchmark_names(config) == ["mis", "vlguard", "benign"]
    suite = load_suite(config)
    assert {name: len(prompts) for name, prompts in suite.items()} == {"mis": 6, "vlguard": 18, "benign": 3}
    assert set(suite["vlguard"]["subset"]) == {"unsafes", "safe_unsafes", "safe_safes"}
    assert not any(suite["benign"]["harmful"]) and all(suite["mis"]["harmful"])
    limited = load_suite(_config(bench_root, limit=2))
    assert limited["vlguard"]["subset"] == ["unsafes"] * 2 + ["safe_unsafes"] * 2 + ["safe_safes"] * 2


def test_mistakes_in_choosing_benchmarks_are_explained(bench_root: Path, tmp_path: Path) -> None:
    with pytest.raises(VlsafeError, match="Unknown benchmark 'figstp'"):
        benchmark_names(_config(bench_root, benchmark=["figstp"]))
    with pytest.raises(VlsafeError, match="needs --benchmark_root"):
        benchmark_names(EvaluationConfig(base_model="unused", benchmark=["all"]))
    with pytest.raises(VlsafeError, match="`all` runs every benchmark: pass it alone"):
        benchmark_names(_config(bench_root, benchmark=["all", "mis"]))
    with pytest.raises(
        VlsafeError,
        match=r"has no folder vlguard/ \(VLGuard test: a copy of https://huggingface.co/datasets/ys-zong/VLGuard\); no folder mis/",
    ):
        load_suite(_config(tmp_path))
    with pytest.raises(VlsafeError, match="`dataset` names the source of a single benchmark"):
        load_suite(_config(bench_root, dataset=str(bench_root / "vlguard")))
    with pytest.raises(VlsafeError, match="`subsets` chooses subsets of one benchmark"):
        load_suite(_config(bench_root, subsets=["easy"]))


@pytest.mark.slow
def test_one_run_evaluates_base_and_tuned_on_every_benchmark(
    demo_run: Path, bench_root: Path, tmp_path: Path
) -> None:
    fixtures = demo_run / "outputs/demo/fixtures"
    config = _config(
        bench_root,
        base_model=str(fixtures / "tiny-llava"),
        adapter=str(demo_run / "outputs/demo/sft_vlguard"),
        benign_prompts=str(bench_root / "general/test.json"),
        judges=["keyword", "xstest_strmatch"],
        dtype="float32",
        batch_size=8,
        max_new_tokens=12,
        output_dir=str(tmp_path / "eval"),
    )
    results = run_evaluation(config)
    assert list(results["benchmarks"]) == ["vlguard", "mis", "benign"]
    assert results["benchmarks"]["mis"]["subsets"] == {
        "easy": {"prompts": 3, "harmful": True},
        "hard": {"prompts": 2, "harmful": True},
        "real": {"prompts": 1, "harmful": True},
    }
    assert len(results["samples"]) == 2 * (18 + 6 + 3)
    overall = {
        (r["model"], r["benchmark"], r["subset"], r["judge"], r["metric"])
        for r in results["metrics"]
        if r["category"] is None
    }
    for model in ("base", "tuned"):
        for judge in ("keyword", "xstest_strmatch"):
            assert (model, "mis", "hard", judge, "asr") in overall
            assert (model, "benign", "benign", judge, "refusal_rate") in overall
            assert (model, "vlguard", "safe_safes", judge, "refusal_rate") in overall

    # The suite mean weighs each benchmark equally: a benchmark's subsets are averaged first.
    by = {(r["model"], r["benchmark"], r["subset"]): r["value"] for r in results["metrics"]
          if r["category"] is None and r["judge"] == "keyword" and r["metric"] == "asr"}  # fmt: skip
    vlguard = (by["tuned", "vlguard", "unsafes"] + by["tuned", "vlguard", "safe_unsafes"]) / 2
    mis = sum(by["tuned", "mis", split] for split in ("easy", "hard", "real")) / 3
    (asr,) = [
        r for r in results["summary"] if (r["model"], r["judge"], r["metric"]) == ("tuned", "keyword", "asr")
    ]
    assert asr["value"] == pytest.approx((vlguard + mis) / 2) and asr["benchmarks"] == ["mis", "vlguard"]
    assert suite_summary(results["metrics"]) == results["summary"]

    table = format_table(results)
    assert "[VLGuard test]" in table and "[MIS test]" in table and "[Benign prompts]" in table
    assert "mean ASR over 2 benchmarks" in table and "mean over-refusal over 2 benchmarks" in table
    assert "Agreement keyword vs xstest_strmatch (harmful prompts): Cohen's kappa" in table

    write_results(results, tmp_path / "eval")
    review = [json.loads(line) for line in (tmp_path / "eval/disagreements.jsonl").read_text().splitlines()]
    for row in review:  # each one names the prompt, the answer and both judges' differing labels
        assert row["answer"] is not None and row["prompt"] and len(set(row["labels"].values()) - {None}) == 2
    disagreeing = sum(
        len({s["verdicts"][j]["refusal"] == "refused" for j in ("keyword", "xstest_strmatch")}) > 1
        for s in results["samples"]
    )
    assert len(review) == disagreeing

    # One store per model and benchmark; run again, nothing is generated twice (the stores do not grow).
    stores = tmp_path / "eval/generations"
    sizes = {p.name: p.stat().st_size for p in stores.iterdir()}
    assert sorted(sizes) == [
        f"{m}-{b}.rank0.jsonl" for m in ("base", "tuned") for b in ("benign", "mis", "vlguard")
    ]
    again = run_evaluation(config)
    assert {p.name: p.stat().st_size for p in stores.iterdir()} == sizes
    assert [s["generation"] for s in again["samples"]] == [s["generation"] for s in results["samples"]]
