"""vlsafe.cards: the adapter card training writes and evaluation updates, parsed back with huggingface_hub."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from PIL import Image

from vlsafe.cards import (
    looks_like_repo_id,
    render_adapter_card,
    templates_dir,
    update_card,
    write_adapter_card,
)
from vlsafe.errors import VlsafeError

# (model, subset, metric, judge) -> value: the numbers the card must carry.
NUMBERS = {
    ("base", "unsafes", "asr", "keyword"): 0.62,
    ("tuned", "unsafes", "asr", "keyword"): 0.02,
    ("base", "safe_unsafes", "asr", "keyword"): 0.55,
    ("tuned", "safe_unsafes", "asr", "keyword"): 0.04,
    ("base", "safe_safes", "refusal_rate", "keyword"): 0.0,
    ("tuned", "safe_safes", "refusal_rate", "keyword"): 0.03,
    ("tuned", "safe_safes", "win_rate", "gpt-judge"): 0.47,
}


def make_results(path: Path, adapter: str = "outputs/sft", plot: bool = False) -> Path:
    """A results.json in the evaluation's schema (version 2), with per-category rows and samples."""
    metrics = [
        {"model": model, "benchmark": "vlguard", "subset": subset, "category": None, "judge": judge,
         "metric": metric, "value": value, "n": 442, "ci95": [max(0.0, value - 0.02), min(1.0, value + 0.02)]}
        for (model, subset, metric, judge), value in NUMBERS.items()
    ]  # fmt: skip
    for model, value in (("base", 0.7), ("tuned", 0.0)):
        metrics.append(
            {"model": model, "benchmark": "vlguard", "subset": "unsafes", "category": "privacy", "judge": "keyword",
             "metric": "asr", "value": value, "n": 40, "ci95": [0.0, 1.0]}
        )  # fmt: skip
    results = {
        "vlsafe_results_version": 2,
        "benchmarks": {
            "vlguard": {
                "title": "VLGuard test",
                "published": "hf:ys-zong/VLGuard",
                "subsets": {
                    "unsafes": {"prompts": 442, "harmful": True},
                    "safe_unsafes": {"prompts": 558, "harmful": True},
                    "safe_safes": {"prompts": 558, "harmful": False},
                },
            }
        },
        "models": {
            "base": {"base_model": "org/base-vlm", "adapter": None},
            "tuned": {"base_model": "org/base-vlm", "adapter": adapter},
        },
        "judges": ["keyword", "gpt-judge"],
        "metrics": metrics,
        "samples": [
            {"model": "tuned", "benchmark": "vlguard", "subset": "unsafes", "id": "1", "category": "privacy",
             "prompt": "What is in the image?", "generation": "I'm sorry, I cannot help.",
             "verdicts": {"keyword": {"refusal": "refused"}}}
        ],
    }  # fmt: skip
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps(results))
    if plot:
        Image.new("RGB", (16, 8), (200, 30, 30)).save(path / "results.png")
    return path / "results.json"


