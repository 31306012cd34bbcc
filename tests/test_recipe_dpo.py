"""recipes/dpo_safety.py has what the SFT recipes have: training_summary.json with the pairs' provenance, the model
card, the one-commit push (no Trainer push, no TRL card), resume, full fine-tuning and auto_speed.

The recipe runs in this process on the tiny LLaVA (8 VLGuard prompts, 4-token on-policy answers, 1-2 steps).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from peft import get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText
from trl import DPOConfig, TrlParser

from tests.conftest import REPO, VLLM_PROCESS_ENV, needs_vllm, run_checked, torchrun
from vlsafe.data.preferences import build_preference_pairs
from vlsafe.data.vlguard import load_vlguard
from vlsafe.errors import DataError, VlsafeError
from vlsafe.modeling import FAMILIES, family_of, load_model, load_processor, lora_config, model_part
from vlsafe.training import build_dpo_trainer, load_for_training

TOKEN = "hf_dpo_FAKE_token_2e7b"


def _recipe():
    spec = importlib.util.spec_from_file_location("recipe_dpo_safety", REPO / "recipes/dpo_safety.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


DPO = _recipe()


def parse(model: Path, vlguard: Path, out: Path, *flags: str) -> tuple:
    """The recipe's arguments as its parser reads them: the tiny config, a fresh LoRA, 8 prompts, one step."""
    argv = ["--config", str(REPO / "recipes/configs/tiny/dpo_safety.yaml"), "--model_name_or_path", str(model),
            "--dataset", str(vlguard), "--output_dir", str(out), "--use_cpu", "true", "--sft_adapter", "",
            "--max_prompts", "8", "--generation_max_new_tokens", "4", "--generation_batch_size", "8",
            "--max_steps", "1", "--per_device_train_batch_size", "2", "--logging_steps", "1", *flags]  # fmt: skip
    return TrlParser((DPO.DPOSafetyArguments, DPOConfig, DPO.ModelArguments)).parse_args_and_config(args=argv)


def run(model: Path, vlguard: Path, out: Path, *flags: str) -> dict:
    DPO.main(*parse(model, vlguard, out, *flags))
    return json.loads((out / "training_summary.json").read_text())


