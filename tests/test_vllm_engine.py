"""The vLLM engine (`--engine vllm`): adapter guards, records, the engine-mixing rule, and equality with the
transformers engine.

The guard and record tests run everywhere. The equality tests need vLLM: they run in the environment
`make vllm-env` builds (vLLM's CPU build), or on a GPU machine with `pip install -e '.[vllm,dev]'`:

    .venv-vllm/bin/python -m pytest -k vllm tests/ -q   # with DPO's pairs and the model judge on vLLM
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig, get_peft_model
from PIL import Image
from safetensors import safe_open
from transformers import AutoModelForImageTextToText, AutoProcessor

from tests.conftest import (
    HAS_VLLM,
    REPO,
    VLLM_PROCESS_ENV,
    default_lora,
    needs_vllm,
    run_checked,
    save_adapter,
    torchrun,
)
from vlsafe.errors import VlsafeError
from vlsafe.evaluation.config import EvaluationConfig
from vlsafe.evaluation.engine import TransformersEngine, generate_suite, source_settings
from vlsafe.evaluation.generate import answer_record
from vlsafe.evaluation.prompts import load_suite
from vlsafe.evaluation.store import RecordStore
from vlsafe.evaluation.vllm_engine import (
    VllmEngine,
    _distribution_change,
    _pinned_devices,
    check_adapter,
    mixed_engine_settings,
    processor_token_ids,
    vllm_prompt,
)
from vlsafe.fixtures.vllm_models import build_vllm_tiny_vlm

# Families vLLM serves from these fixtures, on its CPU build here (each engine start takes minutes here).
VLLM_FAMILIES = ("llava", "qwen2_5_vl", "idefics3", "internvl")


# -- adapter guards (no vLLM needed) -------------------------------------------------------------------------


def test_vlsafe_default_lora_passes_with_the_rank_vllm_needs(tiny_models, tmp_path: Path) -> None:
    base = tiny_models["llava"]
    adapter = check_adapter(save_adapter(base, tmp_path / "r8", default_lora(base, 8)), str(base))
    assert (adapter.rank, adapter.max_lora_rank, adapter.has_weights) == (8, 8, True)
    adapter = check_adapter(save_adapter(base, tmp_path / "r20", default_lora(base, 20)), str(base))
    assert (adapter.rank, adapter.max_lora_rank) == (20, 32)  # vLLM's next allowed max_lora_rank


def test_untrained_adapter_is_flagged_as_weightless(tiny_models, tmp_path: Path) -> None:
    base = tiny_models["llava"]
    folder = tmp_path / "zero"
    model = get_peft_model(AutoModelForImageTextToText.from_pretrained(base), default_lora(base))
    model.save_pretrained(folder)  # PEFT initialises B to zero: the adapter changes nothing
    assert check_adapter(folder, str(base)).has_weights is False


@pytest.mark.parametrize(
    ("family", "lora", "named"),
    [
        # vLLM wraps only the language model's projections by default; the rest it skips with a log line.
        ("llava", {"target_modules": r".*vision_tower.*\.(q_proj|v_proj)"}, "the vision tower"),
        ("llava", {"target_modules": r".*multi_modal_projector\.linear_1"}, "the projector"),
        ("qwen2_5_vl", {"target_modules": r".*visual\.blocks\.\d+\.attn\.qkv"}, "the vision tower"),
        ("qwen2_5_vl", {"target_modules": r".*visual\.merger\.mlp\.0"}, "the projector"),
        ("llava", {"target_modules": ["q_proj", "lm_head"]}, "the output layer (lm_head)"),
        ("llava", {"target_modules": ["q_proj"], "use_dora": True}, "DoRA"),
        ("llava", {"target_modules": ["q_proj"], "modules_to_save": ["lm_head"]}, "modules_to_save"),
        ("idefics3", {"target_modules": r".*connector\.modality_projection\.proj"}, "the projector"),
    ],
)
def test_adapters_vllm_would_not_apply_in_full_are_refused(
    tiny_models, tmp_path: Path, family: str, lora: dict, named: str
) -> None:
    base = tiny_models[family]
    folder = save_adapter(base, tmp_path / "adapter", LoraConfig(r=4, lora_alpha=8, **lora))
    with pytest.raises(VlsafeError, match="vLLM cannot apply adapter") as error:
        check_adapter(folder, str(base))
    assert named in str(error.value) and "--engine transformers" in str(error.value)


def test_rank_above_vllms_largest_is_refused(tiny_models, tmp_path: Path) -> None:
    base = tiny_models["llava"]
    folder = save_adapter(base, tmp_path / "adapter", default_lora(base))
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps(config | {"rank_pattern": {"q_proj": 1024}}))
    with pytest.raises(VlsafeError, match="rank 1024 is above vLLM's largest max_lora_rank"):
        check_adapter(folder, str(base))


def test_engine_settings_refused_before_vllm_is_needed(tiny_models, tmp_path: Path) -> None:
    config = EvaluationConfig(base_model=str(tiny_models["llava"]), engine="vllm", merge_lora=True)
    with pytest.raises(VlsafeError, match="merge_lora is for the transformers engine"):
        VllmEngine(config)
    with pytest.raises(VlsafeError, match="max_pixels applies to Qwen-VL models only"):
        VllmEngine(dataclasses.replace(config, merge_lora=False, max_pixels=64 * 64))
    with pytest.raises(VlsafeError, match="Unknown engine 'tgi'"):
        generate_suite(dataclasses.replace(config, engine="tgi"), {})


@pytest.mark.skipif(HAS_VLLM, reason="checks the message shown where vLLM is not installed")
def test_engine_vllm_without_vllm_says_how_to_install(tiny_models) -> None:
    with pytest.raises(VlsafeError, match=r"pip install 'vlsafe\[vllm\]'"):
        VllmEngine(EvaluationConfig(base_model=str(tiny_models["llava"]), engine="vllm"))


def test_vllm_fixture_has_vllm_sized_heads_and_the_hub_layout(tmp_path: Path) -> None:
    folder = build_vllm_tiny_vlm("llava", tmp_path / "llava")
    with safe_open(folder / "model.safetensors", framework="pt") as weights:
        names = list(weights.keys())
    assert any(
        n.startswith("vision_tower.vision_model.embeddings.") for n in names
    )  # as llava-hf/* on the Hub
    assert not any(n.startswith("vision_tower.embeddings.") for n in names)  # transformers 5's own save
    model, info = AutoModelForImageTextToText.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]  # every weight loaded, none left random
    text = model.config.get_text_config()
    assert (text.hidden_size, text.num_attention_heads, text.head_dim) == (64, 2, 32)  # vLLM CPU: head >= 32


# -- records, prompts, probe (no vLLM needed) ----------------------------------------------------------------


def test_answer_record_counts_and_cuts_by_the_token_ids(tiny_models) -> None:
    processor = AutoProcessor.from_pretrained(tiny_models["llava"])
    tokenizer = processor.tokenizer
    eos, pad = {tokenizer.eos_token_id}, tokenizer.pad_token_id
    words = tokenizer.encode("The triangle is blue.", add_special_tokens=False)
    ended = answer_record([*words, tokenizer.eos_token_id], processor, eos, pad)
    assert ended == {"generation": "The triangle is blue.", "new_tokens": len(words), "truncated": False}
    cut = answer_record(words, processor, eos, pad)
    assert cut == {"generation": "The triangle is blue.", "new_tokens": len(words), "truncated": True}
    padded = answer_record([words[0], pad, *words[1:]], processor, eos, pad)  # pads are not counted
    assert padded["new_tokens"] == len(words) and padded["generation"] == "The triangle is blue."


def test_vllm_prompt_is_the_processors_rendering_and_mirrors_its_bos_rule(tiny_models) -> None:
    processor = AutoProcessor.from_pretrained(tiny_models["llava"])
    image = Image.new("RGB", (32, 32), (255, 0, 0))
    row = {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi?"}]}]}
    prompt, tokenization = vllm_prompt(processor, row | {"images": [image]})
    assert prompt == {"prompt": "USER: <image>\nHi? ASSISTANT:", "multi_modal_data": {"image": [image]}}
    assert tokenization == {}  # the template has no BOS: the tokenizer adds it, in vLLM as in transformers
    processor.chat_template = "{{ bos_token }}" + processor.chat_template
    text_only = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi?"}]}], "images": []}
    prompt, tokenization = vllm_prompt(processor, text_only)
    assert prompt == {"prompt": "<s>USER: Hi? ASSISTANT:"} and tokenization == {"add_special_tokens": False}


def test_vllm_prompt_defuses_placeholders_as_the_transformers_engine_does(tiny_models) -> None:
    processor = AutoProcessor.from_pretrained(tiny_models["llava"])
    image = Image.new("RGB", (32, 32), (255, 0, 0))
    text = "What does <image> mean in a prompt?"  # a benchmark question that spells out the placeholder
    row = {
        "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}],
        "images": [image],
    }
    prompt, _ = vllm_prompt(processor, row)
    assert prompt["prompt"] == "USER: <image>\nWhat does < image> mean in a prompt? ASSISTANT:"
    plain = row | {
        "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
    }
    image_tokens = processor_token_ids(processor, plain).count(processor.image_token_id)
    assert image_tokens > 0  # one image's worth, not two (undefused, the processor counts a second image)
    assert processor_token_ids(processor, row).count(processor.image_token_id) == image_tokens


def test_distribution_change() -> None:
    base = {1: -0.5, 2: -1.5}
    assert _distribution_change(base, dict(base)) == 0.0
    assert _distribution_change(base, {1: -0.4, 2: -1.7}) == pytest.approx(0.2)
    assert _distribution_change(base, {2: -0.5, 1: -1.5}) == float("inf")  # another top token
    assert _distribution_change(base, {1: -0.5, 3: -1.5}) == float("inf")  # another top-k set


# -- the engine-mixing rule (no vLLM needed) ------------------------------------------------------------------


def test_a_store_of_the_other_engine_is_refused_or_kept_when_allowed(tiny_models, tmp_path: Path) -> None:
    config = EvaluationConfig(base_model=str(tiny_models["llava"]), output_dir=str(tmp_path))
    folder, name = tmp_path / "generations", "base-vlguard"

    class Named:  # the settings rule of both engines, under each engine's name
        def __init__(self, engine_name: str):
            self.name, self.config = engine_name, config

    stored = TransformersEngine.settings(Named("transformers"), "base") | source_settings(config, "vlguard")
    RecordStore(folder, name, stored).put("vlguard/unsafes/1", {"generation": "no", "new_tokens": 1})
    wanted = TransformersEngine.settings(Named("vllm"), "base") | source_settings(config, "vlguard")
    assert wanted == stored | {"engine": "vllm"}

    with pytest.raises(
        VlsafeError, match="generated by the transformers engine; this run uses the vllm"
    ) as error:
        mixed_engine_settings(folder, name, wanted, allow_mixed_engines=False)
    assert "--allow_mixed_engines true" in str(error.value) and "--resume false" in str(error.value)

    kept = mixed_engine_settings(folder, name, wanted, allow_mixed_engines=True)
    assert kept == stored
    assert "vlguard/unsafes/1" in RecordStore(folder, name, kept)  # resumed: only missing answers are made

    other = wanted | {"max_new_tokens": 8}  # a real change too: left to RecordStore, which refuses it
    assert mixed_engine_settings(folder, name, other, allow_mixed_engines=True) == other
    assert mixed_engine_settings(tmp_path / "empty", name, wanted, allow_mixed_engines=False) == wanted


def test_each_data_parallel_process_pins_its_own_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU side of data parallelism, on the environment alone (no GPU here): process k's engine starts on
    GPUs k*tp..k*tp+tp-1 of the visible ones, and the setting is restored for training or judging after."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    second = SimpleNamespace(num_processes=2, local_process_index=1)
    with _pinned_devices(second, 2):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")  # a launcher's own choice is sliced, not replaced
    with _pinned_devices(second, 1):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "4,5,6,7"
    with pytest.raises(VlsafeError, match="2 processes x tensor_parallel_size 4 need 8 GPUs; 4 are visible"):
        with _pinned_devices(second, 4):
            pass


# -- equality with the transformers engine (vLLM needed) -----------------------------------------------------


@pytest.fixture(scope="module")
def vllm_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Per family: a vLLM-servable tiny model and a random non-zero LoRA adapter on its language model."""
    root = tmp_path_factory.mktemp("vllm-models")
    models = {}
    for family in VLLM_FAMILIES:
        base = build_vllm_tiny_vlm(family, root / family)
        models[family] = (base, save_adapter(base, root / f"{family}-lora", default_lora(base)))
    return models


