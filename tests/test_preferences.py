"""vlsafe.data.preferences and recipes/dpo_safety.py: pairs that punish harm and over-refusal; one DPO step."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image
from safetensors.torch import load_file

from tests.conftest import REPO, run_checked
from vlsafe.data.preferences import REFUSAL_TEMPLATE, build_preference_pairs, load_preference_json
from vlsafe.data.vlguard import load_vlguard
from vlsafe.errors import DataError
from vlsafe.fixtures import FAMILIES

COMPLY = "Sure, step one is to get the materials."
REFUSE = "I'm sorry, I cannot help with that."


def _text(messages: list[dict]) -> str:
    return messages[0]["content"][0]["text"]


def test_pairs_reject_own_compliance_and_own_over_refusal(synthetic_vlguard: Path) -> None:
    rows = list(load_vlguard(synthetic_vlguard, "train"))
    # The "model" complies with every other prompt and refuses the rest.
    generations = [COMPLY if i % 2 == 0 else REFUSE for i in range(len(rows))]
    pairs = build_preference_pairs(rows, generations, synthetic_compliance=None)

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
    pairs = build_preference_pairs(rows, [REFUSE] * len(rows), synthetic_compliance="Here is how.")
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
        build_preference_pairs(rows, ["x"])


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
def test_one_dpo_step_per_family(family: str, tiny_models, synthetic_vlguard: Path, tmp_path: Path) -> None:
    out = tmp_path / "dpo"
    run_checked(
        [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file", str(REPO / "recipes/accelerate/cpu.yaml"),
         str(REPO / "recipes/dpo_safety.py"), "--config", str(REPO / "recipes/configs/tiny/dpo_safety.yaml"),
         "--model_name_or_path", str(tiny_models[family]), "--dataset", str(synthetic_vlguard), "--sft_adapter", "",
         "--max_prompts", "8", "--generation_max_new_tokens", "4", "--max_steps", "1", "--per_device_train_batch_size", "2",
         "--output_dir", str(out), "--save_pairs", str(tmp_path)],
        tmp_path,
    )  # fmt: skip
    adapter = load_file(out / "adapter_model.safetensors")
    assert adapter and any(tensor.abs().sum() > 0 for name, tensor in adapter.items() if "lora_B" in name)
    assert (tmp_path / "data/train-00000-of-00001.parquet").stat().st_size > 0


def test_pairs_publish_as_a_self_contained_hub_dataset(
    synthetic_vlguard: Path, tmp_path: Path, hub_server
) -> None:
    from datasets import Image, List, load_dataset
    from huggingface_hub import DatasetCard, snapshot_download

    from vlsafe.data.preference_hub import push_preference_pairs, save_preference_pairs

    rows = list(load_vlguard(synthetic_vlguard, "train"))
    pairs = build_preference_pairs(rows, [COMPLY] * len(rows))
    folder = save_preference_pairs(
        pairs, tmp_path / "pairs", source="synthetic VLGuard", license="apache-2.0"
    )
    hub_server.add_user("alice", token="hf_alice_write")
    push_preference_pairs(folder, "alice/vlguard-pairs", token="hf_alice_write")

    local = snapshot_download("alice/vlguard-pairs", repo_type="dataset", token="hf_alice_write")
    loaded = load_dataset("parquet", data_files=f"{local}/data/*.parquet", split="train")
    assert len(loaded) == len(pairs) and loaded[0]["chosen"] == pairs[0]["chosen"]
    raw = loaded.cast_column("images", List(Image(decode=False)))[0]["images"][0]
    assert raw["bytes"]  # the image travels inside the parquet file, not as a path to this machine
    card = DatasetCard.load(Path(local) / "README.md")
    assert card.data.license == "apache-2.0" and "dpo" in card.data.tags
    assert "| unsafe | on_policy | 12 |" in card.text
    assert not any(
        "hf_alice_write" in p.read_text(errors="ignore") for p in Path(local).rglob("*") if p.is_file()
    )