@pytest.mark.slow
def test_dpo_writes_summary_and_card_and_pushes_once(
    hub_server, tiny_models, synthetic_vlguard: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub_server.add_user("alice", TOKEN)
    monkeypatch.delenv("HF_TOKEN", raising=False)  # the token comes as --hub_token, as some users pass it
    out = tmp_path / "dpo"
    summary = run(
        tiny_models["llava"], synthetic_vlguard, out, "--license", "apache-2.0", "--push_to_hub", "true",
        "--hub_model_id", "alice/tiny-dpo", "--hub_token", TOKEN, "--save_pairs", str(tmp_path / "pairs"),
    )  # fmt: skip

    assert (summary["recipe"], summary["method"], summary["continued_from"]) == ("dpo_safety", "dpo", None)
    assert summary["base_model"]["name_or_path"] == str(tiny_models["llava"])
    assert summary["dpo"] == {
        "beta": 0.5,
        "loss_type": ["sigmoid"],
        "reference": "the base model (adapter disabled)",
    }
    assert summary["datasets"] == [
        {"role": "preference prompts", "source": str(synthetic_vlguard), "split": "train", "samples": 8}
    ]
    assert summary["recipe_settings"]["on_policy"] is True and summary["lora"]["r"] == 16
    pairs = summary["preference_pairs"]
    from datasets import load_dataset

    saved = load_dataset("parquet", data_files=str(tmp_path / "pairs/data/*.parquet"), split="train")
    assert pairs["total"] == len(saved) == summary["samples"]["total"]
    assert pairs["by_rejected_source"] == dict(Counter(saved["rejected_source"]))
    harmful = sum(kind in {"unsafe", "safe_unsafe"} for kind in saved["kind"])
    assert (pairs["harmful"], pairs["safe"], pairs["imported"]) == (harmful, len(saved) - harmful, 0)
    assert harmful and pairs["safe"]  # harmful_fraction 0.5 balances both kinds
    assert "on_policy" in pairs["by_rejected_source"]  # the random-weight policy complies: its own answer

    repo = hub_server.repos[("model", "alice/tiny-dpo")]
    assert len(repo.history()) == 2  # the repo's first commit and one push at the end, none per save
    files = repo.files()
    assert {"README.md", "training_summary.json", "adapter_model.safetensors", "adapter_config.json"} <= set(
        files
    )
    assert not any(
        name.startswith(("checkpoint-", "ref/", "pair_generations")) or ".bin" in name for name in files
    )
    card = ModelCard(files["README.md"].data.decode())
    assert card.data.library_name == "peft" and card.data.license == "apache-2.0"
    assert {"vlsafe", "safety", "dpo", "lora"} <= set(card.data.tags)  # vlsafe's card, not TRL's
    assert (
        "DPO safety tuning" in card.text
        and "(`dpo_safety`)" in card.text
        and "DPO loss (beta 0.5)" in card.text
    )
    assert f"{pairs['total']} preference pairs: {harmful} from harmful prompts" in card.text
    for row in pairs["by_kind_and_rejected_source"]:
        assert f"| {row['kind']} | {row['rejected_source']} | {row['pairs']} |" in card.text
    assert "`on_policy`: the model's own answer" in card.text and "| DPO beta | 0.5 |" in card.text
    assert 'from_pretrained("alice/tiny-dpo")' in card.text
    leaked = [p for p in out.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    assert not leaked


@pytest.mark.slow
def test_dpo_continues_an_sft_adapter_against_a_frozen_copy_and_resumes(
    tiny_models, synthetic_vlguard: Path, tmp_path: Path, caplog
) -> None:
    sft = tmp_path / "sft"
    model = load_model(str(tiny_models["llava"]), dtype="float32")
    get_peft_model(model, lora_config(family_of("llava"), r=8, alpha=16)).save_pretrained(sft)
    load_processor(str(tiny_models["llava"])).save_pretrained(sft)
    with pytest.raises(
        VlsafeError, match=r"lora_r=4 does not apply: the continued adapter .* keeps its own r=8"
    ):
        DPO.main(
            *parse(
                tiny_models["llava"],
                synthetic_vlguard,
                tmp_path / "x",
                "--sft_adapter",
                str(sft),
                "--lora_r",
                "4",
            )
        )

    out = tmp_path / "dpo"
    flags = ("--sft_adapter", str(sft), "--save_strategy", "steps", "--save_steps", "1")
    summary = run(tiny_models["llava"], synthetic_vlguard, out, *flags)
    assert summary["continued_from"] == str(sft) and summary["lora"]["r"] == 8
    assert summary["dpo"]["reference"] == "frozen copy of the continued adapter"
    assert not (out / "ref").exists()  # TRL's reference adapter is no part of the result
    before, after = load_file(sft / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    assert f"Started from the adapter `{sft}`" in (out / "README.md").read_text()

    # Re-running with more steps (as after an interruption) continues from the newest complete checkpoint.
    with caplog.at_level(logging.INFO):
        again = run(tiny_models["llava"], synthetic_vlguard, out, *flags, "--max_steps", "2")
    assert f"Resuming the interrupted run from {out / 'checkpoint-1'}" in caplog.text
    assert again["training"]["global_steps"] == 2 and again["preference_pairs"] == summary["preference_pairs"]
    assert not (out / "ref").exists() and again["dpo"]["reference"] == "frozen copy of the continued adapter"


@pytest.mark.slow
def test_dpo_full_finetuning_trains_the_language_model_against_a_frozen_copy(
    tiny_models, synthetic_vlguard: Path, tmp_path: Path
) -> None:
    out = tmp_path / "dpo"
    summary = run(tiny_models["qwen2_5_vl"], synthetic_vlguard, out, "--use_peft", "false")
    assert summary["finetuning"]["method"] == "full" and summary["finetuning"]["frozen_parts"] == [
        "vision_tower",
        "projector",
    ]
    assert summary["dpo"]["reference"] == "frozen copy of the starting weights"
    assert not (out / "adapter_config.json").exists()
    spec = FAMILIES["qwen2_5_vl"]
    base = dict(AutoModelForImageTextToText.from_pretrained(tiny_models["qwen2_5_vl"]).named_parameters())
    tuned = dict(AutoModelForImageTextToText.from_pretrained(out).named_parameters())
    for name, parameter in base.items():
        assert torch.equal(parameter, tuned[name]) == (model_part(spec, name) != "language_model"), name
    card = (out / "README.md").read_text()
    assert "full fine-tuning of the language model (" in card and "vision tower and projector frozen" in card
    assert "DPO reference model | frozen copy of the starting weights" in card


def test_full_finetuning_cannot_continue_an_adapter(
    tiny_models, synthetic_vlguard: Path, tmp_path: Path
) -> None:
    data_args, training_args, model_args = parse(
        tiny_models["llava"],
        synthetic_vlguard,
        tmp_path,
        "--use_peft",
        "false",
        "--sft_adapter",
        str(tmp_path),
    )
    with pytest.raises(
        VlsafeError, match="use_peft false with the adapter .* cannot continue a LoRA adapter"
    ):
        load_for_training(model_args, training_args, adapter=data_args.sft_adapter)
    model_args.use_peft = True  # a folder without adapter_config.json is no adapter
    with pytest.raises(VlsafeError, match="is no adapter"):
        load_for_training(model_args, training_args, adapter=str(tmp_path))


@pytest.mark.parametrize("auto_speed", [True, False])
def test_dpo_trainer_drops_too_long_pairs_and_chooses_speed_settings(
    auto_speed: bool, tiny_models, synthetic_vlguard: Path, tmp_path: Path, caplog
) -> None:
    _, training_args, model_args = parse(
        tiny_models["llava"],
        synthetic_vlguard,
        tmp_path,
        "--gradient_checkpointing",
        "true",
        "--max_length",
        "55",
    )
    pairs = build_preference_pairs(list(load_vlguard(synthetic_vlguard, "train")), None)
    model, processor, peft_config = load_for_training(model_args, training_args)
    with caplog.at_level(logging.INFO):
        trainer = build_dpo_trainer(
            pairs, training_args, model_args, model, processor, peft_config, auto_speed=auto_speed
        )
    assert 0 < len(trainer.train_dataset) < len(pairs)  # the long refusal answers do not fit in 55 tokens
    assert (
        f"Left out {len(pairs) - len(trainer.train_dataset)} of {len(pairs)} samples longer than max_length=55"
        in caplog.text
    )
    assert (
        trainer.args.gradient_checkpointing is not auto_speed
    )  # CPU: off with auto_speed, as configured without
    training_args.max_length = 5
    with pytest.raises(DataError, match="All .* samples are longer than max_length=5"):
        build_dpo_trainer(pairs, training_args, model_args, model, processor, peft_config, auto_speed=False)


def test_dpo_refuses_generation_engines_whose_pairs_would_not_be_on_policy(
    tiny_models, synthetic_vlguard: Path, tmp_path: Path
) -> None:
    model = tiny_models["llava"]
    with pytest.raises(VlsafeError, match="Unknown generation_engine 'tgi'; choose transformers or vllm"):
        DPO.main(*parse(model, synthetic_vlguard, tmp_path, "--generation_engine", "tgi"))
    data_args, _, model_args = parse(
        model, synthetic_vlguard, tmp_path, "--generation_engine", "vllm", "--load_in_4bit", "true"
    )
    with pytest.raises(VlsafeError, match="trains a quantized policy") as error:
        DPO.check_generation_engine(data_args, model_args)
    assert "generation_engine transformers" in str(error.value)


@needs_vllm
@pytest.mark.slow
def test_dpo_on_policy_answers_on_vllm_equal_the_transformers_engines(
    vllm_llava, synthetic_vlguard: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM's CPU default takes most of the memory
    base, adapter = vllm_llava
    sft = shutil.copytree(adapter, tmp_path / "sft")
    load_processor(str(base)).save_pretrained(sft)  # an SFT output folder holds its processor
    flags = ("--sft_adapter", str(sft), "--generation_max_new_tokens", "12")
    expected = run(base, synthetic_vlguard, tmp_path / "transformers", *flags)
    seen = {}

    class Recording(DPO.VllmGenerator):  # the real engine; what it was started with is read before it closes
        def close(self) -> None:
            seen["max_model_len"] = self.llm.llm_engine.model_config.max_model_len
            super().close()

    monkeypatch.setattr(DPO, "VllmGenerator", Recording)
    with caplog.at_level(logging.INFO):
        vllm_flags = ("--generation_engine", "vllm", "--vllm_max_model_len", "1024")
        summary = run(base, synthetic_vlguard, tmp_path / "vllm", *flags, *vllm_flags)
    assert "Starting vLLM on" in caplog.text
    assert "Adapter check: with the adapter" in caplog.text  # probed first
    assert seen == {"max_model_len": 1024}  # the flag reached the engine (the model allows 2048)
    assert summary["recipe_settings"]["generation_engine"] == "vllm"

    def stored(out: Path) -> tuple[dict, dict[str, dict]]:
        """The store's header and its records by key (each engine stores in the order it finished)."""
        header, *records = [
            json.loads(line) for line in (out / "pair_generations" / "policy.rank0.jsonl").open()
        ]
        return header["header"], {record.pop("key"): record for record in records}

    (tf_header, tf_records), (vllm_header, vllm_records) = (
        stored(tmp_path / "transformers"),
        stored(tmp_path / "vllm"),
    )
    assert vllm_header == tf_header | {"engine": "vllm"}
    assert vllm_records == tf_records and len(vllm_records) == 8  # the policy's answers, record for record
    assert summary["preference_pairs"] == expected["preference_pairs"]
    # The answers are the adapter's: the base policy (a fresh LoRA, no SFT adapter) answers otherwise.
    run(base, synthetic_vlguard, tmp_path / "base", "--generation_max_new_tokens", "12")
    _, base_records = stored(tmp_path / "base")
    assert sum(base_records[key] != vllm_records[key] for key in vllm_records) >= len(vllm_records) // 2


@needs_vllm
@pytest.mark.slow
def test_data_parallel_dpo_pairs_on_vllm_match_one_process(
    vllm_llava, synthetic_vlguard: Path, tmp_path: Path
) -> None:
    """DPO under `torchrun --nproc_per_node 2` with on-policy answers from vLLM: each process starts an engine,
    probes that the SFT adapter is applied and answers its share; the policy's answers and the pairs are the
    single process's, and the DPO step then trains in both processes."""
    base, adapter = vllm_llava
    sft = shutil.copytree(adapter, tmp_path / "sft")
    load_processor(str(base)).save_pretrained(sft)
    args = ["--config", str(REPO / "recipes/configs/tiny/dpo_safety.yaml"), "--model_name_or_path", str(base),
            "--dataset", str(synthetic_vlguard), "--use_cpu", "true", "--sft_adapter", str(sft),
            "--max_prompts", "8", "--generation_max_new_tokens", "12", "--generation_batch_size", "8",
            "--max_steps", "1", "--per_device_train_batch_size", "2", "--logging_steps", "1",
            "--generation_engine", "vllm", "--vllm_max_model_len", "1024"]  # fmt: skip
    recipe = str(REPO / "recipes/dpo_safety.py")
    run_checked([sys.executable, recipe, *args, "--output_dir", "single"], tmp_path, 900, VLLM_PROCESS_ENV)
    launched = run_checked(
        [*torchrun(2), recipe, *args, "--output_dir", "parallel"],
        tmp_path,
        timeout=900,
        env=VLLM_PROCESS_ENV | {"ACCELERATE_USE_CPU": "true"},
    )

    def answers(out: Path) -> dict[str, dict]:
        """The policy's stored answers by key, over every process's shard."""
        records = {}
        for shard in sorted((out / "pair_generations").glob("policy.rank*.jsonl")):
            header, *lines = shard.read_text().splitlines()
            assert json.loads(header)["header"]["engine"] == "vllm"
            records |= {record.pop("key"): record for record in map(json.loads, lines)}
        return records

    single, parallel = answers(tmp_path / "single"), answers(tmp_path / "parallel")
    assert parallel == single and len(single) == 8
    assert len(list((tmp_path / "parallel" / "pair_generations").glob("policy.rank*.jsonl"))) == 2
    log = launched.stdout + launched.stderr
    assert log.count("Adapter check: with the adapter") == 2  # every process's engine was probed
    summaries = [
        json.loads((tmp_path / out / "training_summary.json").read_text()) for out in ("single", "parallel")
    ]
    assert summaries[1]["preference_pairs"] == summaries[0]["preference_pairs"]
    assert (tmp_path / "parallel" / "adapter_model.safetensors").exists()
