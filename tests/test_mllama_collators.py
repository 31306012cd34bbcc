"""mllama through TRL's vision collators: a text-only example next to image ones (SFT and DPO), and DPO's
cross-attention mask over prompt and answer. TRL's vision preference collator keeps the prompts' mask (shorter
than the sequence), and mllama's image processor fails on a batch whose first example has no image."""

from __future__ import annotations

import copy

import pytest
import torch
from PIL import Image
from trl import SFTConfig
from trl.trainer.dpo_trainer import DataCollatorForVisionPreference
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from vlsafe.data.formats import assistant_turn, user_turn, vision_dataset
from vlsafe.modeling import load_model, load_processor
from vlsafe.training import (
    CrossAttentionPreferenceCollator,
    MixedImageBatchCollator,
    ModelArguments,
    build_sft_trainer,
)


def _forward_loss(model, batch) -> torch.Tensor:
    inputs = {key: value for key, value in batch.items() if key not in ("completion_mask", "labels")}
    labels = (
        batch["labels"]
        if "labels" in batch
        else batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    )
    with torch.no_grad():
        return model(**inputs, labels=labels).loss


def test_mllama_dpo_batches_carry_a_cross_attention_mask_for_the_whole_sequence(tiny_models) -> None:
    processor = load_processor(str(tiny_models["mllama"]))
    examples = [
        {
            "images": [Image.new("RGB", size, (40 * index, 90, 160))],
            "prompt": [user_turn("what is shown here " * (index + 1), images=1)],
            "chosen": [assistant_turn("a shape " * (3 - index))],
            "rejected": [assistant_turn("no " * (index + 2))],
        }
        for index, size in enumerate([(40, 60), (90, 30), (30, 120)])
    ]
    trl_collator = DataCollatorForVisionPreference(processor)
    prompts_mask = trl_collator(copy.deepcopy(examples))["cross_attention_mask"]
    batch = CrossAttentionPreferenceCollator(trl_collator, processor.image_token_id)(copy.deepcopy(examples))
    ids, mask = batch["input_ids"], batch["cross_attention_mask"]
    assert prompts_mask.shape[1] < ids.shape[1]  # TRL's own mask stops at the prompts: why the wrapper exists
    assert mask.shape[:2] == ids.shape and mask.shape[2:] == prompts_mask.shape[2:]
    for row in range(len(ids)):
        prompt_len = int(batch["completion_mask"][row].argmax())  # flushed left: the answer starts here
        end = int(batch["attention_mask"][row].sum())
        left_pad = prompts_mask.shape[1] - prompt_len
        # The prompt sees the image exactly as the processor said; the answer sees it as the prompt's last token.
        assert torch.equal(mask[row, :prompt_len], prompts_mask[row, left_pad:])
        assert mask[row, prompt_len - 1].sum() > 0
        assert (mask[row, prompt_len:end] == mask[row, prompt_len - 1]).all()

    model = load_model(str(tiny_models["mllama"]), dtype="float32")
    assert torch.isfinite(_forward_loss(model, batch))

    # A text-only prompt first in the batch, next to image ones.
    text_first = [{**examples[0], "images": [], "prompt": [user_turn("say hi", images=0)]}, *examples[1:]]
    with pytest.raises(IndexError):  # transformers' pad_batches_and_tiles: why MixedImageBatchCollator exists
        trl_collator(copy.deepcopy(text_first))
    collator = CrossAttentionPreferenceCollator(
        MixedImageBatchCollator(trl_collator), processor.image_token_id
    )
    batch = collator(copy.deepcopy(text_first))
    assert batch["cross_attention_mask"].shape[:2] == batch["input_ids"].shape
    assert torch.isfinite(_forward_loss(model, batch))


def test_mllama_sft_batches_mix_text_only_and_image_samples(tiny_models, tmp_path) -> None:
    rows = [
        {"images": [], "messages": [user_turn("hello there, how are you", images=0), assistant_turn("hi")]},
        {
            "images": [Image.new("RGB", (40, 60), (200, 30, 30))],
            "messages": [user_turn("what is shown?"), assistant_turn("a red square")],
        },
    ]
    processor = load_processor(str(tiny_models["mllama"]))
    with pytest.raises(IndexError):  # a text-only sample first: why MixedImageBatchCollator exists
        DataCollatorForVisionLanguageModeling(processor)(copy.deepcopy(rows))

    provenance = {
        "source": "test",
        "id": "0",
        "kind": "x",
        "safe": True,
        "category": None,
        "subcategory": None,
    }
    dataset = vision_dataset([{**row, **provenance} for row in rows])
    args = SFTConfig(output_dir=str(tmp_path), max_length=None, use_cpu=True, report_to="none")
    trainer = build_sft_trainer(dataset, args, ModelArguments(model_name_or_path=str(tiny_models["mllama"])))
    collate, model = trainer.data_collator, trainer.model.eval()
    batch = collate([dict(row) for row in dataset])
    assert batch["aspect_ratio_ids"].shape == (2, 1) and batch["cross_attention_mask"][1].sum() == 0

    def logits(batch: dict) -> torch.Tensor:
        with torch.no_grad():
            return model(**{key: value for key, value in batch.items() if key != "labels"}).logits

    # Each sample's logits in the mixed batch (the image one first) are its logits alone: nothing leaks over.
    mixed = logits(batch)
    for position, index in enumerate((1, 0)):
        alone = logits(collate([dict(dataset[index])]))[0]
        torch.testing.assert_close(mixed[position, : len(alone)], alone, atol=1e-5, rtol=1e-4)
    assert torch.isfinite(_forward_loss(model, batch))
