"""Every ModelConfig / SFTConfig flag the recipes parse does what it says, or is refused with a message naming it.

Flags go through the recipes' own parser (trl.TrlParser with the recipe's dataclasses and the tiny YAML config),
then through the code the recipes run: full fine-tuning (`--use_peft false`) trains the language model and
nothing else and saves full safetensors weights; LoRA flags reach the PeftModel's config; quantization flags
reach the BitsAndBytesConfig handed to from_pretrained (bitsandbytes is not installed here, so that object is
inspected, and the missing extra gives a clear error).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard, snapshot_download
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor, BitsAndBytesConfig
from trl import SFTConfig, TrlParser

from tests.conftest import REPO
from vlsafe.cards import is_full_model
from vlsafe.data.vlguard import load_vlguard
from vlsafe.errors import VlsafeError
from vlsafe.hub import push_to_hub
from vlsafe.modeling import FAMILIES, family_of, lora_target_modules, model_part
from vlsafe.training import build_sft_trainer, load_for_training, model_init_kwargs, take_over_hub_push

TOKEN = "hf_flags_FAKE_token_81c2"


def recipe(name: str):
    """A recipe script as a module (its dataclasses and main), as `python recipes/<name>.py` runs it."""
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", REPO / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


SFT = recipe("sft_vlguard")


def parse(model: Path | str, out: Path, *flags: str) -> tuple:
    """(data, training, model) arguments of sft_vlguard as its parser reads them: the tiny config, `model`,
    `flags`, on the CPU."""
    argv = ["--config", str(REPO / "recipes/configs/tiny/sft_vlguard.yaml"), "--model_name_or_path", str(model),
            "--output_dir", str(out), "--use_cpu", "true", *flags]  # fmt: skip
    parser = TrlParser((SFT.VLGuardArguments, SFTConfig, SFT.ModelArguments))
    return parser.parse_args_and_config(args=argv)


def _parts(model, family: str) -> dict[str, dict[str, torch.Tensor]]:
    spec = FAMILIES[family]
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for name, parameter in model.named_parameters():
        parts.setdefault(model_part(spec, name), {})[name] = parameter.detach().clone()
    return parts


@pytest.mark.slow
@pytest.mark.parametrize(
    ("family", "flags", "trained"),
    [
        ("llava", (), {"language_model"}),
        ("qwen2_5_vl", ("--train_projector", "true"), {"language_model", "projector"}),  # projector nested
    ],
)
def test_use_peft_false_fully_fine_tunes_the_language_model_and_saves_full_weights(
    family: str, flags: tuple, trained: set, tiny_models, synthetic_vlguard: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    data_args, training_args, model_args = parse(
        tiny_models[family], out, "--use_peft", "false", "--dataset", str(synthetic_vlguard),
        "--helpful_dataset", "", "--max_steps", "1", "--per_device_train_batch_size", "2", "--warmup_steps", "0",
        *flags,
    )  # fmt: skip
    assert model_args.use_peft is False
    SFT.main(data_args, training_args, model_args)

    assert not (out / "adapter_config.json").exists() and is_full_model(out)
    assert {"model.safetensors", "config.json", "chat_template.jinja"} <= {p.name for p in out.iterdir()}
    assert not list(out.glob("*.bin"))
    base = _parts(AutoModelForImageTextToText.from_pretrained(tiny_models[family]), family)
    tuned = _parts(AutoModelForImageTextToText.from_pretrained(out), family)
    for part, parameters in base.items():
        for name, before in parameters.items():
            moved = not torch.equal(before, tuned[part][name])
            assert moved == (part in trained), (part, name)  # every trained tensor moved, no frozen one did
    assert (
        type(AutoProcessor.from_pretrained(out)).__name__
        == type(AutoProcessor.from_pretrained(tiny_models[family])).__name__
    )

    summary = json.loads((out / "training_summary.json").read_text())
    count = sum(t.numel() for part in trained for t in base[part].values())
    assert summary["finetuning"] == {
        "method": "full",
        "trained_parameters": count,
        "total_parameters": sum(t.numel() for p in base.values() for t in p.values()),
        "trained_parts": [p for p in ("language_model", "vision_tower", "projector") if p in trained],
        "frozen_parts": [p for p in ("language_model", "vision_tower", "projector") if p not in trained],
    }
    assert "lora" not in summary
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "transformers" and "lora" not in card.data.tags
    frozen = "vision tower frozen" if "projector" in trained else "vision tower and projector frozen"
    what = "language model and projector" if "projector" in trained else "language model"
    assert f"full fine-tuning of the {what} ({count:,} parameters trained), {frozen}" in card.text
    assert "PeftModel" not in card.text and "LoRA rank" not in card.text


@pytest.mark.slow
def test_full_weights_push_in_one_commit_and_load_from_the_hub(
    hub_server, tiny_models, synthetic_vlguard: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fully fine-tuned output folder publishes its safetensors weights (no pickles) and its card, and loads
    from the Hub with AutoModelForImageTextToText."""
    hub_server.add_user("alice", TOKEN)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    out = tmp_path / "out"
    data_args, training_args, model_args = parse(
        tiny_models["llava"], out, "--use_peft", "false", "--dataset", str(synthetic_vlguard), "--helpful_dataset", "",
        "--max_steps", "1", "--per_device_train_batch_size", "2", "--warmup_steps", "0",
        "--push_to_hub", "true", "--hub_model_id", "alice/full",
    )  # fmt: skip
    (out).mkdir()
    (out / "stale.bin").write_bytes(b"\x80\x04pickle")  # a pickle in the folder is never published
    SFT.main(data_args, training_args, model_args)

    repo = hub_server.repos[("model", "alice/full")]
    assert len(repo.history()) == 2  # the repo's first commit and vlsafe's single push
    files = set(repo.files())
    assert {"model.safetensors", "config.json", "README.md", "training_summary.json"} <= files
    assert "adapter_config.json" not in files and not any(name.endswith(".bin") for name in files)
    card = ModelCard(repo.files()["README.md"].data.decode())
    assert card.data.model_name == "full" and 'from_pretrained("alice/full")' in card.text

    local = snapshot_download("alice/full")
    published = AutoModelForImageTextToText.from_pretrained(local).state_dict()
    trained = AutoModelForImageTextToText.from_pretrained(out).state_dict()
    assert published.keys() == trained.keys()
    assert all(torch.equal(published[name], tensor) for name, tensor in trained.items())
    assert [c.title for c in HfApi().list_repo_commits("alice/full")][0] == "Upload out with vlsafe"


