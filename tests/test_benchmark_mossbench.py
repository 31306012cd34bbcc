"""MOSSBench from a clone of its repository: both subsets, stable ids, the image layouts a clone can have, errors."""

from __future__ import annotations

import json
import logging
import shutil
import zipfile
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from vlsafe.errors import DataError, VlsafeError
from vlsafe.evaluation.benchmarks import load_benchmark
from vlsafe.evaluation.benchmarks.base import image_paths
from vlsafe.evaluation.benchmarks.mossbench import BENCHMARK
from vlsafe.fixtures.benchmarks.mossbench import write_mossbench
from vlsafe.fixtures.data import UNSAFE_TEXT_REQUESTS

BENIGN_JSON = Path("data/images_information/information.json")
CONTRAST_JSON = Path("data_contrast/images_information/information.json")


@pytest.fixture(scope="module")
def moss(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mossbench(tmp_path_factory.mktemp("mossbench") / "MOSSBench")


@pytest.fixture
def clone(moss: Path, tmp_path: Path) -> Path:
    """A copy of the clone that a test may change."""
    return Path(shutil.copytree(moss, tmp_path / "MOSSBench"))


def _edit(path: Path, change) -> None:
    records = json.loads(path.read_text())
    change(records)
    path.write_text(json.dumps(records))


def test_default_is_the_benign_set_with_its_three_stimulus_types(moss: Path) -> None:
    prompts = load_benchmark(BENCHMARK, moss)
    assert set(prompts["subset"]) == {"oversensitivity"} and not any(prompts["harmful"])
    assert Counter(prompts["category"]) == {
        "Exaggerated Risk": 3,
        "Negated Harm": 3,
        "Counterintuitive Interpretation": 3,
    }
    records = json.loads((moss / BENIGN_JSON).read_text())
    assert prompts["id"] == list(records)  # the records' keys, in file order
    first = prompts[0]
    assert first["messages"][0]["content"][-1]["text"] == records["1"]["question"]
    assert [part["type"] for part in first["messages"][0]["content"]] == ["image", "text"]
    assert image_paths(prompts)[0] == [str(moss / "data" / "images" / "1.png")]
    assert first["images"][0].size == (64, 64)


def test_contrast_set_is_harmful_and_borrows_the_benign_pictures_it_lacks(moss: Path, caplog) -> None:
    with caplog.at_level(logging.INFO, "vlsafe"):
        prompts = load_benchmark(BENCHMARK, moss, ["contrast"])
    assert prompts["id"] == ["1", "4", "7", "9"] and all(prompts["harmful"])
    texts = [row["messages"][0]["content"][-1]["text"] for row in prompts]
    assert all(any(t.startswith(r.split("{")[0]) for r in UNSAFE_TEXT_REQUESTS) for t in texts)
    assert [path for [path] in image_paths(prompts)] == [
        str(moss / "data_contrast" / "images" / "1.png"),
        str(moss / "data_contrast" / "images" / "4.png"),
        str(moss / "data" / "images" / "7.png"),
        str(moss / "data" / "images" / "9.png"),
    ]
    assert "MOSSBench contrast: 2 images taken from a stand-in file" in caplog.text
    both = load_benchmark(BENCHMARK, moss, ["oversensitivity", "contrast"])
    assert Counter(zip(both["subset"], both["harmful"], strict=True)) == {
        ("oversensitivity", False): 9,
        ("contrast", True): 4,
    }


def test_ids_stay_with_their_prompt_when_the_file_is_reordered(clone: Path) -> None:
    def texts(folder: Path) -> dict[str, str]:
        prompts = load_benchmark(BENCHMARK, folder, ["oversensitivity", "contrast"])
        return {f"{r['subset']}/{r['id']}": r["messages"][0]["content"][-1]["text"] for r in prompts}

    before = texts(clone)
    for relative in (BENIGN_JSON, CONTRAST_JSON):
        records = json.loads((clone / relative).read_text())
        (clone / relative).write_text(json.dumps(dict(reversed(records.items()))))
    assert texts(clone) == before and len(before) == 13


def test_webp_copy_in_the_git_repository_stands_in_for_a_missing_png(clone: Path, caplog) -> None:
    png = clone / "data" / "images" / "2.png"
    Image.open(png).save(png.with_suffix(".webp"))
    png.unlink()
    with caplog.at_level(logging.INFO, "vlsafe"):
        prompts = load_benchmark(BENCHMARK, clone)
    assert image_paths(prompts)[1] == [str(png.with_suffix(".webp"))]
    assert "oversensitivity: 1 images taken from a stand-in file" in caplog.text


def test_images_zip_of_the_readme_left_in_data(clone: Path, isolated_vlsafe_cache: Path) -> None:
    images = clone / "data" / "images"
    with zipfile.ZipFile(clone / "data" / "images.zip", "w") as archive:
        for path in sorted(images.iterdir()):
            archive.write(path, f"images/{path.name}")
    shutil.rmtree(images)
    prompts = load_benchmark(BENCHMARK, clone, ["oversensitivity", "contrast"])
    assert len(prompts) == 13
    borrowed = image_paths(prompts)[-1][0]  # contrast 9 has no picture of its own: the zip's one
    assert Path(borrowed).is_relative_to(isolated_vlsafe_cache) and borrowed.endswith("images/9.png")


def test_the_data_folder_itself_is_accepted(moss: Path) -> None:
    assert len(load_benchmark(BENCHMARK, moss / "data")) == 9


def test_wrong_folder_names_the_expected_file(tmp_path: Path) -> None:
    (tmp_path / "data.json").write_text("[]")  # e.g. a VLSBench folder
    with pytest.raises(DataError, match=r"has none of images_information/information.json.*MOSSBench"):
        load_benchmark(BENCHMARK, tmp_path)


def test_missing_image_is_named_with_its_record_or_skipped_and_counted(clone: Path, caplog) -> None:
    (clone / "data" / "images" / "5.png").unlink()
    with pytest.raises(DataError, match=r"5.png': missing\) of records '5'"):
        load_benchmark(BENCHMARK, clone)
    with caplog.at_level(logging.WARNING, "vlsafe"):
        prompts = load_benchmark(BENCHMARK, clone, skip_missing_images=True)
    assert len(prompts) == 8 and "5" not in prompts["id"]
    assert "skipped 1 of 9 prompts" in caplog.text


def test_no_images_at_all_says_where_to_get_them(clone: Path) -> None:
    shutil.rmtree(clone / "data" / "images")
    with pytest.raises(DataError, match=r"neither images/ nor images.zip / images.tar.*xirui-li/MOSSBench"):
        load_benchmark(BENCHMARK, clone)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda r: r["3"].pop("question"),
            r"record '3' in .*information.json: field 'question' must be a non-empty",
        ),
        (
            lambda r: r["4"].update(image=7),
            r"record '4' in .*: field 'image' must be a non-empty string, found 7",
        ),
        (lambda r: r["2"].update(metadata="type 1"), r"record '2' in .*: field 'metadata' must be an object"),
        (lambda r: r["2"]["metadata"].update(over=[1]), r"record '2' \(metadata\) .*'over' must be a string"),
        (lambda r: r.update({"6": "x"}), r"record '6' in .*: expected an object, found 'x'"),
        (lambda r: r["1"].update(image="../../secret.png"), r"'../../secret.png', which points outside"),
    ],
)
def test_malformed_record_is_named(clone: Path, change, message: str) -> None:
    _edit(clone / BENIGN_JSON, change)
    with pytest.raises(DataError, match=message):
        load_benchmark(BENCHMARK, clone)


def test_fields_the_loader_does_not_use_never_refuse_the_file(clone: Path) -> None:
    def strip(records: dict) -> None:
        for record in records.values():
            for key in ("short description", "description", "pid"):
                record.pop(key)
            record["metadata"] = {"harm": "not a list"}

    _edit(clone / BENIGN_JSON, strip)
    prompts = load_benchmark(BENCHMARK, clone)
    assert len(prompts) == 9 and set(prompts["category"]) == {None}


def test_another_layout_is_refused_with_the_expected_shape(clone: Path) -> None:
    (clone / BENIGN_JSON).write_text(json.dumps([{"image": "images/1.png", "question": "q"}]))
    with pytest.raises(
        DataError, match=r"information.json must hold a JSON object of MOSSBench records keyed by pid"
    ):
        load_benchmark(BENCHMARK, clone)


def test_unknown_subset_lists_the_real_ones(moss: Path) -> None:
    with pytest.raises(
        VlsafeError, match=r"no subsets \['benign'\]; choose from \['oversensitivity', 'contrast'\]"
    ):
        load_benchmark(BENCHMARK, moss, ["benign"])
