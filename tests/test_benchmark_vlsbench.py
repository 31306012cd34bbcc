"""VLSBench from its Hub dataset (and local copies): images unpacked, in imgs.tar or imgs.zip, the Hub path, errors."""

from __future__ import annotations

import io
import json
import logging
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import pytest

from vlsafe.errors import DataError
from vlsafe.evaluation.benchmarks import load_benchmark
from vlsafe.evaluation.benchmarks.base import image_paths
from vlsafe.evaluation.benchmarks.vlsbench import BENCHMARK, HUB_ID
from vlsafe.fixtures.benchmarks.vlsbench import CATEGORIES, write_vlsbench


@pytest.fixture(scope="module")
def vls(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_vlsbench(tmp_path_factory.mktemp("vlsbench") / "vlsbench")


@pytest.fixture(scope="module")
def vls_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_vlsbench(tmp_path_factory.mktemp("vlsbench-tar") / "vlsbench", archive="tar")


@pytest.fixture
def copy(vls: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(vls, tmp_path / "vlsbench"))


def _texts(prompts) -> dict[str, str]:
    return {row["id"]: row["messages"][0]["content"][-1]["text"] for row in prompts}


def test_every_prompt_is_harmful_with_its_category_and_sub_category(vls: Path) -> None:
    prompts = load_benchmark(BENCHMARK, vls)
    records = json.loads((vls / "data.json").read_text())
    assert set(prompts["subset"]) == {"harmful"} and all(prompts["harmful"])
    assert Counter(prompts["category"]) == {category: 2 for category, _ in CATEGORIES}
    assert prompts["sub_category"] == [r["sub_category"] for r in records]
    assert prompts["id"] == [str(r["instruction_id"]) for r in records]
    assert _texts(prompts) == {str(r["instruction_id"]): r["instruction"] for r in records}
    paths = image_paths(prompts)
    assert paths[0] == [str(vls / "imgs" / "0.png")]
    assert (
        paths[10] == paths[11] == [str(vls / "imgs" / "10.png")]
    )  # two prompts share one image, as published
    assert all(row["reference"] is None for row in prompts)


def test_ids_stay_with_their_prompt_when_the_file_is_reordered(copy: Path) -> None:
    before = _texts(load_benchmark(BENCHMARK, copy))
    records = json.loads((copy / "data.json").read_text())
    (copy / "data.json").write_text(json.dumps(records[::-1]))
    assert _texts(load_benchmark(BENCHMARK, copy)) == before


@pytest.mark.parametrize("archive", ["tar", "zip"])
def test_images_archive_beside_the_json_is_extracted_to_the_cache(
    archive: str, tmp_path: Path, isolated_vlsafe_cache: Path
) -> None:
    folder = write_vlsbench(tmp_path / "vlsbench", archive=archive)
    assert not (folder / "imgs").exists()
    prompts = load_benchmark(BENCHMARK, folder)
    assert len(prompts) == 12 and prompts[11]["images"][0].size == (64, 64)
    assert all(Path(p).is_relative_to(isolated_vlsafe_cache) for [p] in image_paths(prompts))
    assert len(load_benchmark(BENCHMARK, folder)) == 12  # the second load reuses the extraction


def test_the_github_copy_under_data_with_the_images_beside_it(copy: Path) -> None:
    (copy / "data").mkdir()
    (copy / "data.json").rename(copy / "data" / "data.json")
    (copy / "imgs").rename(copy / "data" / "imgs")
    assert len(load_benchmark(BENCHMARK, copy)) == 12


def test_the_hub_dataset_is_the_default_source(vls_tar: Path, hub_server) -> None:
    hub_server.add_repo(HUB_ID, vls_tar, repo_type="dataset")
    prompts = load_benchmark(BENCHMARK)
    assert len(prompts) == 12 and set(prompts["category"]) == {c for c, _ in CATEGORIES}
    fetched = {path for method, path, _ in hub_server.requests if method == "GET" and "/resolve/" in path}
    assert any(p.endswith("/data.json") for p in fetched) and any(p.endswith("/imgs.tar") for p in fetched)


def test_optional_fields_may_be_absent(copy: Path) -> None:
    records = json.loads((copy / "data.json").read_text())
    for record in records:
        for key in ("category", "sub_category", "source", "image_description", "safety_reason"):
            record.pop(key)
    (copy / "data.json").write_text(json.dumps(records))
    prompts = load_benchmark(BENCHMARK, copy)
    assert len(prompts) == 12 and set(prompts["category"]) == set(prompts["sub_category"]) == {None}


def test_wrong_folder_names_both_places_of_the_json(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"has none of data.json, data/data.json.*Foreshhh/vlsbench"):
        load_benchmark(BENCHMARK, tmp_path)


def test_no_images_names_the_folder_and_archives_it_looked_for(copy: Path) -> None:
    shutil.rmtree(copy / "imgs")
    with pytest.raises(DataError, match=r"neither imgs/ nor imgs.zip / imgs.tar"):
        load_benchmark(BENCHMARK, copy)


def test_missing_image_names_it_and_its_prompts(copy: Path, caplog) -> None:
    (copy / "imgs" / "10.png").unlink()
    with pytest.raises(DataError, match=r"imgs/10.png': missing\) of records '10', '11'"):
        load_benchmark(BENCHMARK, copy)
    with caplog.at_level(logging.WARNING, "vlsafe"):
        assert len(load_benchmark(BENCHMARK, copy, skip_missing_images=True)) == 10
    assert "skipped 2 of 12 prompts" in caplog.text


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda r: r[3].pop("instruction_id"),
            r"record #3 in .*data.json: field 'instruction_id' \(its id\) must",
        ),
        (
            lambda r: r[2].update(instruction=""),
            r"record 2 \(#2\) in .*data.json: field 'instruction' must be a non",
        ),
        (
            lambda r: r[5].update(category=6),
            r"record 5 \(#5\) .*'category' must be a string when present, found 6",
        ),
        (lambda r: r[0].update(image_path="/etc/passwd"), r"'/etc/passwd', which points outside"),
        (lambda r: r.__setitem__(1, ["x"]), r"record #1 in .*data.json: expected an object"),
        (
            lambda r: r[4].update(instruction_id=3),
            r"1 ids occur more than once in one subset \(first: harmful/'3'\)",
        ),
    ],
)
def test_malformed_record_is_named(copy: Path, change, message: str) -> None:
    records = json.loads((copy / "data.json").read_text())
    change(records)
    (copy / "data.json").write_text(json.dumps(records))
    with pytest.raises(DataError, match=message):
        load_benchmark(BENCHMARK, copy)


def test_tar_member_climbing_out_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    folder = write_vlsbench(tmp_path / "vlsbench", archive="tar")
    with tarfile.open(folder / "imgs.tar", "a") as archive:
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = 3
        archive.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(DataError, match=r"member '../../escaped.txt' is unsafe \(path climbs out"):
        load_benchmark(BENCHMARK, folder)
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path.parent / "escaped.txt").exists()


def test_damaged_tar_is_named(tmp_path: Path) -> None:
    folder = write_vlsbench(tmp_path / "vlsbench", archive="tar")
    (folder / "imgs.tar").write_bytes((folder / "imgs.tar").read_bytes()[:700])
    with pytest.raises(DataError, match=r"imgs.tar is not a readable tar archive"):
        load_benchmark(BENCHMARK, folder)
