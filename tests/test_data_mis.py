"""vlsafe.data.mis, vlsafe.data.length and the synthetic MIS fixtures: image order, counts, ids, layouts, the
Hub path, bad input, and the length filter against the collator's own count."""

from __future__ import annotations

import io
import json
import logging
import shutil
import zipfile
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image, ImageStat
from transformers import AutoConfig, AutoProcessor
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from vlsafe.data.length import drop_too_long, token_lengths
from vlsafe.data.mis import CATEGORIES, derived_id, load_mis_test, load_mis_train
from vlsafe.data.sharegpt import load_sharegpt
from vlsafe.errors import DataError
from vlsafe.evaluation.judges import is_refusal
from vlsafe.fixtures.mis_data import (
    CATEGORIES as FIXTURE_CATEGORIES,
)
from vlsafe.fixtures.mis_data import (
    MISTestSizes,
    write_synthetic_mis_general,
    write_synthetic_mis_test,
    write_synthetic_mis_train,
)

SIZES = MISTestSizes(easy=6, hard=4, real=3)


@pytest.fixture(scope="session")
def synthetic_mis_train(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MIS_Train's Hub layout: mis_train.json + images.zip, 24 harmful pairs."""
    return write_synthetic_mis_train(tmp_path_factory.mktemp("mis_train"), samples=24)


@pytest.fixture(scope="session")
def synthetic_mis_test(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MIS_Test's Hub layout with image folders; mis_real.json has no ids."""
    return write_synthetic_mis_test(tmp_path_factory.mktemp("mis_test"), sizes=SIZES)


@pytest.fixture(scope="session")
def synthetic_mis_general(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """General multi-image QA (safe pairs and plain questions) in ShareGPT form."""
    return write_synthetic_mis_general(tmp_path_factory.mktemp("mis_general"), train=16, test=6)


def _dimmed(image: Image.Image) -> bool:
    return ImageStat.Stat(image.convert("L")).mean[0] < 150


def _comparable(dataset) -> list[tuple]:
    """Everything but the (cache-location dependent) image paths, plus the decoded pixels in order."""
    return [
        (row["id"], row["kind"], row["category"], json.dumps(row["messages"]))
        + tuple(image.tobytes() for image in row["images"])
        for row in dataset
    ]


def test_train_gives_both_images_in_order_and_the_chain_of_thought(synthetic_mis_train: Path) -> None:
    records = json.loads((synthetic_mis_train / "mis_train.json").read_text())
    dataset = load_mis_train(synthetic_mis_train)

    assert len(dataset) == len(records) == 24
    assert Counter(dataset["kind"]) == {"unsafe": 24} and set(dataset["safe"]) == {False}
    assert set(dataset["source"]) == {"mis"} and dataset["id"] == [r["id"] for r in records]
    with zipfile.ZipFile(synthetic_mis_train / "images.zip") as archive:
        for row, record in zip(dataset.select(range(3)), records, strict=False):
            expected = [Image.open(io.BytesIO(archive.read(path))).convert("RGB") for path in record["image"]]
            assert [image.tobytes() for image in row["images"]] == [image.tobytes() for image in expected]
            user, assistant = row["messages"]
            question = record["conversations"][0]["value"].split("\n")[-1]
            assert [(p["type"], p["text"]) for p in user["content"]] == [
                ("image", None),
                ("image", None),
                ("text", question),
            ]
            assert assistant["content"][0]["text"] == record["conversations"][1]["value"]


def test_missing_train_ids_are_derived_from_content(synthetic_mis_train: Path, tmp_path: Path) -> None:
    records = json.loads((synthetic_mis_train / "mis_train.json").read_text())
    for record in records[:5]:
        del record["id"]
    records[4] = dict(records[3])  # an exact repeat
    shutil.copy(synthetic_mis_train / "images.zip", tmp_path)
    (tmp_path / "mis_train.json").write_text(json.dumps(records))

    first = load_mis_train(tmp_path)["id"]
    assert first[5:] == [r["id"] for r in records[5:]]
    human_turn = records[0]["conversations"][0]["value"]  # as written, <image> placeholders included
    assert first[0] == derived_id("train", records[0]["image"], human_turn)
    assert first[0].startswith("train-") and len(first[0]) == len("train-") + 12
    assert first[4] == f"{first[3]}-2"
    # Content-based, not positional: the same record keeps its id when others are moved around.
    (tmp_path / "mis_train.json").write_text(json.dumps(records[1:] + records[:1]))
    assert load_mis_train(tmp_path)["id"][-1] == first[0]


def test_test_splits_give_prompts_with_both_images_in_path_order(synthetic_mis_test: Path) -> None:
    for split in ("easy", "hard", "real"):
        records = json.loads((synthetic_mis_test / f"mis_{split}.json").read_text())
        dataset = load_mis_test(synthetic_mis_test, split)
        assert len(dataset) == len(records) == getattr(SIZES, split)
        assert set(dataset["split"]) == {split} and set(dataset["kind"]) == {"unsafe"}
        assert dataset["category"] == [r["category"] for r in records]
        assert dataset["subcategory"] == [r["sub_category"] for r in records]
        assert set(dataset["category"]) <= set(CATEGORIES)
        row, record = dataset[0], records[0]
        assert [m["role"] for m in row["messages"]] == ["user"]
        assert [(p["type"], p["text"]) for p in row["messages"][0]["content"]] == [
            ("image", None),
            ("image", None),
            ("text", record["question"]),
        ]
        on_disk = [Image.open(synthetic_mis_test / record[f"image_path{n}"]).convert("RGB") for n in (1, 2)]
        assert [image.tobytes() for image in row["images"]] == [image.tobytes() for image in on_disk]
    assert load_mis_test(synthetic_mis_test, "easy")["id"][:3] == ["1", "2", "3"]


def test_test_records_without_id_get_stable_content_ids(synthetic_mis_test: Path, tmp_path: Path) -> None:
    records = json.loads((synthetic_mis_test / "mis_real.json").read_text())
    assert not any("id" in record for record in records)
    ids = load_mis_test(synthetic_mis_test, "real")["id"]
    assert ids == load_mis_test(synthetic_mis_test, "real")["id"]
    assert len(set(ids)) == len(ids) and all(i.startswith("real-") for i in ids)
    assert ids[0] == derived_id(
        "real", [records[0]["image_path1"], records[0]["image_path2"]], records[0]["question"]
    )

    shutil.copytree(synthetic_mis_test / "real_image", tmp_path / "real_image")
    (tmp_path / "mis_real.json").write_text(json.dumps(records[::-1] + records[:1]))
    reordered = load_mis_test(tmp_path, "real")["id"]
    assert reordered[: len(ids)] == ids[::-1] and reordered[-1] == f"{ids[0]}-2"


def test_zipped_image_folders_load_the_same(synthetic_mis_test: Path, tmp_path: Path) -> None:
    zipped = write_synthetic_mis_test(tmp_path, sizes=SIZES, zipped=True)
    assert (zipped / "hard_image.zip").is_file() and not (zipped / "hard_image").exists()
    for split in ("hard", "real"):
        assert _comparable(load_mis_test(zipped, split)) == _comparable(
            load_mis_test(synthetic_mis_test, split)
        )


def test_train_archive_wrapped_in_a_folder_loads_the_same(synthetic_mis_train: Path, tmp_path: Path) -> None:
    wrapped = write_synthetic_mis_train(tmp_path, samples=24, zip_prefix="MIS_Train/")
    assert _comparable(load_mis_train(wrapped)) == _comparable(load_mis_train(synthetic_mis_train))


def test_hub_path_matches_local_folders(
    synthetic_mis_train: Path, synthetic_mis_test: Path, hub_server
) -> None:
    hub_server.add_repo("Tuwhy/MIS_Train", synthetic_mis_train, repo_type="dataset")
    hub_server.add_repo("Tuwhy/MIS_Test", synthetic_mis_test, repo_type="dataset")
    assert _comparable(load_mis_train()) == _comparable(load_mis_train(synthetic_mis_train))
    assert _comparable(load_mis_test(split="real")) == _comparable(load_mis_test(synthetic_mis_test, "real"))
    downloaded = {path for method, path, _ in hub_server.requests if method == "GET" and "/resolve/" in path}
    assert any(path.endswith("images.zip") for path in downloaded)
    assert any(path.endswith("real_image/1/object2.png") for path in downloaded)
    assert not any("easy_image" in path for path in downloaded)  # only the asked split's images


def _write_test_split(folder: Path, source: Path, records: list) -> Path:
    shutil.copytree(source / "easy_image", folder / "easy_image", dirs_exist_ok=True)
    (folder / "mis_easy.json").write_text(json.dumps(records))
    return folder


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.pop("question"), r"record #2 \(id 3\) in mis_easy.json: field 'question'"),
        (lambda r: r.update(image_path2=""), r"record #2 \(id 3\).*'image_path2' must be a non-empty string"),
        (
            lambda r: r.update(id=[3]),
            r"record #2 \(id \[3\]\).*'id' must be an integer or a non-empty string",
        ),
        (
            lambda r: r.update(image_path1="/etc/passwd"),
            r"Record '3' in mis_easy.json names image '/etc/passwd'",
        ),
    ],
)
def test_malformed_test_record_is_named(
    change, message: str, synthetic_mis_test: Path, tmp_path: Path
) -> None:
    records = json.loads((synthetic_mis_test / "mis_easy.json").read_text())
    change(records[2])
    with pytest.raises(DataError, match=message):
        load_mis_test(_write_test_split(tmp_path, synthetic_mis_test, records), "easy")


