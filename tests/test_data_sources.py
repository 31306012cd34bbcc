"""vlsafe.data.sources: the readers every loader shares treat a file as hostile and name what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlsafe.data.sources import read_csv_records, read_json_list, read_json_object
from vlsafe.errors import DataError


def test_csv_records_keep_every_column_and_name_the_damage(tmp_path: Path) -> None:
    path = tmp_path / "prompts.csv"
    path.write_text('id,prompt,extra\n1,"Hello, world",x\n2,"two\nlines",y\n', encoding="utf-8")
    assert read_csv_records(path, ["id", "prompt"]) == [
        {"id": "1", "prompt": "Hello, world", "extra": "x"},
        {"id": "2", "prompt": "two\nlines", "extra": "y"},
    ]
    with pytest.raises(DataError, match=r"prompts.csv has the columns .* without \['label'\]"):
        read_csv_records(path, ["id", "label"])
    path.write_text("id,prompt\n1,a,b\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"prompts.csv, line 2: 3 fields where the header has 2"):
        read_csv_records(path, ["id"])
    path.write_bytes(b"id,prompt\n1,\x00\n")
    with pytest.raises(DataError, match=r"NUL byte \(line 2\)"):
        read_csv_records(path, ["id"])
    path.write_bytes(b"id,prompt\n1,\xff\n")
    with pytest.raises(DataError, match="not UTF-8"):
        read_csv_records(path, ["id"])
    path.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="is empty"):
        read_csv_records(path, ["id"])


def test_keyed_json_refuses_a_repeated_key_and_the_wrong_shape(tmp_path: Path) -> None:
    path = tmp_path / "questions.json"
    path.write_text('{"1": {"q": "a", "q": "b"}, "2": {"q": "c"}}', encoding="utf-8")
    assert read_json_object(path) == {"1": {"q": "b"}, "2": {"q": "c"}}  # only top-level ids are records
    path.write_text('{"1": {"q": "a"}, "2": {}, "1": {"q": "b"}}', encoding="utf-8")
    with pytest.raises(DataError, match=r"holds the key '1' more than once"):
        read_json_object(path)
    path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(DataError, match="must hold a JSON object"):
        read_json_object(path)
    with pytest.raises(DataError, match="must hold a JSON list"):
        read_json_list(_write(tmp_path, '{"a": 1}'))


def _write(folder: Path, text: str) -> Path:
    path = folder / "records.json"
    path.write_text(text, encoding="utf-8")
    return path
