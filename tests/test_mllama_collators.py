"""DPO batches for cross-attention VLMs (mllama): the cross-attention mask covers prompt and answer, and the
model takes the batch. TRL's vision preference collator keeps the prompts' mask (shorter than the sequence)."""

from __future__ import annotations

import copy

import torch
from PIL import Image
from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

from vlsafe.data.formats import assistant_turn, user_turn
from vlsafe.modeling import load_model, load_processor
from vlsafe.training import CrossAttentionPreferenceCollator


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
    inputs = {key: value for key, value in batch.items() if key != "completion_mask"}
    labels = ids.masked_fill(batch["completion_mask"] == 0, -100)
    with torch.no_grad():
        assert torch.isfinite(model(**inputs, labels=labels).loss)
