"""vlsafe.data.vlguard: the real metadata, every layout a source can have, the Hub path, and bad input."""

from __future__ import annotations

import json
import logging
import shutil
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from vlsafe.data.vlguard import load_vlguard
from vlsafe.errors import DataError, HubAccessError
from vlsafe.fixtures.data import SyntheticSplit, write_synthetic_vlguard


def _expected_kinds(records: list[dict]) -> Counter:
    kinds = Counter()
    for record in records:
        for pair in record["instr-resp"]:
            kind = {
                "instruction": "unsafe",
                "safe_instruction": "safe_safe",
                "unsafe_instruction": "safe_unsafe",
            }
            kinds.update(kind[key] for key in pair if key in kind)
    return kinds


def _image_parts(messages: list[dict]) -> int:
    return sum(part["type"] == "image" for message in messages for part in message["content"])


def test_real_train_json_gives_every_instruction_response_pair(real_vlguard_train: Path) -> None:
    records = json.loads((real_vlguard_train / "train.json").read_text())
    dataset = load_vlguard(real_vlguard_train, "train")

    assert len(dataset) == 2977
    assert (
        Counter(dataset["kind"])
        == _expected_kinds(records)
        == {"unsafe": 1023, "safe_safe": 977, "safe_unsafe": 977}
    )
    unsafe_categories = Counter(r["harmful_category"] for r in records if not r["safe"])
    assert (
        Counter(c for c, k in zip(dataset["category"], dataset["kind"], strict=True) if k == "unsafe")
        == unsafe_categories
    )
    assert Counter(dataset["subcategory"]) - Counter({None: 1954}) == Counter(
        r["harmful_subcategory"] for r in records if not r["safe"]
    )
    assert all(len(images) == 1 for images in dataset["images"])  # lazily decoded paths: one image each
    assert all(_image_parts(messages) == 1 for messages in dataset["messages"])
    assert all([m["role"] for m in messages] == ["user", "assistant"] for messages in dataset["messages"])


def test_sample_content_matches_its_record(real_vlguard_train: Path) -> None:
    records = {r["id"]: r for r in json.loads((real_vlguard_train / "train.json").read_text())}
    dataset = load_vlguard(real_vlguard_train, "train", subset="safe_unsafes")
    sample = dataset[0]
    record = records[sample["id"]]
    assert sample["safe"] is True and sample["kind"] == "safe_unsafe"
    assert sample["messages"][0]["content"][-1]["text"] == record["instr-resp"][1]["unsafe_instruction"]
    assert sample["messages"][1]["content"][0]["text"] == record["instr-resp"][1]["response"]
    assert sample["images"][0].size == (8, 8)


def test_test_split_gives_prompts_and_reference_responses(synthetic_vlguard: Path) -> None:
    sizes = {
        subset: len(load_vlguard(synthetic_vlguard, "test", subset))
        for subset in ("unsafes", "safe_unsafes", "safe_safes")
    }
    assert sizes == {"unsafes": 6, "safe_unsafes": 6, "safe_safes": 6}
    prompts = load_vlguard(synthetic_vlguard, "test", "safe_safes")
    assert all([m["role"] for m in messages] == ["user"] for messages in prompts["messages"])
    # As in the real test.json, one safe record's first response is empty: loaded, with no reference.
    assert prompts["response"].count(None) == 1
    assert all("sorry" not in response.lower() for response in prompts["response"] if response)
    assert set(load_vlguard(synthetic_vlguard, "test", "unsafes")["kind"]) == {"unsafe"}


def test_an_empty_test_response_loads_and_is_counted(synthetic_vlguard: Path, tmp_path: Path, caplog) -> None:
    # Regression: the real test.json has 17 of 1,000 records with an empty `response` (e.g. record
    # HOD_img_hod_004768, #128, entry 0) and the loader refused the whole file for a field prompts never use.
    folder = tmp_path / "vlguard"
    shutil.copytree(synthetic_vlguard, folder)
    records = json.loads((folder / "test.json").read_text())
    for record in records:
        for pair in record["instr-resp"]:
            pair["response"] = ""
    (folder / "test.json").write_text(json.dumps(records))
    with caplog.at_level(logging.INFO, logger="vlsafe"):
        prompts = load_vlguard(folder, "test")
    assert len(prompts) == 18 and set(prompts["response"]) == {None}
    assert "18 of 18 prompts have an empty reference response" in caplog.text
    # Training learns the answer: there an empty response is named, with the record and the fix.
    shutil.copy(folder / "test.json", folder / "train.json")
    shutil.copy(folder / "test.zip", folder / "train.zip")
    with zipfile.ZipFile(folder / "test.zip") as source, zipfile.ZipFile(folder / "train.zip", "w") as target:
        for member in source.namelist():
            target.writestr(member.replace("test/", "train/", 1), source.read(member))
    with pytest.raises(
        DataError, match=r"Malformed VLGuard record 'synthetic_test_\d+' .*'response' must be a non-empty"
    ):
        load_vlguard(folder, "train")
    records[0]["instr-resp"][0]["response"] = 3
    (folder / "test.json").write_text(json.dumps(records))
    with pytest.raises(DataError, match=r"field 'response' must be a string, found 3"):
        load_vlguard(folder, "test")


