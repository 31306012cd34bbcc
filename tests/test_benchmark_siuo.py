"""SIUO from a clone of its repository: the generation task, its references, the layouts a copy can have, errors."""

from __future__ import annotations

import json
import logging
import shutil
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from vlsafe.errors import DataError
from vlsafe.evaluation.benchmarks import load_benchmark
from vlsafe.evaluation.benchmarks.base import image_paths
from vlsafe.evaluation.benchmarks.siuo import BENCHMARK
from vlsafe.fixtures.benchmarks.siuo import CATEGORIES, write_siuo
from vlsafe.fixtures.data import TEXT_REFUSAL

JSON = Path("data/siuo_gen.json")


@pytest.fixture(scope="module")
def siuo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_siuo(tmp_path_factory.mktemp("siuo") / "SIUO")


@pytest.fixture
def clone(siuo: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(siuo, tmp_path / "SIUO"))


def _edit(clone: Path, change) -> None:
    records = json.loads((clone / JSON).read_text())
    change(records)
    (clone / JSON).write_text(json.dumps(records))


def test_every_prompt_is_harmful_with_its_category_reference_and_warning(siuo: Path) -> None:
    prompts = load_benchmark(BENCHMARK, siuo)
    records = json.loads((siuo / JSON).read_text())
    assert set(prompts["subset"]) == {"harmful"} and all(prompts["harmful"])
    assert Counter(prompts["category"]) == {category: 2 for category, _ in CATEGORIES}
    assert prompts["id"] == [str(r["question_id"]) for r in records] and prompts["id"][:2] == ["1001", "1002"]
    assert prompts["reference"] == [TEXT_REFUSAL] * 18  # the safe reference answer
    assert prompts["safety_warning"] == [r["safety_warning"] for r in records]
    assert [row["messages"][0]["content"][-1]["text"] for row in prompts] == [r["question"] for r in records]
    assert image_paths(prompts)[0] == [str(siuo / "data" / "images" / "S-01.png")]
    assert image_paths(prompts)[-1] == [str(siuo / "data" / "images" / "P-02.png")]


def test_ids_stay_with_their_prompt_when_the_file_is_reordered(clone: Path) -> None:
    def texts() -> dict[str, str]:
        return {r["id"]: r["messages"][0]["content"][-1]["text"] for r in load_benchmark(BENCHMARK, clone)}

    before = texts()
    _edit(clone, lambda records: records.reverse())
    assert texts() == before


def test_json_at_the_root_with_the_images_beside_it(clone: Path) -> None:
    for name in ("siuo_gen.json", "images"):
        (clone / "data" / name).rename(clone / name)
    assert len(load_benchmark(BENCHMARK, clone)) == 18


@pytest.mark.parametrize("prefix", ["images/", ""])
def test_images_zip_beside_the_json(clone: Path, prefix: str, isolated_vlsafe_cache: Path) -> None:
    images = clone / "data" / "images"
    with zipfile.ZipFile(clone / "data" / "images.zip", "w") as archive:
        for path in sorted(images.iterdir()):
            archive.write(path, prefix + path.name)
    shutil.rmtree(images)
    prompts = load_benchmark(BENCHMARK, clone)
    assert len(prompts) == 18
    assert all(Path(p).is_relative_to(isolated_vlsafe_cache) for [p] in image_paths(prompts))


def test_an_empty_reference_is_no_reference_and_unused_fields_never_refuse(clone: Path) -> None:
    def change(records: list) -> None:
        records[0]["reference_answer"] = ""
        del records[1]["reference_answer"], records[1]["safety_warning"], records[2]["category"]

    _edit(clone, change)
    prompts = load_benchmark(BENCHMARK, clone)
    assert prompts["reference"][:3] == [None, None, TEXT_REFUSAL]
    assert prompts["safety_warning"][1] is None and prompts["category"][2] is None


def test_the_multiple_choice_file_alone_is_not_taken_for_the_generation_task(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "siuo_mcqa.json").write_text("[]")
    with pytest.raises(DataError, match=r"has none of data/siuo_gen.json, siuo_gen.json.*sinwang20/SIUO"):
        load_benchmark(BENCHMARK, tmp_path)


def test_missing_image_names_it_and_its_prompt(clone: Path, caplog) -> None:
    (clone / "data" / "images" / "D-02.png").unlink()
    with pytest.raises(DataError, match=r"D-02.png': missing\) of records '2002'"):
        load_benchmark(BENCHMARK, clone)
    with caplog.at_level(logging.WARNING, "vlsafe"):
        assert len(load_benchmark(BENCHMARK, clone, skip_missing_images=True)) == 17
    assert "skipped 1 of 18 prompts" in caplog.text


def test_images_not_downloaded_says_where_they_go(clone: Path) -> None:
    shutil.rmtree(clone / "data" / "images")
    with pytest.raises(
        DataError, match=r"neither images/ nor images.zip / images.tar.*unpack them into .*data/images"
    ):
        load_benchmark(BENCHMARK, clone)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda r: r[4].update(question=["q"]),
            r"record 3001 \(#4\) in .*siuo_gen.json: field 'question' must be",
        ),
        (
            lambda r: r[0].update(question_id=True),
            r"record #0 in .*: field 'question_id' \(its id\) must be an int",
        ),
        (lambda r: r[1].pop("image"), r"record 1002 \(#1\) in .*: field 'image' must be a non-empty string"),
        (
            lambda r: r[2].update(reference_answer={"a": 1}),
            r"record 2001 \(#2\) .*'reference_answer' must be a str",
        ),
        (lambda r: r[3].update(image="../../../etc/hosts"), r"'../../../etc/hosts', which points outside"),
        (lambda r: r.append(r[0]), r"ids occur more than once in one subset \(first: harmful/'1001'\)"),
    ],
)
def test_malformed_record_is_named(clone: Path, change, message: str) -> None:
    _edit(clone, change)
    with pytest.raises(DataError, match=message):
        load_benchmark(BENCHMARK, clone)


def test_an_object_instead_of_the_list_is_refused(clone: Path) -> None:
    (clone / JSON).write_text(json.dumps({"1001": {"question": "q"}}))
    with pytest.raises(DataError, match=r"siuo_gen.json must hold a JSON list of SIUO records, found dict"):
        load_benchmark(BENCHMARK, clone)
