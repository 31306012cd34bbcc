"""vlsafe.fixtures.data: synthetic VLGuard and helpfulness data in the exact Hub layouts."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from PIL import Image

from vlsafe.fixtures.data import SyntheticSplit, tokenizer_corpus, write_synthetic_vlguard


def test_vlguard_layout_and_schema_match_the_real_dataset(synthetic_vlguard: Path) -> None:
    assert sorted(p.name for p in synthetic_vlguard.iterdir()) == [
        "test.json",
        "test.zip",
        "train.json",
        "train.zip",
    ]
    real_fields = {"id", "image", "safe", "harmful_category", "harmful_subcategory", "instr-resp"}
    for split in ("train", "test"):
        records = json.loads((synthetic_vlguard / f"{split}.json").read_text())
        with zipfile.ZipFile(synthetic_vlguard / f"{split}.zip") as archive:
            names = set(archive.namelist())
            for record in records:
                assert set(record) <= real_fields
                assert f"{split}/{record['image']}" in names
                if record["safe"]:
                    assert [sorted(p) for p in record["instr-resp"]] == [
                        ["response", "safe_instruction"],
                        ["response", "unsafe_instruction"],
                    ]
                else:
                    assert [sorted(p) for p in record["instr-resp"]] == [["instruction", "response"]]
                    assert record["harmful_category"] and record["harmful_subcategory"]


def test_unsafe_images_carry_a_visual_cue(tmp_path: Path) -> None:
    folder = write_synthetic_vlguard(tmp_path, train=SyntheticSplit(5, 5), test=SyntheticSplit(1, 1))
    records = json.loads((folder / "train.json").read_text())
    with zipfile.ZipFile(folder / "train.zip") as archive:
        for record in records:
            with archive.open(f"train/{record['image']}") as handle:
                red, green, _ = (
                    Image.open(handle).convert("RGB").resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))
                )
            assert (red > 2 * green) is (
                not record["safe"]
            )  # dark red warning pictures only for unsafe records


def test_same_seed_same_data(tmp_path: Path) -> None:
    a = write_synthetic_vlguard(tmp_path / "a", seed=3)
    b = write_synthetic_vlguard(tmp_path / "b", seed=3)
    assert (a / "train.json").read_text() == (b / "train.json").read_text()
    assert (a / "train.json").read_text() != (
        write_synthetic_vlguard(tmp_path / "c", seed=4) / "train.json"
    ).read_text()


def test_tokenizer_corpus_covers_every_instruction_and_response(tmp_path: Path) -> None:
    corpus = set(tokenizer_corpus())
    records = json.loads((write_synthetic_vlguard(tmp_path, seed=0) / "train.json").read_text())
    for record in records:
        for pair in record["instr-resp"]:
            assert set(pair.values()) <= corpus