def make_adapter(folder: Path, base: str = "org/base-vlm", summary: bool = True) -> Path:
    """An adapter folder as training leaves it (config + summary; weights do not matter for cards)."""
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": base, "r": 8, "lora_alpha": 16, "lora_dropout": 0.05,
                    "target_modules": ["q_proj", "v_proj"], "peft_type": "LORA"})
    )  # fmt: skip
    if summary:
        (folder / "training_summary.json").write_text(
            json.dumps(
                {"vlsafe_summary_version": 1, "recipe": "sft_vlguard", "license": "apache-2.0",
                 "base_model": {"name_or_path": base, "revision": None},
                 "datasets": [{"role": "safety", "source": "ys-zong/VLGuard", "split": "train", "revision": "v1"},
                              {"role": "helpfulness", "source": "/data/llava/mix665k.json", "samples": 5000}],
                 "samples": {"total": 7977, "by_kind": {"unsafe": 977, "safe_safe": 1000, "safe_unsafe": 1000, "helpful": 5000}},
                 "lora": {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": "regex", "use_rslora": False, "use_dora": False},
                 "training": {"learning_rate": 2e-4, "lr_scheduler_type": "cosine", "num_train_epochs": 1, "max_steps": -1,
                              "per_device_train_batch_size": 4, "gradient_accumulation_steps": 8, "world_size": 2,
                              "seed": 42, "global_steps": 125, "train_loss": 0.71},
                 "hub_model_id": None}
            )
        )  # fmt: skip
    return folder


def test_card_front_matter_carries_the_evaluation_in_model_index(tmp_path: Path) -> None:
    adapter = make_adapter(tmp_path / "adapter")
    update_card(adapter, make_results(tmp_path / "eval", str(adapter), plot=True))

    card = ModelCard.load(adapter / "README.md")
    data = card.data
    assert data.base_model == "org/base-vlm" and data.library_name == "peft"
    assert data.pipeline_tag == "image-text-to-text" and data.license == "apache-2.0"
    assert {"vlsafe", "safety", "lora", "vlguard"} <= set(data.tags)
    assert data.datasets == ["ys-zong/VLGuard"]  # the local helpfulness json is no Hub dataset
    got = {
        (r.dataset_type, r.dataset_config, r.metric_type, r.metric_config): r.metric_value
        for r in data.eval_results
    }
    assert got == {
        ("ys-zong/VLGuard", "unsafes", "asr", "keyword"): 0.02,
        ("ys-zong/VLGuard", "safe_unsafes", "asr", "keyword"): 0.04,
        ("ys-zong/VLGuard", "safe_safes", "refusal_rate", "keyword"): 0.03,
        ("ys-zong/VLGuard", "safe_safes", "win_rate", "gpt-judge"): 0.47,
    }  # the tuned model's overall numbers only: no base rows, no per-category rows
    assert {r.dataset_name for r in data.eval_results} >= {"VLGuard test unsafes", "VLGuard test safe_safes"}
    names = {r.metric_name for r in data.eval_results}
    assert "Attack success rate (keyword judge)" in names and "Over-refusal rate (keyword judge)" in names
    assert all(r.task_type == "image-text-to-text" and r.dataset_split == "test" for r in data.eval_results)


def test_card_body_shows_base_and_tuned_side_by_side(tmp_path: Path) -> None:
    adapter = make_adapter(tmp_path / "adapter")
    update_card(adapter, make_results(tmp_path / "eval", plot=True))
    assert (adapter / "results.json").is_file() and (adapter / "results.png").is_file()
    body = ModelCard.load(adapter / "README.md").text

    unsafe_row = next(line for line in body.splitlines() if line.startswith("| VLGuard test | unsafes |"))
    assert "62.0%" in unsafe_row and "2.0%" in unsafe_row and "-60.0 pts" in unsafe_row
    assert "lower is better" in unsafe_row
    win_row = next(line for line in body.splitlines() if "Win rate" in line)
    assert "47.0%" in win_row and "| – |" in win_row  # measured on the tuned model only
    assert "| privacy |" in body and "![Base vs tuned" in body and "(results.png)" in body
    # How it was trained, how to load it, and what the judge cannot see.
    assert (
        "VLGuard post-hoc safety fine-tuning" in body
        and "`ys-zong/VLGuard` (train split), revision `v1`" in body
    )
    assert "| safe_unsafe | 1000 |" in body and "4 x 8 x 2 = 64" in body and "0.0002 (cosine)" in body
    assert 'AutoModelForImageTextToText.from_pretrained("<your-username>/adapter")' in body
    assert 'PeftModel.from_pretrained(base, "<your-username>/adapter")' in body
    assert 'AutoModelForImageTextToText.from_pretrained("org/base-vlm")' in body
    assert "keyword judge" in body and "lower bound" in body


def test_card_names_the_hub_ids_it_is_published_under(tmp_path: Path) -> None:
    adapter = make_adapter(tmp_path / "adapter", base=str(tmp_path))  # trained from a local base folder
    local = ModelCard(render_adapter_card(adapter))
    assert local.data.base_model is None and "is a local path, not a Hub id" in local.text

    published = ModelCard(render_adapter_card(adapter, repo_id="me/safe-vlm", base_model="org/base-vlm"))
    assert published.data.base_model == "org/base-vlm" and published.data.model_name == "safe-vlm"
    assert 'from_pretrained("me/safe-vlm")' in published.text and "local path" not in published.text
    assert "Not evaluated yet" in published.text and published.data.eval_results is None


def test_card_without_training_summary_uses_the_adapter_config(tmp_path: Path) -> None:
    adapter = make_adapter(tmp_path / "adapter", summary=False)
    write_adapter_card(adapter)
    card = ModelCard.load(adapter / "README.md")
    assert card.data.base_model == "org/base-vlm" and card.data.license == "other"
    assert (
        "no `training_summary.json`" in card.text
        and "| LoRA rank r / alpha / dropout | 8 / 16 / 0.05 |" in card.text
    )


def test_update_card_replaces_a_stale_plot_and_rejects_bad_results(tmp_path: Path) -> None:
    adapter = make_adapter(tmp_path / "adapter")
    update_card(adapter, make_results(tmp_path / "eval1", plot=True))
    update_card(adapter, make_results(tmp_path / "eval2", plot=False))  # a later evaluation without a plot
    assert not (adapter / "results.png").exists() and "results.png" not in (adapter / "README.md").read_text()
    update_card(adapter, adapter / "results.json")  # results already in the folder: re-render in place
    assert (adapter / "README.md").is_file()

    before = (adapter / "README.md").read_text()
    bad = tmp_path / "bad" / "results.json"
    bad.parent.mkdir()
    bad.write_text(json.dumps({"vlsafe_results_version": 1, "metrics": []}))
    with pytest.raises(VlsafeError, match="vlsafe_results_version 1.*reads version 2"):
        update_card(adapter, bad)
    bad.write_text("{not json")
    with pytest.raises(VlsafeError, match="not valid JSON"):
        update_card(adapter, bad)
    with pytest.raises(VlsafeError, match="No evaluation results"):
        update_card(adapter, tmp_path / "missing.json")
    assert (adapter / "README.md").read_text() == before
    with pytest.raises(VlsafeError, match="not a PEFT adapter folder"):
        write_adapter_card(tmp_path / "eval1")


def test_repo_ids_and_templates(tmp_path: Path) -> None:
    assert looks_like_repo_id("llava-hf/llava-1.5-7b-hf") and looks_like_repo_id("gpt2")
    assert not looks_like_repo_id(str(tmp_path)) and not looks_like_repo_id(
        "outputs/demo/fixtures/tiny-llava"
    )
    assert not looks_like_repo_id("../x") and not looks_like_repo_id(None)
    assert templates_dir() == Path(__file__).resolve().parents[1] / "cards"


@pytest.mark.slow
def test_training_writes_summary_and_card(demo_run: Path, tmp_path: Path) -> None:
    """The demo's training run leaves a rendered card and a summary next to the adapter, no pickles."""
    out = demo_run / "outputs/demo/sft_vlguard"
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["recipe"] == "sft_vlguard"
    assert summary["base_model"]["name_or_path"] == "outputs/demo/fixtures/tiny-llava"
    assert [d["source"] for d in summary["datasets"]] == [
        "outputs/demo/fixtures/vlguard",
        "outputs/demo/fixtures/helpful/data.json",
    ]
    kinds = summary["samples"]["by_kind"]
    assert kinds["helpful"] == 60 and set(kinds) == {"helpful", "unsafe", "safe_safe", "safe_unsafe"}
    assert summary["samples"]["total"] == sum(kinds.values())
    assert summary["lora"]["r"] == 16 and summary["training"]["learning_rate"] == 3e-3
    assert summary["training"]["global_steps"] > 0 and not list(out.glob("*.bin"))

    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "peft" and "vlguard" in card.data.tags
    assert "| helpful | 60 |" in card.text  # (the demo's evaluation may since have added its numbers)
    # Evaluation re-renders it with the numbers (on a copy: the shared demo folder stays as training left it).
    copy = shutil.copytree(out, tmp_path / "adapter")
    update_card(copy, make_results(tmp_path / "eval"))
    assert ModelCard.load(copy / "README.md").data.eval_results


def test_minimal_results_render(tmp_path: Path) -> None:
    """Rows without ci95/n, a tuned model only, an unknown recipe: the card still renders, with gaps shown."""
    adapter = make_adapter(tmp_path / "adapter")
    summary = json.loads((adapter / "training_summary.json").read_text())
    (adapter / "training_summary.json").write_text(json.dumps({**summary, "recipe": "sft_custom"}))
    row = {"model": "tuned", "benchmark": "mm-safety", "subset": "all", "category": None, "judge": "keyword",
           "metric": "asr", "value": 0.25}  # fmt: skip
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"vlsafe_results_version": 2, "models": {"tuned": {}}, "judges": ["keyword"], "metrics": [row]}))  # fmt: skip
    card = ModelCard.load(update_card(adapter, results))
    assert (
        "| mm-safety | all | Attack success rate (keyword judge), lower is better | – | 25.0% | – | – |"
        in card.text
    )
    assert "safety fine-tuning recipe\n(`sft_custom`)" in card.text and "vlguard" not in card.data.tags
    assert [(r.dataset_type, r.dataset_config, r.metric_value) for r in card.data.eval_results] == [
        ("mm-safety", "all", 0.25)
    ]


