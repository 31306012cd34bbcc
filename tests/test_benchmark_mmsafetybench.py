"""MM-SafetyBench from its question files and image download (synthetic copy in the published layout)."""

from __future__ import annotations

import json
import logging
import shutil
import zipfile
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from vlsafe.errors import DataError
from vlsafe.evaluation.benchmarks import load_benchmark
from vlsafe.evaluation.benchmarks import mmsafetybench as loader
from vlsafe.evaluation.benchmarks.base import image_paths
from vlsafe.evaluation.benchmarks.mmsafetybench import BENCHMARK
from vlsafe.fixtures.benchmarks.mmsafetybench import IMAGE_FOLDER, SCENARIOS, write_mmsafetybench

FIRST = SCENARIOS[0]


@pytest.fixture(scope="module")
def mmsb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mmsafetybench(tmp_path_factory.mktemp("MM-SafetyBench"))


@pytest.fixture
def copy(mmsb: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(mmsb, tmp_path / "MM-SafetyBench"))


def _questions(folder: Path, scenario: str = FIRST) -> Path:
    return folder / "data" / "processed_questions" / f"{scenario}.json"


def _edit(folder: Path, change, scenario: str = FIRST) -> None:
    path = _questions(folder, scenario)
    records = json.loads(path.read_text())
    path.write_text(json.dumps(change(records)))


def _by_id(prompts) -> dict[tuple[str, str], tuple]:
    return {
        (row["subset"], row["id"]): (row["messages"][0]["content"][1]["text"], row["category"], paths[0])
        for row, paths in zip(prompts, image_paths(prompts), strict=True)
    }


def test_the_13_scenarios_are_spelled_as_published() -> None:
    assert loader.SCENARIOS == SCENARIOS  # the fixture writes them out on its own
    assert FIRST == "01-Illegal_Activitiy" and len(set(SCENARIOS)) == 13


def test_every_question_once_per_subset_all_harmful(mmsb: Path) -> None:
    prompts = load_benchmark(BENCHMARK, mmsb)
    assert Counter(prompts["subset"]) == {"sd": 14, "sd_typo": 14, "typo": 14}
    assert all(prompts["harmful"])
    assert Counter(prompts["category"]) == {scenario: 3 for scenario in SCENARIOS} | {FIRST: 6}
    sd = load_benchmark(BENCHMARK, mmsb, ["sd"])
    assert set(sd["subset"]) == {"sd"} and sorted(sd["id"])[:2] == [f"{FIRST}/0", f"{FIRST}/1"]


def test_each_subset_pairs_its_image_with_its_question(mmsb: Path) -> None:
    records = {s: json.loads(_questions(mmsb, s).read_text()) for s in SCENARIOS}
    prompts = load_benchmark(BENCHMARK, mmsb)
    kinds = {"sd": ("SD", "Rephrased Question(SD)"), "sd_typo": ("SD_TYPO", "Rephrased Question")}
    kinds["typo"] = ("TYPO", "Rephrased Question")
    for row, paths in zip(prompts, image_paths(prompts), strict=True):
        scenario, question_id = row["id"].split("/")
        folder, key = kinds[row["subset"]]
        assert paths == [str(mmsb / IMAGE_FOLDER / scenario / folder / f"{question_id}.jpg")]
        assert row["messages"][0]["content"] == [
            {"type": "image", "text": None},
            {"type": "text", "text": records[scenario][question_id][key]},
        ]
        assert row["category"] == scenario
        with Image.open(paths[0]) as image:
            assert image.format == "JPEG"


def test_ids_stay_with_their_prompt_when_a_file_is_reordered(copy: Path) -> None:
    before = _by_id(load_benchmark(BENCHMARK, copy))
    _edit(copy, lambda records: {key: records[key] for key in reversed(records)})
    assert list(json.loads(_questions(copy).read_text())) == ["1", "0"]
    assert _by_id(load_benchmark(BENCHMARK, copy)) == before


@pytest.mark.parametrize("place", ["imgs", "data/imgs", "imgs/imgs", f"{IMAGE_FOLDER}/{IMAGE_FOLDER}"])
def test_image_folder_may_be_in_any_published_place(copy: Path, place: str) -> None:
    expected = len(load_benchmark(BENCHMARK, copy))
    (copy / place).parent.mkdir(parents=True, exist_ok=True)
    staging = copy.parent / "staging"
    shutil.move(copy / IMAGE_FOLDER, staging)
    shutil.move(staging, copy / place)
    prompts = load_benchmark(BENCHMARK, copy)
    assert len(prompts) == expected
    assert all(p[0].startswith(f"{copy / place}/") for p in image_paths(prompts))