def test_malformed_train_record_is_named(synthetic_mis_train: Path, tmp_path: Path) -> None:
    records = json.loads((synthetic_mis_train / "mis_train.json").read_text())
    records[1]["conversations"][0]["value"] = "<image>\nOnly one placeholder for two images."
    shutil.copy(synthetic_mis_train / "images.zip", tmp_path)
    (tmp_path / "mis_train.json").write_text(json.dumps(records))
    with pytest.raises(
        DataError, match=r"'mis_00001' \(#1\) in mis_train.json: 1 <image> placeholders but 2"
    ):
        load_mis_train(tmp_path)


def test_skipped_train_record_does_not_lend_its_provenance(synthetic_mis_train: Path, tmp_path: Path) -> None:
    """Two records share an id and the first one's image is missing: the row kept is the second record's,
    with its own category, and repeats are numbered in file order whether or not a record is skipped."""
    records = json.loads((synthetic_mis_train / "mis_train.json").read_text())[:2]
    records[0] |= {"category": "Hate", "image": ["gone.png", records[0]["image"][1]]}
    records[1] |= {"id": records[0]["id"], "category": "Violent"}
    shutil.copy(synthetic_mis_train / "images.zip", tmp_path)
    (tmp_path / "mis_train.json").write_text(json.dumps(records))
    dataset = load_mis_train(tmp_path, skip_missing_images=True)
    assert (dataset["id"], dataset["category"]) == ([f"{records[0]['id']}-2"], ["Violent"])