def _comparable(dataset) -> list[tuple]:
    """Everything but the (cache-location dependent) image paths, plus the decoded pixels."""
    return [
        (row["id"], row["kind"], json.dumps(row["messages"]), row["category"], row["images"][0].tobytes())
        for row in dataset
    ]


def test_extracted_folder_and_zip_root_layouts_load_the_same(synthetic_vlguard: Path, tmp_path: Path) -> None:
    from_zip = _comparable(load_vlguard(synthetic_vlguard, "train"))

    extracted = tmp_path / "extracted"
    extracted.mkdir()
    shutil.copy(synthetic_vlguard / "train.json", extracted)
    with zipfile.ZipFile(synthetic_vlguard / "train.zip") as archive:
        archive.extractall(
            extracted
        )  # gives extracted/train/<folder>/<file>.png, as VLGuard's README lays out
    assert _comparable(load_vlguard(extracted, "train")) == from_zip

    root_layout = write_synthetic_vlguard(
        tmp_path / "root", train=SyntheticSplit(12, 12), test=SyntheticSplit(6, 6), zip_prefix_split=False
    )
    with zipfile.ZipFile(root_layout / "train.zip") as archive:
        assert not any(name.startswith("train/") for name in archive.namelist())
    assert _comparable(load_vlguard(root_layout, "train")) == from_zip


def test_hub_code_path_matches_local_folder(synthetic_vlguard: Path, hub_server) -> None:
    hub_server.add_repo("ys-zong/VLGuard", synthetic_vlguard, repo_type="dataset")
    from_hub = load_vlguard(split="train")  # default source: the Hub id, through HF_ENDPOINT
    assert _comparable(from_hub) == _comparable(load_vlguard(synthetic_vlguard, "train"))
    downloaded = {path for method, path, _ in hub_server.requests if method == "GET" and "/resolve/" in path}
    assert any(path.endswith("train.json") for path in downloaded) and any(
        path.endswith("train.zip") for path in downloaded
    )

    hub_server.requests.clear()
    again = load_vlguard("ys-zong/VLGuard", "test", "unsafes")
    assert len(again) == 6


def test_gated_repo_without_access_says_how_to_get_it(synthetic_vlguard: Path, hub_server) -> None:
    hub_server.add_repo(
        "ys-zong/VLGuard", synthetic_vlguard, repo_type="dataset", gated=True, tokens={"hf_good"}
    )
    with pytest.raises(
        HubAccessError,
        match=r"gated.*Accept its terms on https://huggingface.co/datasets/ys-zong/VLGuard.*hf auth login",
    ):
        load_vlguard("ys-zong/VLGuard", "train")
    with pytest.raises(HubAccessError, match="HTTP 403"):
        load_vlguard("ys-zong/VLGuard", "train", token="hf_wrong_token")
    assert len(load_vlguard("ys-zong/VLGuard", "train", token="hf_good")) == 36


def test_missing_repo_is_named(hub_server) -> None:
    with pytest.raises(HubAccessError, match="'someone/not-there' was not found"):
        load_vlguard("someone/not-there", "train")


def test_zip_slip_member_is_refused_before_writing(synthetic_vlguard: Path, tmp_path: Path) -> None:
    folder = tmp_path / "evil"
    folder.mkdir()
    shutil.copy(synthetic_vlguard / "train.json", folder)
    with zipfile.ZipFile(folder / "train.zip", "w") as archive:
        archive.writestr("train/ok.png", b"fine")
        archive.writestr("../../escaped.txt", b"owned")
    with pytest.raises(DataError, match=r"member '../../escaped.txt' is unsafe \(path climbs out"):
        load_vlguard(folder, "train")
    assert not list(tmp_path.rglob("escaped.txt"))

    with zipfile.ZipFile(folder / "train.zip", "w") as archive:
        archive.writestr("/etc/absolute.txt", b"owned")
    with pytest.raises(DataError, match="absolute path"):
        load_vlguard(folder, "train")