def test_zip_of_the_images_beside_the_questions(copy: Path, isolated_vlsafe_cache: Path) -> None:
    with zipfile.ZipFile(copy / f"{IMAGE_FOLDER}.zip", "w") as archive:
        for path in sorted((copy / IMAGE_FOLDER).rglob("*.jpg")):
            archive.write(path, path.relative_to(copy).as_posix())  # unpacks to MM-SafetyBench(imgs)/...
    shutil.rmtree(copy / IMAGE_FOLDER)
    prompts = load_benchmark(BENCHMARK, copy, ["typo"])
    assert len(prompts) == 14
    assert all(Path(p[0]).is_relative_to(isolated_vlsafe_cache) for p in image_paths(prompts))


def test_image_root_option(copy: Path, tmp_path: Path) -> None:
    shutil.move(copy / IMAGE_FOLDER, tmp_path / "elsewhere")
    prompts = load_benchmark(BENCHMARK, copy, ["sd"], image_root=tmp_path / "elsewhere")
    assert len(prompts) == 14 and image_paths(prompts)[0][0].startswith(str(tmp_path / "elsewhere"))
    with pytest.raises(DataError, match=r"image_root .*data holds none of the scenario folders"):
        load_benchmark(BENCHMARK, copy, image_root=copy / "data")


def test_no_images_names_the_places_looked_in(copy: Path) -> None:
    shutil.rmtree(copy / IMAGE_FOLDER)
    with pytest.raises(
        DataError,
        match=r"no images in .*expected 01-Illegal_Activitiy/SD/0.jpg .*MM-SafetyBench\(imgs\)/, imgs/, data/imgs/.*image_root=",
    ):
        load_benchmark(BENCHMARK, copy)


def test_wrong_folder_and_missing_scenario_are_named(copy: Path) -> None:
    with pytest.raises(DataError, match=r"has no data/processed_questions/ folder"):
        load_benchmark(BENCHMARK, copy / IMAGE_FOLDER)
    _questions(copy, "07-Sex").unlink()
    with pytest.raises(DataError, match=r"lacks 1 of the 13 scenario files \(first: 07-Sex.json\)"):
        load_benchmark(BENCHMARK, copy)


def test_the_data_folder_itself_is_accepted(copy: Path) -> None:
    shutil.move(copy / IMAGE_FOLDER, copy / "data" / "imgs")
    assert len(load_benchmark(BENCHMARK, copy / "data")) == 42


def test_an_unused_field_is_never_a_reason_to_refuse(copy: Path) -> None:
    def drop(records: dict) -> dict:
        del records["1"]["Rephrased Question(SD)"]
        records["0"]["Key Phrase"] = None
        return records

    _edit(copy, drop)
    assert len(load_benchmark(BENCHMARK, copy, ["sd_typo", "typo"])) == 28
    with pytest.raises(
        DataError,
        match=r"record '1' \(#1\) in .*01-Illegal_Activitiy.json: field 'Rephrased Question\(SD\)' must be a non-empty string \(no such field\)",
    ):
        load_benchmark(BENCHMARK, copy, ["sd"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r | {"1": "text"}, r"record '1' \(#1\) in .*01-Illegal_Activitiy.json: expected a non-empty question id and an object"),
        (lambda r: {" ": r["0"]}, r"record #0 in .*: expected a non-empty question id"),
        (lambda r: {"../../x": r["0"]}, r"Record '../../x' \(#0\) in .*01-Illegal_Activitiy.json names image .* outside"),
        (lambda r: r | {"0": r["0"] | {"Rephrased Question": 7}}, r"record '0' \(#0\) .*: field 'Rephrased Question' must be a non-empty string \(found 7\)"),
        (lambda r: [r["0"]], r"01-Illegal_Activitiy.json must hold a JSON object of questions keyed by id, found list"),
    ],
)  # fmt: skip
def test_malformed_record_is_named(copy: Path, change, message: str) -> None:
    _edit(copy, change)
    with pytest.raises(DataError, match=message):
        load_benchmark(BENCHMARK, copy)


def test_missing_image_is_named_or_skipped_and_counted(copy: Path, caplog: pytest.LogCaptureFixture) -> None:
    (copy / IMAGE_FOLDER / "05-EconomicHarm" / "SD_TYPO" / "0.jpg").unlink()
    with pytest.raises(DataError, match=r"SD_TYPO/0.jpg': missing\) of records '05-EconomicHarm/0'"):
        load_benchmark(BENCHMARK, copy)
    with caplog.at_level(logging.WARNING):
        prompts = load_benchmark(BENCHMARK, copy, skip_missing_images=True)
    assert len(prompts) == 41 and "skipped 1 of 42 prompts" in caplog.text


def test_other_json_files_are_named_in_the_log(copy: Path, caplog: pytest.LogCaptureFixture) -> None:
    shutil.copy(_questions(copy), copy / "data" / "processed_questions" / "14-New.json")
    with caplog.at_level(logging.WARNING):
        assert len(load_benchmark(BENCHMARK, copy)) == 42
    assert "ignoring 14-New.json" in caplog.text
