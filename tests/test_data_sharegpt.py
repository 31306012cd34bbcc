"""vlsafe.data.sharegpt and vlsafe.data.mixture: LLaVA-style conversations and the helpfulness mix."""

from __future__ import annotations

import json
import shutil
import zipfile
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from vlsafe.data.mixture import mix_with_helpfulness
from vlsafe.data.sharegpt import load_sharegpt
from vlsafe.data.vlguard import load_vlguard
from vlsafe.errors import DataError


def _write(tmp_path: Path, records: list[dict], images: tuple[str, ...] = ("a.png", "b.png")) -> Path:
    for name in images:
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    return path


def test_conversations_become_trl_messages_with_images_in_place(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        [
            {
                "id": "two-images",
                "image": ["a.png", "b.png"],
                "conversations": [
                    {"from": "system", "value": "Be brief."},
                    {"from": "human", "value": "Compare <image> and\n<image>"},
                    {"from": "gpt", "value": "Both are black."},
                    {"from": "human", "value": "Sure?"},
                    {"from": "gpt", "value": "Yes."},
                ],
            },
            {
                "id": "text-only",
                "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}],
            },
        ],
    )
    dataset = load_sharegpt(path)
    first = dataset[0]
    assert [m["role"] for m in first["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert [(p["type"], p["text"]) for p in first["messages"][1]["content"]] == [
        ("text", "Compare"),
        ("image", None),
        ("text", "and"),
        ("image", None),
    ]
    assert len(first["images"]) == 2 and first["kind"] == "helpful" and first["source"] == "sharegpt"
    assert dataset[1]["images"] == [] and dataset[1]["id"] == "text-only"


def test_synthetic_helpfulness_set_loads(synthetic_helpful: Path) -> None:
    dataset = load_sharegpt(synthetic_helpful)
    assert len(dataset) == 20
    assert all(len(images) == 1 for images in dataset["images"])
    assert Counter(len(m) for m in dataset["messages"]) == {2: 10, 4: 10}


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (
            {
                "id": "x",
                "image": "a.png",
                "conversations": [
                    {"from": "human", "value": "no placeholder"},
                    {"from": "gpt", "value": "ok"},
                ],
            },
            "0 <image> placeholders but 1 images",
        ),
        ({"id": "x", "conversations": [{"from": "robot", "value": "hi"}]}, "each turn needs 'from' in"),
        ({"id": "x", "conversations": [{"from": "human", "value": "hi"}]}, "no gpt/assistant turn"),
        ({"id": "x", "image": 3, "conversations": []}, "field 'image' must be a path"),
        (
            {
                "id": "x",
                "conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "<image>"}],
            },
            "placeholder outside a human turn",
        ),
    ],
)
def test_malformed_conversation_is_named(tmp_path: Path, record: dict, message: str) -> None:
    path = _write(tmp_path, [record])
    with pytest.raises(DataError, match=rf"conversation 'x' \(#0\).*{message}"):
        load_sharegpt(path)


def test_missing_image_and_image_root(tmp_path: Path) -> None:
    record = {
        "id": "x",
        "image": "gone.png",
        "conversations": [{"from": "human", "value": "<image>hi"}, {"from": "gpt", "value": "ok"}],
    }
    path = _write(tmp_path, [record, {**record, "id": "y", "image": "a.png"}])
    with pytest.raises(DataError, match="1 of 2 images .*gone.png"):
        load_sharegpt(path)
    assert load_sharegpt(path, skip_missing_images=True)["id"] == ["y"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    Image.new("RGB", (4, 4)).save(elsewhere / "gone.png")
    Image.new("RGB", (4, 4)).save(elsewhere / "a.png")
    assert len(load_sharegpt(path, image_root=elsewhere)) == 2


def test_mixture_draws_seeded_helpfulness_and_keeps_every_safety_sample(
    synthetic_vlguard: Path, synthetic_helpful: Path
) -> None:
    safety, helpful = load_vlguard(synthetic_vlguard, "train"), load_sharegpt(synthetic_helpful)
    mixed = mix_with_helpfulness(safety, helpful, 5, seed=1)
    assert Counter(mixed["kind"]) == Counter(safety["kind"]) + Counter({"helpful": 5})
    assert mixed["id"] == mix_with_helpfulness(safety, helpful, 5, seed=1)["id"]
    assert mixed["id"] != mix_with_helpfulness(safety, helpful, 5, seed=2)["id"]
    assert len(mix_with_helpfulness(safety, None, 5000, seed=0)) == len(safety)
    assert len(mix_with_helpfulness(safety, helpful, None, seed=0)) == len(safety) + len(helpful)
    with pytest.raises(
        DataError, match="Asked for 21 helpfulness samples but the helpfulness data has only 20"
    ):
        mix_with_helpfulness(safety, helpful, 21, seed=0)


def test_hub_dataset_with_image_archive(synthetic_helpful: Path, tmp_path: Path, hub_server) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(synthetic_helpful, repo / "conversations.json")
    with zipfile.ZipFile(repo / "images.zip", "w") as archive:
        for image in (synthetic_helpful.parent / "shapes").iterdir():
            archive.write(image, f"shapes/{image.name}")
    hub_server.add_repo("someone/helpful", repo, repo_type="dataset")

    from_hub = load_sharegpt("someone/helpful", data_file="conversations.json", image_archive="images.zip")
    local = load_sharegpt(synthetic_helpful)
    assert from_hub["messages"] == local["messages"]
    assert [row["images"][0].tobytes() for row in from_hub] == [row["images"][0].tobytes() for row in local]
    with pytest.raises(DataError, match="pass image_root=<local folder with its images> or image_archive"):
        load_sharegpt("someone/helpful", data_file="conversations.json")


def test_image_path_escaping_the_root_is_refused(tmp_path: Path) -> None:
    record = {
        "id": "x",
        "image": "../secret.png",
        "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "ok"}],
    }
    with pytest.raises(DataError, match=r"'x' \(#0\).*names image '../secret.png', which points outside"):
        load_sharegpt(_write(tmp_path, [record]))


def test_samples_are_drawn_before_images_are_checked(synthetic_helpful: Path, tmp_path: Path) -> None:
    """A large file (LLaVA's 665k) costs only the drawn conversations: a broken image elsewhere is never read."""
    folder = tmp_path / "helpful"
    shutil.copytree(synthetic_helpful.parent, folder)
    drawn = load_sharegpt(folder / synthetic_helpful.name, samples=5, seed=3)
    assert (
        len(drawn) == 5
        and drawn["id"] == load_sharegpt(folder / synthetic_helpful.name, samples=5, seed=3)["id"]
    )
    assert drawn["id"] != load_sharegpt(folder / synthetic_helpful.name, samples=5, seed=4)["id"]

    records = json.loads((folder / synthetic_helpful.name).read_text())
    undrawn = next(r for r in records if str(r["id"]) not in drawn["id"])
    image = undrawn["image"] if isinstance(undrawn["image"], str) else undrawn["image"][0]
    (folder / image).write_bytes(b"not an image")
    assert load_sharegpt(folder / synthetic_helpful.name, samples=5, seed=3)["id"] == drawn["id"]
    with pytest.raises(DataError, match="missing or unreadable"):
        load_sharegpt(folder / synthetic_helpful.name)
    with pytest.raises(DataError, match=f"has only {len(records)} conversations"):
        load_sharegpt(folder / synthetic_helpful.name, samples=len(records) + 1)
