"""JailBreakV-28K from its csv files and images (synthetic copy in the Hub layout), locally and from the Hub."""

from __future__ import annotations

import csv
import logging
import shutil
from collections import Counter
from pathlib import Path

import pytest

from vlsafe.errors import DataError
from vlsafe.evaluation.benchmarks import load_benchmark
from vlsafe.evaluation.benchmarks.base import image_paths
from vlsafe.evaluation.benchmarks.jailbreakv import BENCHMARK
from vlsafe.fixtures.benchmarks.jailbreakv import COLUMNS, POLICIES, write_jailbreakv

REPO = "JailbreakV-28K/JailBreakV-28k"


@pytest.fixture(scope="module")
def jbv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jailbreakv(tmp_path_factory.mktemp("JailBreakV-28k"))


@pytest.fixture
def copy(jbv: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(jbv, tmp_path / "JailBreakV-28k"))


def _csv(folder: Path, name: str = "mini_JailBreakV_28K.csv") -> Path:
    return folder / "JailBreakV_28K" / name


def _rows(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def _write(path: Path, rows: list[list[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)


def _by_id(prompts, root: Path) -> dict[tuple[str, str], tuple]:
    """Each prompt's fields and its image's bytes (a Hub copy keeps them in another folder)."""
    return {
        (row["subset"], row["id"]): (
            row["messages"][0]["content"][1]["text"],
            row["category"],
            row["format"],
            row["redteam_query"],
            Path(paths[0]).relative_to(root).as_posix(),
            Path(paths[0]).read_bytes(),
        )
        for row, paths in zip(prompts, image_paths(prompts), strict=True)
    }


def test_mini_by_default_full_on_request(jbv: Path) -> None:
    mini = load_benchmark(BENCHMARK, jbv)
    assert Counter(mini["subset"]) == {"mini": 8} and all(mini["harmful"])
    full = load_benchmark(BENCHMARK, jbv, ["full"])
    assert len(full) == 24 and set(full["category"]) == set(POLICIES)
    assert set(mini["id"]) < set(full["id"])
    assert Counter(full["format"]) == {
        "Template": 5,
        "Persuade": 5,
        "Logic": 5,
        "FigStep": 5,
        "Query-relevant": 4,
    }
    both = load_benchmark(BENCHMARK, jbv, ["mini", "full"])
    assert Counter(both["subset"]) == {"mini": 8, "full": 24}


def test_prompt_is_the_image_then_the_jailbreak_query(jbv: Path) -> None:
    rows = {
        row[0]: dict(zip(COLUMNS, row, strict=True)) for row in _rows(_csv(jbv, "JailBreakV_28K.csv"))[1:]
    }
    prompts = load_benchmark(BENCHMARK, jbv, ["full"])
    for row, paths in zip(prompts, image_paths(prompts), strict=True):
        record = rows[row["id"]]
        assert paths == [str(jbv / "JailBreakV_28K" / record["image_path"])]
        assert row["messages"][0]["content"] == [
            {"type": "image", "text": None},
            {"type": "text", "text": record["jailbreak_query"]},
        ]
        assert (row["category"], row["format"], row["redteam_query"]) == (
            record["policy"],
            record["format"],
            record["redteam_query"],
        )
    shared = Counter(path for paths in image_paths(prompts) for path in paths)
    assert sorted(shared.values())[-1] == 2  # two rows name one image


def test_the_inner_folder_is_accepted_too(jbv: Path) -> None:
    inner = load_benchmark(BENCHMARK, jbv / "JailBreakV_28K")
    assert _by_id(inner, jbv) == _by_id(load_benchmark(BENCHMARK, jbv), jbv)


def test_ids_stay_with_their_prompt_when_the_file_is_reordered(copy: Path) -> None:
    before = _by_id(load_benchmark(BENCHMARK, copy), copy)
    header, *rows = _rows(_csv(copy))
    _write(_csv(copy), [header, *reversed(rows)])
    assert _by_id(load_benchmark(BENCHMARK, copy), copy) == before


def test_hub_download_of_mini_fetches_only_its_images(jbv: Path, hub_server) -> None:
    hub_server.add_repo(REPO, jbv, repo_type="dataset")
    from_hub = load_benchmark(BENCHMARK)  # the default source: the Hub id
    snapshot = Path(image_paths(from_hub)[0][0]).parents[2]
    assert _by_id(from_hub, snapshot) == _by_id(load_benchmark(BENCHMARK, jbv), jbv)
    fetched = {
        path.split("/resolve/", 1)[1].split("/", 1)[1]
        for method, path, _ in hub_server.requests
        if method == "GET" and "/resolve/" in path
    }
    mini_images = {f"JailBreakV_28K/{row[5]}" for row in _rows(_csv(jbv))[1:]}
    assert (
        fetched == {"JailBreakV_28K/mini_JailBreakV_28K.csv"} | mini_images
    )  # not 24 images, nor the full csv

    hub_server.requests.clear()
    full = load_benchmark(BENCHMARK, REPO, ["full"])
    assert len(full) == 24
    again = [path for method, path, _ in hub_server.requests if method == "GET" and "/resolve/" in path]
    assert not any(any(path.endswith(image) for image in mini_images) for path in again)  # cached ones stay


def test_image_missing_from_the_hub_repo_is_named_or_skipped(copy: Path, hub_server, caplog) -> None:
    hub_server.add_repo(REPO, copy, repo_type="dataset")
    image = _rows(_csv(copy))[2][5]
    (copy / "JailBreakV_28K" / image).unlink()
    with pytest.raises(DataError, match=rf"1 of 8 images .*{image}': missing\) of records '3'"):
        load_benchmark(BENCHMARK, REPO)
    with caplog.at_level(logging.WARNING):
        assert len(load_benchmark(BENCHMARK, REPO, skip_missing_images=True)) == 7
    assert "skipped 1 of 8 prompts" in caplog.text


def test_hub_repo_without_the_csv_is_named(tmp_path: Path, hub_server) -> None:
    (tmp_path / "repo").mkdir()
    hub_server.add_repo(REPO, tmp_path / "repo", repo_type="dataset")
    with pytest.raises(DataError, match=r"has no file 'JailBreakV_28K/mini_JailBreakV_28K.csv'"):
        load_benchmark(BENCHMARK)


def test_a_folder_that_does_not_exist_is_not_taken_for_a_hub_id(tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match=r"'/.*/no-such-folder' is neither a local folder nor a Hub dataset id"
    ):
        load_benchmark(BENCHMARK, tmp_path / "no-such-folder")


def test_wrong_folder_names_the_expected_files(jbv: Path) -> None:
    with pytest.raises(
        DataError, match=r"has none of JailBreakV_28K/mini_JailBreakV_28K.csv, mini_JailBreakV_28K.csv"
    ):
        load_benchmark(BENCHMARK, jbv / "JailBreakV_28K" / "figstep")


def test_unused_columns_may_be_missing_or_empty(copy: Path) -> None:
    keep = [i for i, name in enumerate(COLUMNS) if name not in ("from", "selected_mini", "transfer_from_llm")]
    rows = [[row[i] for i in keep] for row in _rows(_csv(copy))]
    rows[1][keep.index(COLUMNS.index("format"))] = ""
    _write(_csv(copy), rows)
    prompts = load_benchmark(BENCHMARK, copy)
    assert len(prompts) == 8 and prompts["format"][0] is None


def test_missing_column_names_the_file(copy: Path) -> None:
    _write(_csv(copy), [row[:5] for row in _rows(_csv(copy))])  # up to policy: no image_path
    with pytest.raises(
        DataError, match=r"mini_JailBreakV_28K.csv has the columns .*without \['image_path'\]"
    ):
        load_benchmark(BENCHMARK, copy)


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("image_path", "../../../etc/passwd", r"Record '3' \(#1\) in .*mini_JailBreakV_28K.csv names image '../../../etc/passwd', which points outside"),
        ("image_path", "/etc/passwd", r"names image '/etc/passwd', which points outside"),
        ("image_path", "", r"record '3' \(#1\) in .*mini_JailBreakV_28K.csv: field 'image_path' must be a non-empty"),
        ("jailbreak_query", "  ", r"record '3' \(#1\) .*: field 'jailbreak_query' must be a non-empty string"),
        ("policy", "", r"record '3' \(#1\) .*: field 'policy'"),
    ],
)  # fmt: skip
def test_malformed_row_is_named(copy: Path, column: str, value: str, message: str) -> None:
    rows = _rows(_csv(copy))
    rows[2][COLUMNS.index(column)] = value
    _write(_csv(copy), rows)
    with pytest.raises(DataError, match=message):
        load_benchmark(BENCHMARK, copy)


def test_repeated_id_names_both_rows(copy: Path) -> None:
    rows = _rows(_csv(copy))
    _write(_csv(copy), [*rows, rows[1]])
    with pytest.raises(DataError, match=r"records '0' \(#0\) and '0' \(#8\) have the same id '0'"):
        load_benchmark(BENCHMARK, copy)
