"""Token counting for the length filter: the size-based count equals what TRL's collator feeds the model,
for every tiny family, one or two images of assorted sizes (EXIF-turned included) or none, and falls back to
the full processor when the two disagree."""

from __future__ import annotations

import logging

import pytest
from PIL import Image
from transformers import AutoProcessor
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from vlsafe.data.formats import assistant_turn, user_turn, vision_dataset
from vlsafe.data.length import counts_from_sizes, processed_lengths, size_based_lengths, token_lengths
from vlsafe.fixtures import FAMILIES

SIZES = [(40, 40), (90, 30), (30, 120), (200, 150), (17, 61)]


@pytest.fixture(scope="module")
def mixed_dataset(tmp_path_factory: pytest.TempPathFactory):
    """One- and two-image conversations over images of assorted sizes (one JPEG is EXIF-turned by 90 deg), and
    a text-only one."""
    root = tmp_path_factory.mktemp("length-images")
    paths = []
    for index, size in enumerate(SIZES):
        path = root / f"{index}.jpg"
        exif = Image.Exif()
        if index == 3:
            exif[Image.ExifTags.Base.Orientation] = 6
        Image.new("RGB", size, (index * 40, 90, 160)).save(path, exif=exif)
        paths.append(str(path))
    rows = []
    for index in range(len(paths)):
        images = paths[index : index + 1 + index % 2]
        question = "what is shown here " * (index + 1)
        rows.append(
            {
                "images": images,
                "messages": [
                    user_turn(question.strip(), images=len(images)),
                    assistant_turn("a shape " * (index + 1)),
                ],
                "source": "test",
                "id": str(index),
                "kind": "safe_safe",
                "safe": True,
                "category": None,
                "subcategory": None,
            }
        )
    # A text-only conversation too (helpfulness data has them), batched with the image ones.
    text_only = {
        **rows[0],
        "images": [],
        "id": "text",
        "messages": [user_turn("hi", images=0), assistant_turn("yo")],
    }
    return vision_dataset([text_only, *rows])  # first: a batch that starts without an image


def collator_lengths(dataset, processor) -> list[int]:
    collator = DataCollatorForVisionLanguageModeling(processor)
    return [int(collator([row])["attention_mask"].sum()) for row in dataset]


@pytest.mark.parametrize("family", FAMILIES)
def test_size_based_count_equals_the_collator(family, tiny_models, mixed_dataset):
    processor = AutoProcessor.from_pretrained(tiny_models[family])
    expected = collator_lengths(mixed_dataset, processor)
    assert processed_lengths(mixed_dataset, processor) == expected
    assert size_based_lengths(mixed_dataset, processor) == expected
    assert token_lengths(mixed_dataset, processor) == expected


def test_a_disagreeing_shortcut_falls_back_to_the_processor(tiny_models, mixed_dataset, monkeypatch, caplog):
    processor = AutoProcessor.from_pretrained(tiny_models["llava"])
    count = type(processor)._get_num_multimodal_tokens

    def one_too_many(self, image_sizes=None, **kwargs):
        data = count(self, image_sizes=image_sizes, **kwargs)
        data.num_image_tokens = [n + 1 for n in data.num_image_tokens]
        return data

    monkeypatch.setattr(type(processor), "_get_num_multimodal_tokens", one_too_many)
    with caplog.at_level(logging.INFO, logger="vlsafe.data.length"):
        lengths = token_lengths(mixed_dataset, processor)
    assert lengths == collator_lengths(mixed_dataset, processor)
    assert "disagrees" in caplog.text


def test_gemma3_pan_and_scan_is_counted_by_the_processor(tiny_models, mixed_dataset, caplog):
    # Pan-and-scan crops depend on the image processor's own logic: no size rule, the full processor counts.
    processor = AutoProcessor.from_pretrained(tiny_models["gemma3"], do_pan_and_scan=True)
    assert processor.image_processor.do_pan_and_scan and not counts_from_sizes(processor)
    with caplog.at_level(logging.INFO, logger="vlsafe.data.length"):
        assert token_lengths(mixed_dataset, processor) == collator_lengths(mixed_dataset, processor)
    assert "cannot count image tokens from sizes" in caplog.text