def _configs(
    base: Path, adapter: Path, vlguard: Path, out: Path
) -> tuple[EvaluationConfig, EvaluationConfig]:
    transformers = EvaluationConfig(
        base_model=str(base),
        adapter=str(adapter),
        dataset=str(vlguard),
        dtype="float32",  # vLLM's "auto" would run a float32 checkpoint in half precision
        max_new_tokens=24,
        limit=3,  # per subset: 9 prompts
        batch_size=4,
        output_dir=str(out / "transformers"),
    )
    return transformers, dataclasses.replace(transformers, engine="vllm", output_dir=str(out / "vllm"))


@needs_vllm
@pytest.mark.slow
@pytest.mark.parametrize("family", VLLM_FAMILIES)
def test_vllm_answers_equal_the_transformers_engines(
    vllm_models, synthetic_vlguard: Path, tmp_path: Path, family: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM's CPU default takes most of the memory
    base, adapter = vllm_models[family]
    transformers_config, vllm_config = _configs(base, adapter, synthetic_vlguard, tmp_path)
    suite = load_suite(transformers_config)
    expected = generate_suite(transformers_config, suite)

    engine = VllmEngine(vllm_config)
    with engine.answering("base", suite):  # starts vLLM and passes the adapter check
        probe = [suite["vlguard"][i] for i in range(2)]
        # The failure lm-evaluation-harness once had: tuned requests reaching the engine without their LoRA.
        with pytest.raises(VlsafeError, match="vLLM is not applying it"):
            engine.check_adapter_applied(probe, None)
    answers = generate_suite(vllm_config, suite, engine=engine)

    assert answers == expected  # every record: answer text, new_tokens, truncated; base and tuned
    tuned, untuned = answers["tuned"]["vlguard"], answers["base"]["vlguard"]
    assert (
        sum(a["generation"] != b["generation"] for a, b in zip(tuned, untuned, strict=True))
        >= len(tuned) // 2
    )
    stored = (tmp_path / "vllm" / "generations" / "tuned-vlguard.rank0.jsonl").read_text().splitlines()
    assert json.loads(stored[0])["header"]["engine"] == "vllm" and len(stored) == 1 + len(tuned)


# -- parallel runs (vLLM needed): the recipe in one process, then data- and tensor-parallel -----------------------

RECIPE = str(REPO / "recipes/evaluate_safety.py")


def _samples(output_dir: Path) -> list[dict]:
    return json.loads((output_dir / "results.json").read_text())["samples"]


@pytest.fixture(scope="module")
def vllm_recipe_args(
    vllm_models, synthetic_vlguard: Path, tmp_path_factory: pytest.TempPathFactory
) -> list[str]:
    base, adapter = vllm_models["llava"]
    # A copy: the recipe writes the adapter's card into its folder.
    adapter = shutil.copytree(adapter, tmp_path_factory.mktemp("vllm-recipe") / "adapter")
    return ["--base_model", str(base), "--adapter", str(adapter), "--dataset", str(synthetic_vlguard),
            "--dtype", "float32", "--engine", "vllm", "--max_new_tokens", "12", "--limit", "3",
            "--batch_size", "4", "--judges", "keyword"]  # fmt: skip


@pytest.fixture(scope="module")
def one_process_samples(vllm_recipe_args, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """The recipe's samples from one process and one engine on one device: what the parallel runs must give."""
    root = tmp_path_factory.mktemp("vllm-one-process")
    run_checked(
        [sys.executable, RECIPE, *vllm_recipe_args, "--output_dir", "out"], root, 900, VLLM_PROCESS_ENV
    )
    samples = _samples(root / "out")
    assert len(samples) == 2 * 3 * 3  # base and tuned, 3 subsets of 3
    base, tuned = ([s["generation"] for s in samples if s["model"] == m] for m in ("base", "tuned"))
    assert sum(a != b for a, b in zip(base, tuned, strict=True)) >= 3  # the adapter acts
    return samples


@needs_vllm
@pytest.mark.slow
def test_data_parallel_vllm_answers_match_one_process(
    vllm_recipe_args, one_process_samples, tmp_path: Path
) -> None:
    """Two processes, an engine each (vLLM's CPU build here, a GPU each on a GPU machine): every process probes
    that its engine applies the adapter, and the gathered answers are the single process's, in order. The failure
    lm-evaluation-harness once had was here: LoRA requests dropped under data parallelism."""
    env = VLLM_PROCESS_ENV | {"ACCELERATE_USE_CPU": "true"}
    command = [*torchrun(2), RECIPE, *vllm_recipe_args, "--output_dir", "parallel"]
    launched = run_checked(command, tmp_path, timeout=900, env=env)

    assert _samples(tmp_path / "parallel") == one_process_samples
    log = launched.stdout + launched.stderr
    assert log.count("Starting vLLM on") == 2 and log.count("Adapter check: with the adapter") == 2
    shards = sorted((tmp_path / "parallel" / "generations").glob("*.jsonl"))
    expected = [f"{variant}-vlguard.rank{rank}.jsonl" for variant in ("base", "tuned") for rank in (0, 1)]
    assert [shard.name for shard in shards] == expected
    for shard in shards:  # each process stored its own share, under the engine's name
        header, *records = shard.read_text().splitlines()
        assert json.loads(header)["header"]["engine"] == "vllm" and records


@needs_vllm
@pytest.mark.slow
@pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2, reason="tensor parallelism needs a core per vLLM worker"
)
def test_tensor_parallel_vllm_answers_match_one_device(
    vllm_recipe_args, one_process_samples, tmp_path: Path
) -> None:
    """--tensor_parallel_size 2 reaches vLLM (two workers share the model's layers and the adapter's LoRA
    shards) and gives the one-device answers. On vLLM's CPU build each worker is bound to its own cores
    (VLLM_CPU_OMP_THREADS_BIND; its automatic binding wants a NUMA node per worker)."""
    cores = sorted(os.sched_getaffinity(0))
    halves = (cores[: len(cores) // 2], cores[len(cores) // 2 :])
    env = VLLM_PROCESS_ENV | {"VLLM_CPU_OMP_THREADS_BIND": "|".join(",".join(map(str, h)) for h in halves)}
    command = [sys.executable, RECIPE, *vllm_recipe_args, "--tensor_parallel_size", "2", "--output_dir", "tp"]
    launched = run_checked(command, tmp_path, timeout=900, env=env)
    assert "(tensor_parallel_size 2, " in launched.stdout + launched.stderr
    # The layout is no setting of the stored answers (like batch_size): a run may resume on other devices.
    assert _samples(tmp_path / "tp") == one_process_samples
