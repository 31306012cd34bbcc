"""Batched greedy generation for VLM prompts in TRL's vision format."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, ProcessorMixin
from trl.data_utils import prepare_multimodal_messages

logger = logging.getLogger(__name__)


def _prompt_messages(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The conversation up to the last user turn, with the row's images put into the image parts."""
    messages = list(row["messages"])
    while messages and messages[-1]["role"] == "assistant":
        messages.pop()
    return prepare_multimodal_messages(messages, images=list(row.get("images") or []))


@torch.inference_mode()
def generate_answers(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    rows: Sequence[dict[str, Any]],
    *,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    progress: bool = True,
) -> list[str]:
    """Greedy answers to each row's prompt, in the order of `rows`.

    Prompts are left-padded so every sequence in a batch ends where generation starts; rows are
    processed in order of prompt length to waste little padding, and answers are put back in order.
    """
    prompts = [_prompt_messages(row) for row in rows]
    lengths = [
        sum(len(part.get("text") or "") for message in prompt for part in message["content"])
        for prompt in prompts
    ]
    order = sorted(range(len(prompts)), key=lambda index: lengths[index])
    answers: list[str] = [""] * len(prompts)
    model.eval()
    for start in tqdm(range(0, len(order), batch_size), desc="generate", disable=not progress):
        batch = order[start : start + batch_size]
        inputs = processor.apply_chat_template(
            [prompts[index] for index in batch],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            processor_kwargs={"padding": True, "padding_side": "left"},
        ).to(model.device)
        output = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        for index, text in zip(
            batch, processor.batch_decode(new_tokens, skip_special_tokens=True), strict=True
        ):
            answers[index] = text.strip()
    return answers