def test_lora_flags_reach_the_peft_config(tiny_models, synthetic_vlguard: Path, tmp_path: Path) -> None:
    data_args, training_args, model_args = parse(
        tiny_models["llava"], tmp_path, "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0.1",
        "--use_rslora", "true", "--use_dora", "true", "--lora_target_modules", "q_proj", "v_proj",
        "--lora_modules_to_save", "lm_head", "--train_projector", "true",
    )  # fmt: skip
    trainer = build_sft_trainer(
        load_vlguard(synthetic_vlguard, "train"), training_args, model_args, data_args
    )
    config = trainer.model.peft_config["default"]
    assert (config.r, config.lora_alpha, config.lora_dropout, config.use_rslora, config.use_dora) == (
        4, 8, 0.1, True, True,
    )  # fmt: skip
    assert config.target_modules == {"q_proj", "v_proj"} and config.task_type == "CAUSAL_LM"
    assert config.modules_to_save == ["lm_head", "multi_modal_projector"]
    trainable = {name for name, p in trainer.model.named_parameters() if p.requires_grad}
    assert any("multi_modal_projector.modules_to_save.default" in name for name in trainable)
    assert not any("vision_tower" in name for name in trainable if "lora_" not in name)


def test_one_target_module_name_is_a_name_not_a_regex(tiny_models, tmp_path: Path) -> None:
    """TRL's parser turns `--lora_target_modules q_proj` into the string 'q_proj', which PEFT would match as a
    regex against full module names (finding none); vlsafe passes it on as the name it is."""
    _, training_args, model_args = parse(
        tiny_models["qwen2_5_vl"], tmp_path, "--lora_target_modules", "q_proj"
    )
    assert model_args.lora_target_modules == "q_proj"
    from peft import get_peft_model

    model, _, config = load_for_training(model_args, training_args)
    wrapped = {
        n for n, m in get_peft_model(model, config).named_modules() if hasattr(m, "lora_A") and m.lora_A
    }
    assert wrapped and all(name.endswith(".q_proj") for name in wrapped)


