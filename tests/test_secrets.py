"""Secrets end to end: a whole run (private Hub dataset -> training with checkpoints -> push -> evaluation of
the pushed adapter with the API judge -> publish again) with a fake HF token and a fake judge API key, then
every log line, output file, checkpoint, cache file and Hub file is searched for both."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, run_checked
from tests.hub_server import FakeHub
from tests.test_judge_api import Reply, StubServer

HF_TOKEN = "hf_vlsafe_FAKE_demo_token_Q9x2"
JUDGE_KEY = "sk-vlsafe-FAKE-judge-key-4rT8"
VERDICT = '{"verdict": "safe", "refusal": true}'


@pytest.mark.slow
def test_no_secret_reaches_logs_outputs_checkpoints_caches_or_the_hub(
    hub_server: FakeHub, demo_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fixtures = demo_run / "outputs/demo/fixtures"
    hub_server.add_user("alice", HF_TOKEN)
    hub_server.add_repo("alice/vlguard-private", fixtures / "vlguard", private=True, tokens={HF_TOKEN})
    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
    monkeypatch.setenv("VLSAFE_JUDGE_KEY", JUDGE_KEY)
    monkeypatch.setenv("VLSAFE_CACHE", str(tmp_path / "vlsafe-cache"))
    run = tmp_path / "run"
    run.mkdir()
    accelerate = str(Path(sys.executable).parent / "accelerate")
    logs = []
    with StubServer() as judge:
        judge.responder = lambda body: Reply(content=VERDICT)
        logs.append(run_checked(
            [accelerate, "launch", "--config_file", str(REPO / "recipes/accelerate/cpu.yaml"),
             "--num_cpu_threads_per_process", "1", str(REPO / "recipes/sft_vlguard.py"),
             "--config", str(REPO / "recipes/configs/tiny/sft_vlguard.yaml"),
             "--model_name_or_path", str(fixtures / "tiny-llava"), "--dataset", "alice/vlguard-private",
             "--helpful_dataset", str(fixtures / "helpful/data.json"), "--helpful_samples", "4",
             "--output_dir", "sft", "--max_steps", "2", "--per_device_train_batch_size", "2",
             "--save_strategy", "steps", "--save_steps", "1", "--logging_steps", "1",
             "--push_to_hub", "true", "--hub_model_id", "alice/secret-run"],
            cwd=run,
        ))  # fmt: skip
        logs.append(run_checked(
            [sys.executable, str(REPO / "recipes/evaluate_safety.py"),
             "--config", str(REPO / "recipes/configs/tiny/evaluate_safety.yaml"),
             "--base_model", str(fixtures / "tiny-llava"), "--adapter", "alice/secret-run",
             "--dataset", "alice/vlguard-private", "--limit", "3", "--max_new_tokens", "8",
             "--judges", "keyword", "api", "--judge_api_base_url", judge.base_url, "--judge_api_model", "stub",
             "--judge_api_key_env", "VLSAFE_JUDGE_KEY", "--output_dir", "eval"],
            cwd=run,
        ))  # fmt: skip
        logs.append(
            run_checked(
                [
                    sys.executable,
                    "-m",
                    "vlsafe.publish",
                    "--folder",
                    "sft",
                    "--repo_id",
                    "alice/secret-run-2",
                ],
                cwd=run,
            )
        )
    # The secrets were used: the private dataset was read, both pushes landed, the judge got the key.
    assert ("model", "alice/secret-run") in hub_server.repos and (
        "model",
        "alice/secret-run-2",
    ) in hub_server.repos
    assert judge.requests and all(r.headers["authorization"] == f"Bearer {JUDGE_KEY}" for r in judge.requests)
    assert list((run / "sft").glob("checkpoint-*/adapter_model.safetensors"))

    texts = {f"log {i}": result.stdout + result.stderr for i, result in enumerate(logs)}
    files = [p for p in tmp_path.rglob("*") if p.is_file()]  # outputs, checkpoints, HF and vlsafe caches
    texts |= {str(p): p.read_bytes().decode("latin-1") for p in files}
    texts |= {
        f"hub {repo_id}/{name}": blob.data.decode("latin-1")
        for (_, repo_id), repo in hub_server.repos.items()
        for commit in repo.commits.values()
        for name, blob in (commit.files or {}).items()
    }
    assert len(files) > 50
    leaks = [where for where, text in texts.items() if HF_TOKEN in text or JUDGE_KEY in text]
    assert not leaks, leaks
