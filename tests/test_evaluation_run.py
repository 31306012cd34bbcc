"""vlsafe.evaluation: resumable engine, judges' parsing, metric modules, the stages end to end."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import evaluate
import pytest

from tests.conftest import REPO, run_checked, torchrun
from tests.test_judge_api import Reply, StubServer
from vlsafe.data.vlguard import load_vlguard
from vlsafe.errors import VlsafeError
from vlsafe.evaluation.config import EvaluationConfig
from vlsafe.evaluation.generate import generate_records
from vlsafe.evaluation.judges.keyword import is_refusal
from vlsafe.evaluation.judges.verdicts import cohen_kappa, parse_preference, parse_safety
from vlsafe.evaluation.metrics import metric_path
from vlsafe.evaluation.report import format_table
from vlsafe.evaluation.run import run_evaluation
from vlsafe.evaluation.store import RecordStore
from vlsafe.modeling import load_model, load_processor


def test_resume_generates_only_what_is_missing(tiny_models, synthetic_vlguard: Path, tmp_path: Path) -> None:
    model = load_model(str(tiny_models["llava"]), dtype="float32")
    processor = load_processor(str(tiny_models["llava"]))
    rows = list(load_vlguard(synthetic_vlguard, "test"))[:6]
    keys = [f"k{i}" for i in range(6)]
    uninterrupted = generate_records(
        model, processor, rows, keys, batch_size=2, max_new_tokens=6, progress=False
    )

    settings = {"max_new_tokens": 6}
    first = RecordStore(tmp_path, "base", settings)
    generate_records(
        model, processor, rows[:3], keys[:3], store=first, batch_size=2, max_new_tokens=6, progress=False
    )
    with (tmp_path / "base.rank0.jsonl").open("a") as handle:
        handle.write('{"key": "k3", "generation": "cut sho')  # a line the interruption cut short

    prompts_seen = []
    original = model.generate

    def counting_generate(**inputs):
        prompts_seen.append(inputs["input_ids"].shape[0])
        return original(**inputs)

    model.generate = counting_generate
    resumed = RecordStore(tmp_path, "base", settings)
    assert len(resumed.records) == 3
    records = generate_records(
        model, processor, rows, keys, store=resumed, batch_size=2, max_new_tokens=6, progress=False
    )
    assert sum(prompts_seen) == 3  # only the unfinished rows were generated again
    assert [r["generation"] for r in records] == [r["generation"] for r in uninterrupted]
    assert len(RecordStore(tmp_path, "base", settings).records) == 6

    with pytest.raises(VlsafeError, match="other settings"):
        RecordStore(tmp_path, "base", {"max_new_tokens": 7})
    assert RecordStore(tmp_path, "base", {"max_new_tokens": 7}, resume=False).records == {}
    assert not (tmp_path / "base.rank0.jsonl").exists()  # discarded; a new shard starts with the first record


def test_stale_intermediate_records_are_discarded_shard_by_shard(tmp_path: Path, caplog) -> None:
    old, new = {"policy": "v1"}, {"policy": "v2"}
    RecordStore(tmp_path, "policy", old, rank=0).put("a", {"generation": "x"})
    (tmp_path / "policy.rank0.jsonl").rename(tmp_path / "old")  # set aside while the new shard is written
    RecordStore(tmp_path, "policy", new, rank=1).put("b", {"generation": "y"})
    (tmp_path / "old").rename(tmp_path / "policy.rank0.jsonl")
    with caplog.at_level(logging.WARNING):
        store = RecordStore(tmp_path, "policy", new, rank=0, restart_if_stale=True)
    assert "made with other settings" in caplog.text
    assert set(store.records) == {"b"}  # the matching shard of the other process is kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy.rank1.jsonl"]


def test_a_retrained_adapter_does_not_reuse_stored_answers(tmp_path: Path) -> None:
    from vlsafe.evaluation.store import weights_fingerprint

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"v1")
    before = weights_fingerprint(adapter)
    assert before and weights_fingerprint(adapter) == before
    os.utime(adapter / "adapter_model.safetensors", ns=(1, 1))  # written again by a new training run
    assert weights_fingerprint(adapter) != before
    assert weights_fingerprint("org/adapter-on-the-hub") is None


@pytest.mark.parametrize(
    ("text", "label", "refused"),
    [
        ('{"verdict": "unsafe", "refusal": false}', "unsafe", False),
        ('Sure. ```json\n{"Verdict": "SAFE", "refusal": true}\n```', "safe", True),
        ("unsafe\nS2", "unsafe", None),  # Llama Guard style
        ("safe", "safe", None),
        ("I think it is probably fine", "unparseable", None),
        ('{"verdict": "maybe"}', "unparseable", None),
    ],
)
def test_safety_verdict_parsing(text: str, label: str, refused) -> None:
    verdict = parse_safety(text)
    assert (verdict.label, verdict.refused) == (label, refused)


def test_preference_parsing_respects_answer_slot() -> None:
    assert parse_preference('{"better": "A"}', answer_first=True) == "win"
    assert parse_preference('{"better": "A"}', answer_first=False) == "lose"
    assert parse_preference("B is better", answer_first=False) == "win"
    assert parse_preference('{"better": "tie"}', answer_first=True) == "tie"
    assert parse_preference("no idea", answer_first=True) == "unparseable"


def test_cohen_kappa() -> None:
    assert cohen_kappa(["safe", "unsafe"] * 5, ["safe", "unsafe"] * 5) == 1.0
    assert cohen_kappa(["safe", "unsafe", "safe", "unsafe"], ["unsafe", "safe", "unsafe", "safe"]) == -1.0
    assert abs(cohen_kappa(list("aabb"), list("abab"))) < 1e-9
    assert cohen_kappa(["safe"] * 3, ["safe"] * 3) is None


def test_metric_modules_load_by_path_with_evaluate() -> None:
    asr = evaluate.load(str(metric_path("attack_success_rate")))
    result = asr.compute(predictions=["answered", "refused", "refused", "empty", "error", "unsafe"])
    assert result["attack_success_rate"] == pytest.approx(2 / 5) and result["n"] == 5
    assert result["count_error"] == 1 and result["ci95_low"] < 0.4 < result["ci95_high"]
    assert (
        evaluate.load(str(metric_path("refusal_rate"))).compute(predictions=["refused", "answered"])[
            "refusal_rate"
        ]
        == 0.5
    )
    win = evaluate.load(str(metric_path("win_rate"))).compute(
        predictions=["win", "tie", "lose", "unparseable"]
    )
    assert win["win_rate"] == 0.5 and win["n"] == 3 and win["count_unparseable"] == 1


def _config(tiny_models, vlguard: Path, out: Path, **overrides) -> EvaluationConfig:
    return EvaluationConfig(
        base_model=str(tiny_models["llava"]),
        dataset=str(vlguard),
        dtype="float32",
        batch_size=4,
        max_new_tokens=8,
        output_dir=str(out),
        **overrides,
    )


def test_model_judge_runs_and_counts_unparseable_verdicts(
    tiny_models, synthetic_vlguard: Path, tmp_path: Path
) -> None:
    # The random tiny model as judge cannot answer in the verdict format: every verdict must be counted as
    # unparseable, none read as safe, and the metrics must leave them out of n.
    config = _config(
        tiny_models,
        synthetic_vlguard,
        tmp_path,
        judges=["keyword", "model"],
        judge_model=str(tiny_models["llava"]),
        limit=3,
    )
    results = run_evaluation(config)
    verdicts = [s["verdicts"]["model"] for s in results["samples"]]
    assert {v["safety"] for v in verdicts if "safety" in v} == {"unparseable"}
    assert {v["refusal"] for v in verdicts} == {"unparseable"}  # never read as a refusal, nor as compliance
    model_rows = [r for r in results["metrics"] if r["judge"] == "model" and r["category"] is None]
    assert {r["metric"] for r in model_rows} == {"asr", "refusal_rate", "win_rate"}
    # One of the three safe_safes prompts has no reference answer (as in the real test.json): no win-rate verdict.
    expected = {"asr": 3, "refusal_rate": 3, "win_rate": 2}
    assert all(r["n"] == 0 and r["counts"] == {"unparseable": expected[r["metric"]]} for r in model_rows)
    assert results["agreement"] == [
        {"judges": ["keyword", "model"], "prompts": "harmful", "cohen_kappa": None, "n": 0}
    ]
    assert "judge: model" in format_table(results)


def test_adapter_on_the_wrong_base_is_explained(tiny_models, demo_run: Path, tmp_path: Path) -> None:
    adapter = demo_run / "outputs/demo/sft_vlguard"  # trained on tiny LLaVA
    config = _config(tiny_models, demo_run / "outputs/demo/fixtures/vlguard", tmp_path, adapter=str(adapter))
    config.base_model = str(tiny_models["qwen2_5_vl"])
    with pytest.raises(
        VlsafeError, match=r"trained with a LlavaProcessor .* Qwen2_5_VLProcessor .* does not fit this base"
    ):
        run_evaluation(config)


@pytest.mark.slow
def test_data_parallel_run_matches_single_process(demo_run: Path, tmp_path: Path) -> None:
    fixtures = demo_run / "outputs/demo/fixtures"
    args = ["--config", str(REPO / "recipes/configs/tiny/evaluate_safety.yaml"), "--base_model", str(fixtures / "tiny-llava"),
            "--adapter", str(demo_run / "outputs/demo/sft_vlguard"), "--dataset", str(fixtures / "vlguard"),
            "--limit", "9", "--batch_size", "2"]  # fmt: skip
    run_checked(
        [sys.executable, str(REPO / "recipes/evaluate_safety.py"), *args, "--output_dir", "single"], tmp_path
    )
    # Two CPU processes via torchrun (accelerate launch --cpu always runs one); on GPUs: accelerate launch --multi_gpu.
    run_checked(
        [*torchrun(2), str(REPO / "recipes/evaluate_safety.py"),
         *args, "--output_dir", "parallel"],
        tmp_path,
        env={"ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    single, parallel = (
        json.loads((tmp_path / name / "results.json").read_text()) for name in ("single", "parallel")
    )
    fields = ("model", "subset", "id", "generation")
    assert [tuple(s[f] for f in fields) for s in parallel["samples"]] == [
        tuple(s[f] for f in fields) for s in single["samples"]
    ]
    assert len(single["samples"]) == 2 * 3 * 9
    shards = sorted(p.name for p in (tmp_path / "parallel/generations").iterdir())
    assert shards == [f"{m}-vlguard.rank{k}.jsonl" for m in ("base", "tuned") for k in (0, 1)]


def test_api_judge_end_to_end_with_agreement_and_no_key_in_results(
    demo_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLSAFE_TEST_API_KEY", "sk-test-do-not-leak-123")

    def responder(body: dict) -> Reply:
        text = body["messages"][0]["content"][0]["text"]
        if "[ANSWER A]" in text:
            return Reply(content='{"better": "A"}')
        answer = text.split("[ASSISTANT ANSWER]\n", 1)[1]
        # Agrees with the keyword judge by construction, so the agreement must come out as kappa 1.
        refused = is_refusal(answer)
        return Reply(content=json.dumps({"verdict": "safe" if refused else "unsafe", "refusal": refused}))

    fixtures = demo_run / "outputs/demo/fixtures"
    with StubServer() as stub:
        stub.responder = responder
        config = _config(
            {"llava": fixtures / "tiny-llava"},
            fixtures / "vlguard",
            tmp_path,
            adapter=str(demo_run / "outputs/demo/sft_vlguard"),
            judges=["keyword", "api"],
            judge_api_base_url=stub.base_url,
            judge_api_model="judge",
            judge_api_key_env="VLSAFE_TEST_API_KEY",
            limit=4,
        )
        results = run_evaluation(config)
    value = {
        (r["model"], r["subset"], r["judge"], r["metric"]): r["value"]
        for r in results["metrics"]
        if r["category"] is None
    }
    assert value["tuned", "unsafes", "api", "asr"] == value["tuned", "unsafes", "keyword", "asr"] == 0.0
    assert value["base", "unsafes", "api", "asr"] == 1.0
    assert ("tuned", "safe_safes", "api", "win_rate") in value
    harmful, benign = results["agreement"]
    assert (harmful["prompts"], harmful["cohen_kappa"], harmful["n"]) == ("harmful", 1.0, 16)
    # The api judge also says whether an answer to a benign prompt refused: over-refusal from two judges.
    assert (benign["prompts"], benign["n"]) == ("benign", 8)
    safe_safes = [s for s in results["samples"] if s["subset"] == "safe_safes"]
    assert all(s["verdicts"]["api"]["refusal"] == s["verdicts"]["keyword"]["refusal"] for s in safe_safes)
    assert ("tuned", "safe_safes", "api", "refusal_rate") in value
    assert "sk-test-do-not-leak-123" not in json.dumps(results)
    assert stub.requests and all(
        "Bearer sk-test" in {k.lower(): v for k, v in seen.headers.items()}.get("authorization", "")
        for seen in stub.requests
    )


def test_mis_evaluation_with_a_stub_judge_reports_perception(tiny_models, tmp_path: Path) -> None:
    from vlsafe.fixtures.mis_data import MISTestSizes, write_synthetic_mis_test

    data = write_synthetic_mis_test(tmp_path / "mis", sizes=MISTestSizes(easy=4, hard=2, real=2))
    levels = iter([1, 2, 3, 1] * 10)

    def responder(body: dict) -> Reply:
        content = body["messages"][0]["content"]
        assert sum(part["type"] == "image_url" for part in content) == 2  # the judge sees both images
        assert "perception" in content[0]["text"]
        return Reply(content=json.dumps({"verdict": "safe", "refusal": True, "perception": next(levels)}))

    with StubServer() as stub:
        stub.responder = responder
        config = _config(
            tiny_models, data, tmp_path / "out", benchmark="mis", judges=["keyword", "api"],
            judge_api_base_url=stub.base_url, judge_api_model="judge", judge_api_key_env=None,
        )  # fmt: skip
        results = run_evaluation(config)
    rows = {
        (r["subset"], r["metric"]): r
        for r in results["metrics"]
        if r["judge"] == "api" and r["category"] is None
    }
    assert {metric for _, metric in rows} == {"asr", "rsr", "rr", "hr"}
    assert rows["easy", "asr"]["value"] == 0.0 and rows["easy", "asr"]["n"] == 4
    assert sum(rows["easy", m]["value"] for m in ("rsr", "rr", "hr")) == pytest.approx(1.0)
    samples = [s for s in results["samples"] if s["subset"] == "easy"]
    assert len(samples) == 4 and all(s["prompt"] for s in samples)
    table = format_table(results)
    assert "MIS-hard RSR" in table and "Keyword judge: refusal-based ASR only" not in table
    keyword_only = _config(tiny_models, data, tmp_path / "kw", benchmark="mis", limit=1)
    assert "Keyword judge: refusal-based ASR only" in format_table(run_evaluation(keyword_only))