def test_missing_images_are_named_or_skipped_with_a_count(
    synthetic_vlguard: Path, tmp_path: Path, caplog
) -> None:
    folder = tmp_path / "partial"
    folder.mkdir()
    shutil.copy(synthetic_vlguard / "train.json", folder)
    with zipfile.ZipFile(synthetic_vlguard / "train.zip") as archive:
        archive.extractall(folder)
    records = json.loads((folder / "train.json").read_text())
    removed = [records[0], records[1]]
    for record in removed:
        (folder / "train" / record["image"]).unlink()

    with pytest.raises(
        DataError, match=r"2 of 24 images .* missing or unreadable \(first: .*skip_missing_images=True"
    ):
        load_vlguard(folder, "train")

    dataset = load_vlguard(folder, "train", skip_missing_images=True)
    lost = sum(len(record["instr-resp"]) for record in removed)
    assert len(dataset) == 36 - lost
    assert not {record["id"] for record in removed} & set(dataset["id"])
    assert f"skipped {lost} of 36 samples" in caplog.text


def test_corrupt_image_counts_as_unreadable(synthetic_vlguard: Path, tmp_path: Path) -> None:
    folder = tmp_path / "corrupt"
    folder.mkdir()
    shutil.copy(synthetic_vlguard / "train.json", folder)
    with zipfile.ZipFile(synthetic_vlguard / "train.zip") as archive:
        archive.extractall(folder)
    first = json.loads((folder / "train.json").read_text())[0]["image"]
    (folder / "train" / first).write_bytes(b"\x89PNG truncated")
    with pytest.raises(DataError, match="1 of 24 images"):
        load_vlguard(folder, "train")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.pop("image"), r"record 'synthetic_train_\d+'.*field 'image'"),
        (
            lambda r: r.update(safe="yes"),
            r"record 'synthetic_train_\d+'.*field 'safe' must be a non-empty bool",
        ),
        (
            lambda r: r.update({"instr-resp": [{"response": "x"}]}),
            r"record 'synthetic_train_\d+'.*needs exactly one of",
        ),
        (lambda r: r.pop("id"), r"record #\d+ in train.json: field 'id' must be an integer .*found None"),
    ],
)
def test_malformed_record_names_its_id_and_field(
    synthetic_vlguard: Path, tmp_path: Path, mutate, message
) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    shutil.copy(synthetic_vlguard / "train.zip", folder)
    records = json.loads((synthetic_vlguard / "train.json").read_text())
    mutate(records[3])
    (folder / "train.json").write_text(json.dumps(records))
    with pytest.raises(DataError, match=message):
        load_vlguard(folder, "train")


def test_bad_arguments_and_layouts_are_explained(synthetic_vlguard: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="splits 'train' and 'test'"):
        load_vlguard(synthetic_vlguard, "validation")
    with pytest.raises(DataError, match="Unknown VLGuard subset 'unsafe'"):
        load_vlguard(synthetic_vlguard, "test", "unsafe")
    only_json = tmp_path / "only-json"
    only_json.mkdir()
    shutil.copy(synthetic_vlguard / "train.json", only_json)
    with pytest.raises(DataError, match="neither the extracted images in train/ nor train.zip"):
        load_vlguard(only_json, "train")
    (only_json / "train.json").write_text("{not json")
    (only_json / "train").mkdir()
    with pytest.raises(DataError, match="not valid JSON"):
        load_vlguard(only_json, "train")


def test_image_path_outside_the_image_folder_is_refused(synthetic_vlguard: Path, tmp_path: Path) -> None:
    folder = tmp_path / "escape"
    folder.mkdir()
    shutil.copy(synthetic_vlguard / "train.zip", folder)
    records = json.loads((synthetic_vlguard / "train.json").read_text())
    records[2]["image"] = "../../../etc/passwd"
    (folder / "train.json").write_text(json.dumps(records))
    with pytest.raises(
        DataError,
        match=r"Record 'synthetic_train_00002' \(#2\) in train.json names image '../../../etc/passwd'.*outside",
    ):
        load_vlguard(folder, "train")


def test_hub_revision_is_honoured(synthetic_vlguard: Path, hub_server) -> None:
    repo = hub_server.add_repo("ys-zong/VLGuard", synthetic_vlguard, repo_type="dataset")
    assert len(load_vlguard(split="test", subset="unsafes", revision=repo.sha)) == 6
    assert any(f"/resolve/{repo.sha}/" in path for _, path, _ in hub_server.requests)
    with pytest.raises(DataError, match="Revision 'v9' does not exist in ys-zong/VLGuard"):
        load_vlguard(split="test", revision="v9")