def test_refusals_on_safe_prompts_are_labelled_over_refusal() -> None:
    from vlsafe.cards import metric_label

    assert metric_label("refusal_rate", "keyword", benign=True) == "Over-refusal rate (keyword judge)"
    assert metric_label("refusal_rate", "keyword") == "Refusal rate (keyword judge)"
    assert metric_label("asr", "llama_guard") == "Attack success rate (llama_guard judge)"


def make_full_model(folder: Path, summary: dict | None = None) -> Path:
    """A fully fine-tuned output folder as training leaves it (config, safetensors weights, summary)."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llava"}))
    save_file({"w": torch.zeros(2)}, folder / "model.safetensors")
    if summary is not None:
        (folder / "training_summary.json").write_text(json.dumps(summary))
    return folder


FULL_SUMMARY = {
    "vlsafe_summary_version": 1, "recipe": "sft_mis", "method": "sft", "license": "apache-2.0",
    "base_model": {"name_or_path": "Qwen/Qwen2.5-VL-7B-Instruct", "revision": None},
    "finetuning": {"method": "full", "trained_parameters": 7615616512, "total_parameters": 8292166656,
                   "trained_parts": ["language_model"], "frozen_parts": ["vision_tower", "projector"]},
    "training": {"learning_rate": 1e-5, "assistant_only_loss": True, "seed": 42},
}  # fmt: skip


def test_a_fully_fine_tuned_model_gets_a_transformers_card(tmp_path: Path) -> None:
    from vlsafe.cards import is_full_model

    folder = make_full_model(tmp_path / "full", FULL_SUMMARY)
    assert is_full_model(folder) and not is_full_model(make_adapter(tmp_path / "adapter"))
    card = ModelCard.load(write_adapter_card(folder))
    assert card.data.library_name == "transformers" and card.data.base_model == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert "lora" not in card.data.tags and {"vlsafe", "mis", "sft"} <= set(card.data.tags)
    assert (
        "full fine-tuning of the language model (7,615,616,512 parameters trained), vision tower and projector "
        "frozen, loss on the assistant answers only." in " ".join(card.text.split())
    )
    assert "| Parameters trained | 7,615,616,512 of 8,292,166,656 |" in card.text
    assert "LoRA" not in card.text and "PeftModel" not in card.text and "load_adapter" not in card.text
    assert 'AutoModelForImageTextToText.from_pretrained("<your-username>/full")' in card.text
    assert "--adapter" not in card.text and "a safety-tuned replacement for" in card.text
    with pytest.raises(VlsafeError, match="holds full model weights but no training_summary.json"):
        write_adapter_card(make_full_model(tmp_path / "bare"))


def test_a_dpo_card_names_the_recipe_pairs_and_their_provenance(tmp_path: Path) -> None:
    adapter = make_adapter(tmp_path / "adapter")
    summary = json.loads((adapter / "training_summary.json").read_text())
    summary |= {
        "recipe": "dpo_safety", "method": "dpo", "continued_from": "outputs/sft_vlguard",
        "datasets": [{"role": "preferences", "source": "data/spa_vl.jsonl"}],
        "dpo": {"beta": 0.1, "loss_type": ["sigmoid"], "reference": "frozen copy of the continued adapter"},
        "preference_pairs": {"total": 30, "harmful": 12, "safe": 8, "imported": 10,
                             "by_rejected_source": {"imported": 10, "on_policy": 14, "synthetic": 6},
                             "by_kind_and_rejected_source": [
                                 {"kind": "imported", "rejected_source": "imported", "pairs": 10},
                                 {"kind": "safe_safe", "rejected_source": "on_policy", "pairs": 8},
                                 {"kind": "unsafe", "rejected_source": "on_policy", "pairs": 6},
                                 {"kind": "unsafe", "rejected_source": "synthetic", "pairs": 6}]},
    }  # fmt: skip
    (adapter / "training_summary.json").write_text(json.dumps(summary))
    card = ModelCard.load(write_adapter_card(adapter))
    assert {"dpo", "safety-dpo", "lora"} <= set(card.data.tags)
    text = " ".join(card.text.split())
    assert (
        "vlsafe's DPO safety tuning recipe (`dpo_safety`), after [DPO](https://arxiv.org/abs/2305.18290)"
        in text
    )
    assert "DPO loss (beta 0.1) on preferred vs rejected answers" in text
    assert "30 preference pairs: 12 from harmful prompts (the refusal preferred), 8 from safe prompts" in text
    assert "10 imported (prompt kind unknown)" in text and "| unsafe | synthetic | 6 |" in card.text
    assert (
        "`synthetic`: a fixed compliant answer" in card.text
        and "`imported`: as given in the imported preference file" in card.text
    )
    assert "Started from the adapter `outputs/sft_vlguard`" in card.text
    assert "- Preferences data: `data/spa_vl.jsonl`." in card.text
    assert "| DPO reference model | frozen copy of the continued adapter |" in card.text
    assert "| Kind of sample |" not in card.text  # the pair table replaces it


def test_a_suite_evaluation_lists_every_benchmark_in_model_index(tmp_path: Path) -> None:
    adapter = make_adapter(tmp_path / "adapter")
    path = make_results(tmp_path / "eval")
    results = json.loads(path.read_text())
    results["benchmarks"]["figstep"] = {
        "title": "FigStep SafeBench",
        "published": "github:ThuCCSLab/FigStep",
        "subsets": {"safebench": {"prompts": 500, "harmful": True}},
    }
    for model, value in (("base", 0.8), ("tuned", 0.1)):
        results["metrics"].append(
            {"model": model, "benchmark": "figstep", "subset": "safebench", "category": None, "judge": "keyword",
             "metric": "asr", "value": value, "n": 500, "ci95": [value - 0.03, value + 0.03]}
        )  # fmt: skip
    results["summary"] = [
        {"model": model, "judge": "keyword", "metric": "asr", "label": "mean ASR", "value": value,
         "benchmarks": ["figstep", "vlguard"]}
        for model, value in (("base", 0.75), ("tuned", 0.06))
    ]  # fmt: skip
    path.write_text(json.dumps(results))
    card = ModelCard.load(update_card(adapter, path))
    types = {(r.dataset_type, r.dataset_config) for r in card.data.eval_results}
    assert ("ThuCCSLab/FigStep", "safebench") in types and ("ys-zong/VLGuard", "unsafes") in types
    assert (
        "| FigStep SafeBench | safebench | Attack success rate (keyword judge), lower is better |"
        in card.text
    )
    assert "| keyword | mean ASR | 75.0% | 6.0% | figstep, vlguard |" in card.text
