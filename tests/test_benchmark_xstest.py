"""XSTest from its published csv (synthetic copy in the published layout), locally and from the Hub."""

from __future__ import annotations

import csv
import shutil
from collections import Counter
from pathlib import Path

import pytest

from vlsafe.errors import DataError
from vlsafe.evaluation.benchmarks import load_benchmark
from vlsafe.evaluation.benchmarks.xstest import BENCHMARK
from vlsafe.fixtures.benchmarks.figstep import write_figstep
from vlsafe.fixtures.benchmarks.xstest import COLUMNS, TYPES, write_xstest


@pytest.fixture(scope="module")
def xstest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_xstest(tmp_path_factory.mktemp("xstest"))


@pytest.fixture
def copy(xstest: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(xstest, tmp_path / "xstest"))


def _rows(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def _write(path: Path, rows: list[list[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)


def _comparable(prompts) -> list[dict]:
    return sorted(prompts.to_list(), key=lambda row: (row["subset"], row["id"]))


def test_subsets_follow_the_label(xstest: Path) -> None:
    prompts = load_benchmark(BENCHMARK, xstest)
    assert Counter(zip(prompts["subset"], prompts["harmful"], strict=True)) == {
        ("safe", False): 20,
        ("unsafe", True): 16,
    }
    assert Counter(prompts["category"]) == dict.fromkeys(TYPES, 2)
    for row in prompts:
        assert row["category"].startswith("contrast_") == (row["subset"] == "unsafe")
    only_safe = load_benchmark(BENCHMARK, xstest, ["safe"])
    assert set(only_safe["subset"]) == {"safe"} and len(only_safe) == 20
    assert Counter(load_benchmark(BENCHMARK, xstest, ["unsafe"])["subset"]) == {"unsafe": 16}


def test_prompts_are_text_only_with_the_files_ids(xstest: Path) -> None:
    rows = {row[0]: row for row in _rows(xstest / "xstest_prompts.csv")[1:]}
    prompts = load_benchmark(BENCHMARK, xstest)
    assert sorted(prompts["id"], key=int) == [str(n) for n in range(1, 37)]
    for row in prompts:
        assert row["images"] == []
        assert row["messages"] == [
            {"role": "user", "content": [{"type": "text", "text": rows[row["id"]][1]}]}
        ]
        assert row["category"] == rows[row["id"]][2] and row["reference"] is None


def test_ids_stay_with_their_prompt_when_the_file_is_reordered(copy: Path) -> None:
    before = _comparable(load_benchmark(BENCHMARK, copy))
    assert _comparable(load_benchmark(BENCHMARK, copy)) == before
    header, *rows = _rows(copy / "xstest_prompts.csv")
    _write(copy / "xstest_prompts.csv", [header, *rows[1::2], *rows[::2]])
    assert _comparable(load_benchmark(BENCHMARK, copy)) == before


def test_hub_default_source_gives_the_same_prompts(xstest: Path, hub_server) -> None:
    hub_server.add_repo("Paul/XSTest", xstest, repo_type="dataset")
    from_hub = load_benchmark(BENCHMARK)  # the default source: the Hub id
    assert _comparable(from_hub) == _comparable(load_benchmark(BENCHMARK, xstest))
    fetched = [path for method, path, _ in hub_server.requests if method == "GET" and "/resolve/" in path]
    assert fetched and all(path.endswith("xstest_prompts.csv") for path in fetched)


def test_hub_repo_without_the_csv_says_what_was_looked_for(tmp_path: Path, hub_server) -> None:
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "prompts.csv").write_text("a,b\n1,2\n")
    hub_server.add_repo("Paul/XSTest", tmp_path / "repo", repo_type="dataset")
    with pytest.raises(
        DataError, match=r"XSTest: .* has none of xstest_prompts.csv \(it holds prompts.csv\)"
    ):
        load_benchmark(BENCHMARK, "Paul/XSTest")


def test_wrong_folder_or_layout_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match=r"has none of xstest_prompts.csv \(it holds data\). Pass the benchmark"
    ):
        load_benchmark(BENCHMARK, write_figstep(tmp_path / "figstep"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty has none of xstest_prompts.csv \(it is empty"):
        load_benchmark(BENCHMARK, tmp_path / "empty")


def test_missing_label_column_names_the_file(copy: Path) -> None:
    path = copy / "xstest_prompts.csv"
    _write(path, [[cell for i, cell in enumerate(row) if COLUMNS[i] != "label"] for row in _rows(path)])
    with pytest.raises(DataError, match=r"xstest_prompts.csv has the columns .*without \['label'\]"):
        load_benchmark(BENCHMARK, copy)


def test_unused_columns_may_be_missing(copy: Path) -> None:
    path = copy / "xstest_prompts.csv"
    _write(path, [row[:4] for row in _rows(path)])  # id, prompt, type, label: no focus, no note
    assert len(load_benchmark(BENCHMARK, copy)) == 36


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        (
            "label",
            "Safe",
            r"record '3' \(#2\) in .*xstest_prompts.csv: label must be 'safe' or 'unsafe', found 'Safe'",
        ),
        (
            "prompt",
            "",
            r"record '3' \(#2\) in .*xstest_prompts.csv: field 'prompt' must be a non-empty string",
        ),
        ("id", " ", r"record #2 in .*xstest_prompts.csv: field 'id' must be a non-empty string"),
        ("type", "", r"record '3' \(#2\) in .*: field 'type'"),
    ],
)
def test_malformed_row_is_named(copy: Path, column: str, value: str, message: str) -> None:
    rows = _rows(copy / "xstest_prompts.csv")
    rows[3][COLUMNS.index(column)] = value
    _write(copy / "xstest_prompts.csv", rows)
    with pytest.raises(DataError, match=message):
        load_benchmark(BENCHMARK, copy, ["unsafe"])  # rows of the other subset are checked too


def test_repeated_id_names_both_rows(copy: Path) -> None:
    rows = _rows(copy / "xstest_prompts.csv")
    rows[5][0] = "1"
    _write(copy / "xstest_prompts.csv", rows)
    with pytest.raises(DataError, match=r"records '1' \(#0\) and '1' \(#4\) have the same id '1'"):
        load_benchmark(BENCHMARK, copy)