def test_default_lora_targets_the_language_model_only(tiny_models, tmp_path: Path) -> None:
    from peft import get_peft_model
    from peft.utils.other import match_target_against_key

    _, training_args, model_args = parse(tiny_models["idefics3"], tmp_path)
    assert model_args.use_peft is True  # vlsafe's default; TRL's ModelConfig defaults to full fine-tuning
    model, _, config = load_for_training(model_args, training_args)
    assert all(p.requires_grad for p in model.parameters())  # LoRA (PEFT) freezes the base, not vlsafe
    family = family_of(model)
    # Every linear layer of the text model's decoder layers (attention and MLP), nothing of the vision side.
    expected = {
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and model_part(family, name) == "language_model"
        and re.search(r"\.layers\.\d+\.(self_attn|mlp)\.", name)
    }
    assert expected and any(".vision_model." in name for name, _ in model.named_modules())
    matched = {
        name for name, _ in model.named_modules() if match_target_against_key(config.target_modules, name)
    }
    assert matched == expected
    # The same language model named from the root (as a family recognised from a model's structure names it)
    # is the same set of layers: the regex's prefix before the submodule's name is optional.
    from_root = dataclasses.replace(family, language_model="model.text_model")
    regex = lora_target_modules(from_root)
    assert {name for name, _ in model.named_modules() if match_target_against_key(regex, name)} == expected
    wrapped = {
        name.removeprefix("base_model.model.")
        for name, module in get_peft_model(model, config).named_modules()
        if hasattr(module, "lora_A") and module.lora_A
    }
    assert wrapped == expected


def test_quantization_flags_build_trl_s_bitsandbytes_config(tiny_models, tmp_path: Path) -> None:
    _, training_args, model_args = parse(tiny_models["llava"], tmp_path, "--load_in_8bit", "true")
    kwargs = model_init_kwargs(model_args, training_args)
    assert isinstance(kwargs["quantization_config"], BitsAndBytesConfig)
    assert kwargs["quantization_config"].load_in_8bit and not kwargs["quantization_config"].load_in_4bit
    assert kwargs["device_map"] is None  # CPU here; on a GPU each process's own device

    _, training_args, model_args = parse(
        tiny_models["llava"], tmp_path, "--load_in_4bit", "true", "--bnb_4bit_quant_type", "fp4",
        "--use_bnb_nested_quant", "true", "--bnb_4bit_quant_storage", "uint8", "--dtype", "auto",
    )  # fmt: skip
    quantization = model_init_kwargs(model_args, training_args)["quantization_config"]
    assert quantization.load_in_4bit and quantization.bnb_4bit_quant_type == "fp4"
    assert quantization.bnb_4bit_use_double_quant and quantization.bnb_4bit_quant_storage == torch.uint8
    assert (
        quantization.bnb_4bit_compute_dtype == torch.bfloat16
    )  # dtype auto: TRL's config needs a concrete one
    _, training_args, model_args = parse(tiny_models["llava"], tmp_path)
    assert "quantization_config" not in model_init_kwargs(model_args, training_args)


