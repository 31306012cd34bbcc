"""vlsafe.data.records: one record-id check for every loader, so each refuses the same bad ids in the same words
(and keeps the same good ones), whichever file format the id came in."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from vlsafe.data.mis import load_mis_test
from vlsafe.data.preferences import load_preference_json
from vlsafe.data.records import checked_record_id
from vlsafe.data.sharegpt import load_sharegpt
from vlsafe.data.vlguard import load_vlguard
from vlsafe.errors import DataError


def _vlguard(folder: Path, record_id: object) -> list[str]:
    (folder / "train").mkdir()
    Image.new("RGB", (4, 4)).save(folder / "train" / "a.png")
    pair = {"safe_instruction": "What is it?", "response": "A square."}
    record = {"id": record_id, "image": "a.png", "safe": True, "instr-resp": [pair]}
    (folder / "train.json").write_text(json.dumps([record]))
    return load_vlguard(folder, "train")["id"]


def _sharegpt(folder: Path, record_id: object) -> list[str]:
    turns = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]
    (folder / "data.json").write_text(json.dumps([{"id": record_id, "conversations": turns}]))
    return load_sharegpt(folder / "data.json")["id"]


def _mis_test(folder: Path, record_id: object) -> list[str]:
    (folder / "easy_image").mkdir()
    for name in ("1.png", "2.png"):
        Image.new("RGB", (4, 4)).save(folder / "easy_image" / name)
    record = {"id": record_id, "image_path1": "easy_image/1.png", "image_path2": "easy_image/2.png"}
    record |= {"question": "What if I combine them?", "category": "Illegal"}
    (folder / "mis_easy.json").write_text(json.dumps([record]))
    return load_mis_test(folder, "easy")["id"]


def _preferences(folder: Path, record_id: object) -> list[str]:
    Image.new("RGB", (4, 4)).save(folder / "a.png")
    record = {"id": record_id, "image": "a.png", "question": "Q?", "chosen": "good", "rejected": "bad"}
    (folder / "pairs.json").write_text(json.dumps([record]))
    return load_preference_json(folder / "pairs.json")["id"]


LOADERS: dict[str, tuple[Callable[[Path, object], list[str]], str]] = {
    "vlguard": (_vlguard, r"Malformed VLGuard record #0 in train.json: field 'id'"),
    "sharegpt": (_sharegpt, r"Malformed conversation .* \(#0\) in data.json: field 'id'"),
    "mis_test": (_mis_test, r"Malformed MIS record #0 .*in mis_easy.json: field 'id'"),
    "preferences": (_preferences, r"Malformed preference record #0 in .*pairs.json: field 'id'"),
}


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("bad", [True, 2.5, "", "   ", [1], {"id": 1}], ids=repr)
def test_every_loader_refuses_the_same_bad_ids_in_the_same_words(loader: str, bad: object, tmp_path: Path):
    load, where = LOADERS[loader]
    with pytest.raises(DataError, match=where + r" must be an integer or a non-empty string, found "):
        load(tmp_path, bad)


@pytest.mark.parametrize("loader", LOADERS)
def test_every_loader_keeps_integer_and_string_ids_as_strings(loader: str, tmp_path: Path) -> None:
    load, _ = LOADERS[loader]
    (tmp_path / "int").mkdir()
    (tmp_path / "str").mkdir()
    assert load(tmp_path / "int", 7) == ["7"]
    assert load(tmp_path / "str", "x-1") == ["x-1"]


def test_an_id_field_of_another_name_is_called_the_records_id() -> None:
    assert checked_record_id(0, record="record #3 in data.json", field="question_id") == "0"
    with pytest.raises(DataError, match=r"record #3 in data.json: field 'question_id' \(its id\) must be"):
        checked_record_id(None, record="record #3 in data.json", field="question_id")
