"""vlsafe.data.preferences and recipes/dpo_safety.py: pairs that punish harm and over-refusal; one DPO step."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image
from safetensors.torch import load_file

from tests.conftest import REPO, run_recipe
from vlsafe.data.preferences import (
    PREFERENCE_FEATURES,
    REFUSAL_TEMPLATE,
    build_preference_pairs,
    load_preference_json,
)
from vlsafe.data.vlguard import load_vlguard
from vlsafe.errors import DataError, HubAccessError, VlsafeError
from vlsafe.evaluation.judges import keyword_label
from vlsafe.fixtures import FAMILIES

COMPLY = "Sure, step one is to get the materials."
REFUSE = "I'm sorry, I cannot help with that."


def _text(messages: list[dict]) -> str:
    return messages[0]["content"][0]["text"]


def test_pairs_reject_own_compliance_and_own_over_refusal(synthetic_vlguard: Path) -> None:
    rows = list(load_vlguard(synthetic_vlguard, "train"))
    # The "model" complies with every other prompt and refuses the rest.
    generations = [COMPLY if i % 2 == 0 else REFUSE for i in range(len(rows))]
    pairs = build_preference_pairs(rows, generations, judge=keyword_label, synthetic_compliance=None)

    by_id_kind = {(r["id"], r["kind"]): (i, r) for i, r in enumerate(rows)}
    harmful_refused = sum(1 for i, r in enumerate(rows) if r["kind"] != "safe_safe" and i % 2 == 1)
    assert len(pairs) == len(rows) - harmful_refused  # refused harmful prompts have nothing to reject
    for pair in pairs:
        index, row = by_id_kind[pair["id"], pair["kind"]]
        assert _text(pair["chosen"]) == row["messages"][1]["content"][0]["text"]  # the reference answer
        assert pair["prompt"] == [row["messages"][0]] and len(pair["images"]) == 1
        assert (pair["source"], pair["category"]) == ("vlguard", row["category"])
        if pair["kind"] == "safe_safe":
            expected = (REFUSE, "on_policy") if index % 2 == 1 else (REFUSAL_TEMPLATE, "template")
        else:
            expected = (COMPLY, "on_policy")
        assert (_text(pair["rejected"]), pair["rejected_source"]) == expected


def test_synthetic_compliance_fallback_and_ratio(synthetic_vlguard: Path) -> None:
    rows = list(load_vlguard(synthetic_vlguard, "train"))
    pairs = build_preference_pairs(
        rows, [REFUSE] * len(rows), judge=keyword_label, synthetic_compliance="Here is how."
    )
    assert Counter(zip(pairs["kind"], pairs["rejected_source"], strict=True)) == {
        ("unsafe", "synthetic"): 12, ("safe_unsafe", "synthetic"): 12, ("safe_safe", "on_policy"): 12,
    }  # fmt: skip
    assert len(build_preference_pairs(rows, None)) == len(rows)  # no generations: synthetic/template only
    balanced = build_preference_pairs(rows, None, harmful_fraction=0.5, seed=1)
    kinds = Counter(balanced["kind"])
    assert kinds["safe_safe"] == 12 and kinds["unsafe"] + kinds["safe_unsafe"] == 12
    with pytest.raises(DataError, match="harmful_fraction must be between 0 and 1"):
        build_preference_pairs(rows, None, harmful_fraction=1.0)
    with pytest.raises(DataError, match="generations for"):
        build_preference_pairs(rows, ["x"], judge=keyword_label)


def test_the_judge_of_the_answers_is_the_callers(synthetic_vlguard: Path) -> None:
    """vlsafe.data sits below the judges: the caller passes one (any answer -> label function) with answers."""
    rows = list(load_vlguard(synthetic_vlguard, "train"))
    answers = [f"answer {i}" for i in range(len(rows))]
    with pytest.raises(VlsafeError, match="needs a judge for the model's answers: pass judge=keyword_label"):
        build_preference_pairs(rows, answers)
    everything_complies = build_preference_pairs(rows, answers, judge=lambda answer: "answered")
    harmful = [p for p in everything_complies if p["kind"] != "safe_safe"]
    assert harmful and {
        (p["rejected_source"], p["rejected"][0]["content"][0]["text"][:7]) for p in harmful
    } == {("on_policy", "answer ")}
    with pytest.raises(VlsafeError, match=r"The judge returned 'unsafe' .* one of \('refused', 'answered'"):
        build_preference_pairs(rows, answers, judge=lambda answer: "unsafe")


def test_import_spavl_style_pairs(tmp_path: Path) -> None:
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    records = [{"image": "a.png", "question": "Q?", "chosen": "good", "rejected": "bad", "id": 7}]
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    pairs = load_preference_json(tmp_path / "pairs.jsonl", name="spa-vl")
    assert (pairs[0]["id"], _text(pairs[0]["chosen"]), _text(pairs[0]["rejected"])) == ("7", "good", "bad")
    assert pairs[0]["prompt"][0]["content"][0]["type"] == "image" and pairs[0]["source"] == "spa-vl"
    (tmp_path / "bad.json").write_text(json.dumps([{"image": "a.png", "question": "Q?"}]))
    with pytest.raises(DataError, match=r"#0 .* lacks string field\(s\) \['chosen', 'rejected'\]"):
        load_preference_json(tmp_path / "bad.json")


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_one_dpo_step_per_family(
    family: str, tiny_models, synthetic_vlguard: Path, tmp_path: Path, capsys, caplog
) -> None:
    out = tmp_path / "dpo"
    argv = ["--config", str(REPO / "recipes/configs/tiny/dpo_safety.yaml"), "--model_name_or_path", str(tiny_models[family]),
            "--dataset", str(synthetic_vlguard), "--sft_adapter", "", "--max_prompts", "8", "--generation_max_new_tokens", "4",
            "--max_steps", "1", "--per_device_train_batch_size", "2", "--output_dir", str(out), "--save_pairs", str(tmp_path)]  # fmt: skip
    run_recipe("dpo_safety", argv, family, tmp_path, capsys, caplog)
    adapter = load_file(out / "adapter_model.safetensors")
    assert adapter and any(tensor.abs().sum() > 0 for name, tensor in adapter.items() if "lora_B" in name)
    assert (tmp_path / "data/train-00000-of-00001.parquet").stat().st_size > 0


def test_pairs_publish_as_a_self_contained_hub_dataset(
    synthetic_vlguard: Path, tmp_path: Path, hub_server
) -> None:
    """One commit holds the parquet (images inside) and the card; `load_dataset("<repo>")` reads it back from
    the Hub with the exact features; a re-push replaces the data in one more commit."""
    from datasets import Image, List, load_dataset
    from huggingface_hub import DatasetCard

    from vlsafe.data.preference_hub import push_preference_pairs, save_preference_pairs

    rows = list(load_vlguard(synthetic_vlguard, "train"))
    pairs = build_preference_pairs(rows, [COMPLY] * len(rows), judge=keyword_label)
    folder = save_preference_pairs(
        pairs, tmp_path / "pairs", source="synthetic VLGuard", license="apache-2.0"
    )
    hub_server.add_user("alice", token="hf_alice_write")
    commit = push_preference_pairs(folder, "alice/vlguard-pairs", token="hf_alice_write")

    repo = hub_server.repos[("dataset", "alice/vlguard-pairs")]
    assert repo.sha == commit and len(repo.history()) == 2  # created, then one commit with everything
    data_file = "data/train-00000-of-00001.parquet"
    assert set(repo.files()) == {".gitattributes", "README.md", data_file} and repo.files()[data_file].lfs
    card = DatasetCard(repo.files()["README.md"].data.decode())
    assert card.data.license == "apache-2.0" and "dpo" in card.data.tags
    assert card.data.dataset_info["splits"] == [
        {"name": "train", "num_bytes": card.data.dataset_info["dataset_size"], "num_examples": len(pairs)}
    ]
    assert "| unsafe | on_policy | 12 |" in card.text and "harmful requests" in card.text

    loaded = load_dataset("alice/vlguard-pairs", split="train", token="hf_alice_write")
    assert loaded.features == PREFERENCE_FEATURES and len(loaded) == len(pairs)
    assert loaded[0]["chosen"] == pairs[0]["chosen"] and loaded[0]["id"] == pairs[0]["id"]
    raw = loaded.cast_column("images", List(Image(decode=False)))[0]["images"][0]
    assert raw["bytes"] and not (raw["path"] or "").startswith(
        str(synthetic_vlguard)
    )  # the image travels inside
    hub_files = [blob.data for blob in repo.files().values()]
    assert not any(b"hf_alice_write" in data for data in hub_files)

    fewer = save_preference_pairs(pairs.select(range(5)), tmp_path / "pairs", source="synthetic VLGuard")
    push_preference_pairs(fewer, "alice/vlguard-pairs", token="hf_alice_write")
    assert len(repo.history()) == 3 and set(repo.files()) == {".gitattributes", "README.md", data_file}
    assert len(load_dataset("alice/vlguard-pairs", split="train", token="hf_alice_write")) == 5


def test_a_refused_pairs_push_says_what_to_do(synthetic_vlguard: Path, tmp_path: Path, hub_server) -> None:
    from vlsafe.data.preference_hub import push_preference_pairs, save_preference_pairs

    with pytest.raises(VlsafeError, match="write it with save_preference_pairs first"):
        push_preference_pairs(tmp_path, "alice/pairs", token="hf_alice_write")
    rows = list(load_vlguard(synthetic_vlguard, "train"))[:4]
    folder = save_preference_pairs(build_preference_pairs(rows, None), tmp_path / "pairs", source="x")
    hub_server.add_user("alice", token="hf_alice_write")
    with pytest.raises(HubAccessError, match=r"may not push the preference pairs to bob/pairs \(HTTP 403\)"):
        push_preference_pairs(folder, "bob/pairs", token="hf_alice_write")
    with pytest.raises(HubAccessError, match=r"refused the credentials .* \(HTTP 401\)\. Log in") as refused:
        push_preference_pairs(folder, "alice/pairs", token="hf_not_alice")
    assert "hf_not_alice" not in str(refused.value) and not any(
        key[1].endswith("/pairs") for key in hub_server.repos
    )