def test_quantization_without_bitsandbytes_names_the_flag_and_the_extra(
    tiny_models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if not installed (find_spec gives None)
    _, training_args, model_args = parse(tiny_models["llava"], tmp_path, "--load_in_8bit", "true")
    with pytest.raises(VlsafeError, match=r"load_in_8bit needs bitsandbytes.*vlsafe\[quant\]"):
        load_for_training(model_args, training_args)


def test_load_flags_reach_the_model(tiny_models, tmp_path: Path) -> None:
    _, training_args, model_args = parse(
        tiny_models["llava"], tmp_path, "--dtype", "bfloat16", "--attn_implementation", "eager",
        "--model_init_kwargs", '{"low_cpu_mem_usage": true}',
    )  # fmt: skip
    assert model_init_kwargs(model_args, training_args)["low_cpu_mem_usage"] is True
    model, _, _ = load_for_training(model_args, training_args)
    assert model.dtype == torch.bfloat16 and model.config._attn_implementation == "eager"


def test_model_revision_loads_that_revision(hub_server, tiny_models, tmp_path: Path, monkeypatch) -> None:
    hub_server.add_user("alice", TOKEN)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    push_to_hub(tiny_models["llava"], "alice/tiny-llava")
    changed = shutil.copytree(tiny_models["llava"], tmp_path / "v2")
    weights = load_file(changed / "model.safetensors")
    from safetensors.torch import save_file

    save_file({name: tensor + 1 for name, tensor in weights.items()}, changed / "model.safetensors")
    push_to_hub(changed, "alice/tiny-llava", revision="v2")
    head = AutoModelForImageTextToText.from_pretrained(tiny_models["llava"]).lm_head.weight.detach()
    for revision, shift in (("main", 0), ("v2", 1)):
        _, training_args, model_args = parse("alice/tiny-llava", tmp_path, "--model_revision", revision)
        model, _, _ = load_for_training(model_args, training_args)
        assert torch.equal(model.lm_head.weight.detach(), head + shift), revision


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--use_peft", "false", "--load_in_4bit", "true"), "load_in_4bit with use_peft false"),
        (("--use_peft", "false", "--load_in_8bit", "true"), "load_in_8bit with use_peft false"),
        (("--bnb_4bit_quant_type", "fp4"), "bnb_4bit_quant_type only apply to 4-bit loading"),
        (("--use_bnb_nested_quant", "true"), "use_bnb_nested_quant only apply to 4-bit loading"),
        (("--lora_task_type", "SEQ_CLS"), "lora_task_type='SEQ_CLS'"),
    ],
)
def test_flags_that_cannot_work_are_refused_before_loading(flags, message, tmp_path: Path) -> None:
    _, training_args, model_args = parse(tmp_path / "never-loaded", tmp_path, *flags)
    with pytest.raises(VlsafeError, match=message):
        load_for_training(model_args, training_args)


def test_lora_cannot_train_qwen_s_vision_tower_without_its_nested_projector(
    tiny_models, tmp_path: Path
) -> None:
    _, training_args, model_args = parse(tiny_models["qwen2_5_vl"], tmp_path, "--train_vision_tower", "true")
    with pytest.raises(
        VlsafeError, match="train_vision_tower with LoRA on qwen2_5_vl.*--train_projector true"
    ):
        load_for_training(model_args, training_args)
    _, training_args, model_args = parse(
        tiny_models["qwen2_5_vl"], tmp_path, "--train_vision_tower", "true", "--train_projector", "true"
    )
    assert load_for_training(model_args, training_args)[2].modules_to_save == ["visual"]


def test_lora_flags_without_lora_are_named_in_a_warning(tiny_models, tmp_path: Path, caplog) -> None:
    _, training_args, model_args = parse(
        tiny_models["llava"], tmp_path, "--use_peft", "false", "--lora_r", "64"
    )
    model, _, config = load_for_training(model_args, training_args)
    assert (
        config is None
        and "use_peft is false (full fine-tuning): lora_r, lora_dropout do not apply" in caplog.text
    )
    spec = family_of(model.config.model_type)
    assert all(
        p.requires_grad == (model_part(spec, n) == "language_model") for n, p in model.named_parameters()
    )


def test_hub_flags_are_taken_over_or_refused(tmp_path: Path) -> None:
    flags = (
        "--push_to_hub",
        "true",
        "--hub_model_id",
        "alice/x",
        "--hub_token",
        TOKEN,
        "--hub_private_repo",
        "true",
    )
    _, training_args, _ = parse(tmp_path, tmp_path, *flags, "--hub_revision", "v1")
    target = take_over_hub_push(training_args)
    assert (target.repo_id, target.private, target.revision, target.token) == ("alice/x", True, "v1", TOKEN)
    assert training_args.push_to_hub is False and training_args.hub_token is None
    _, training_args, _ = parse(tmp_path, tmp_path, *flags, "--hub_strategy", "checkpoint")
    with pytest.raises(VlsafeError, match="hub_strategy='checkpoint' would push checkpoints"):
        take_over_hub_push(training_args)
    _, training_args, _ = parse(tmp_path, tmp_path, "--hub_token", TOKEN)  # no push: the token still leaves
    assert take_over_hub_push(training_args) is None and training_args.hub_token is None