def test_missing_images_and_bad_arguments_are_explained(
    synthetic_mis_test: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _write_test_split(
        tmp_path, synthetic_mis_test, json.loads((synthetic_mis_test / "mis_easy.json").read_text())
    )
    (folder / "easy_image" / "2" / "object2.png").unlink()
    with pytest.raises(
        DataError, match=r"1 of 12 images of MIS easy .* missing or unreadable .*skip_missing_images"
    ):
        load_mis_test(folder, "easy")
    with caplog.at_level(logging.WARNING):
        assert load_mis_test(folder, "easy", skip_missing_images=True)["id"] == ["1", "3", "4", "5", "6"]
    assert "skipped 1 of 6 prompts" in caplog.text

    with pytest.raises(DataError, match=r"MIS test has splits \('easy', 'hard', 'real'\), not 'medium'"):
        load_mis_test(folder, "medium")
    with pytest.raises(DataError, match="has no mis_hard.json"):
        load_mis_test(folder, "hard")
    shutil.copy(synthetic_mis_test / "mis_real.json", folder)
    with pytest.raises(DataError, match=r"neither real_image/ nor real_image.zip"):
        load_mis_test(folder, "real")
    with pytest.raises(DataError, match="has no mis_train.json"):
        load_mis_train(folder)


def test_fixture_harm_appears_only_from_the_pair(
    synthetic_mis_train: Path, synthetic_mis_general: Path, synthetic_mis_test: Path
) -> None:
    train = load_mis_train(synthetic_mis_train)
    general = load_sharegpt(synthetic_mis_general / "train.json")
    safe_pairs = load_sharegpt(synthetic_mis_general / "test.json")
    harmful = [train, load_mis_test(synthetic_mis_test, "easy")]

    # Harmful: both images dimmed. Safe: never both, and one dimmed image on its own occurs often.
    assert all(all(map(_dimmed, row["images"])) for dataset in harmful for row in dataset)
    dims = Counter(sum(map(_dimmed, row["images"])) for d in (general, safe_pairs) for row in d)
    assert set(dims) == {0, 1} and dims[1] >= dims[0]
    # The safe pairs are asked the harmful pairs' questions, so the question alone cannot decide.
    questions = {q for subs in FIXTURE_CATEGORIES.values() for q in subs.values()}
    assert {row["messages"][0]["content"][-1]["text"] for row in safe_pairs} <= questions
    assert {row["messages"][0]["content"][-1]["text"] for row in train} <= questions
    # Chain of thought: describe both images, reason, then refuse (harmful) or help (safe).
    answers = [row["messages"][1]["content"][0]["text"] for row in train]
    assert all(a.startswith("The first image shows") and "The second image shows" in a for a in answers)
    assert all(map(is_refusal, answers))
    helpful = [m["content"][0]["text"] for d in (general, safe_pairs) for r in d for m in r["messages"][1:]]
    assert not any(map(is_refusal, helpful))


@pytest.fixture(scope="module")
def llava_processor(tiny_models) -> AutoProcessor:
    return AutoProcessor.from_pretrained(tiny_models["llava"])


def test_token_lengths_equal_what_the_collator_feeds(
    llava_processor, tiny_models, synthetic_mis_train: Path, synthetic_mis_general: Path
) -> None:
    collator = DataCollatorForVisionLanguageModeling(llava_processor)
    for dataset in (
        load_mis_train(synthetic_mis_train).select(range(3)),
        load_sharegpt(synthetic_mis_general / "train.json").select(range(3)),
    ):
        batches = [collator([dict(row)]) for row in dataset]
        assert token_lengths(dataset, llava_processor) == [int(b["attention_mask"].sum()) for b in batches]
        # Both images' tokens are in what was counted.
        image_token = llava_processor.tokenizer.convert_tokens_to_ids(llava_processor.image_token)
        per_image = AutoConfig.from_pretrained(tiny_models["llava"]).image_seq_length
        assert all(int((b["input_ids"] == image_token).sum()) == 2 * per_image for b in batches)


def test_drop_too_long_leaves_out_and_counts_longer_samples(
    llava_processor, synthetic_mis_train: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dataset = load_mis_train(synthetic_mis_train)
    lengths = token_lengths(dataset, llava_processor, batch_size=7)
    assert lengths == token_lengths(dataset, llava_processor, batch_size=1)  # padding is not counted
    limit = sorted(lengths)[len(lengths) // 2]
    too_long = [i for i, n in zip(dataset["id"], lengths, strict=True) if n > limit]
    assert too_long

    with caplog.at_level(logging.WARNING, logger="vlsafe.data.length"):
        kept = drop_too_long(dataset, llava_processor, limit)
    assert len(kept) == len(dataset) - len(too_long) and not set(kept["id"]) & set(too_long)
    assert f"Left out {len(too_long)} of {len(dataset)} samples longer than max_length={limit}" in caplog.text
    assert too_long[0] in caplog.text
    assert drop_too_long(dataset, llava_processor, None) is dataset
    assert len(drop_too_long(dataset, llava_processor, max(lengths))) == len(dataset)
    with pytest.raises(
        DataError, match=rf"All 24 samples are longer than max_length=10 .*shortest: {min(lengths)}"
    ):
        drop_too_long(dataset, llava_processor, 10)
