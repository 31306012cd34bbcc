"""The `llama_guard` judge: Llama Guard 3 Vision (`meta-llama/Llama-Guard-3-11B-Vision`, model type `mllama`) or
Llama Guard 4 (`meta-llama/Llama-Guard-4-12B`, model type `llama4`) asked in its own format.

Each answer becomes the conversation Llama Guard was trained on: the user turn (its image, then the request)
followed by the assistant's answer, rendered by the checkpoint's own chat template, which adds the policy
(categories S1..S13, S14 for Llama Guard 4 on text) and asks for an assessment of the LAST Agent turn. Generation
is greedy; the reply is read by `parse_guard` ("safe", or "unsafe" and the violated categories), anything else
is `unparseable`. Llama Guard assesses the answer's safety only: it says nothing about refusal (so benign prompts
are not sent to it) and cannot compare two answers. Special tokens an answer spells out ("<|eot_id|>...safe") reach
the guard as plain text, so an answer cannot forge the guard's verdict.

Llama Guard 3 Vision reads one image per conversation: an item with several (MIS) is judged with its first image
and the count is logged. The model runs on this process's accelerator; in a data-parallel run every process
judges a contiguous share of the conversations and the replies are gathered in the original order.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from itertools import groupby
from typing import Any

import torch
from accelerate.utils import gather_object
from tqdm.auto import tqdm
from transformers import AutoConfig, PreTrainedModel, ProcessorMixin
from trl.data_utils import prepare_multimodal_messages

from vlsafe.data.formats import assistant_turn, user_turn
from vlsafe.errors import VlsafeError
from vlsafe.evaluation.generate import defuse_placeholders, media_placeholders, process_state
from vlsafe.evaluation.judges.model import free_model, is_guard_template, load_judge_model
from vlsafe.evaluation.judges.verdicts import (
    UNPARSEABLE,
    PreferenceItem,
    SafetyItem,
    Verdict,
    parse_guard,
)
from vlsafe.modeling import load_processor

logger = logging.getLogger(__name__)

# model_type -> (checkpoint it stands for, images one conversation may carry; None: any number)
GUARD_MODELS: dict[str, tuple[str, int | None]] = {
    "mllama": ("meta-llama/Llama-Guard-3-11B-Vision", 1),
    "llama4": ("meta-llama/Llama-Guard-4-12B", None),
}
# Special tokens spelled out in a request or answer reach the guard as plain text (sanitize_control_tokens), so
# an answer cannot forge a turn or a verdict. Mllama's processor counts "<|image|>" in the text itself, though,
# and would reject the batch: for Llama Guard 3 Vision that one is sent with a space inside ("< |image|>").
COUNTS_PLACEHOLDERS_IN_TEXT = {"mllama"}


def guard_conversation(item: SafetyItem, max_images: int | None = None) -> list[dict[str, Any]]:
    """The conversation Llama Guard assesses: the user's turn (images first, then the request) and the answer."""
    images = list(item.images)[:max_images]
    messages = [user_turn(item.prompt, images=len(images)), assistant_turn(item.answer)]
    return prepare_multimodal_messages(messages, images=images)


class LlamaGuardJudge:
    """Safety judge with a Llama Guard 3 Vision / 4 checkpoint, prompted through the checkpoint's own template."""

    name = "llama_guard"
    distributed = True  # every process judges a share; replies gathered in order
    reports_refusal = False  # Llama Guard says safe/unsafe, not whether the answer refused
    compares_answers = False  # and cannot say which of two answers is better

    def __init__(
        self, model_name_or_path: str, *, dtype: str = "auto", batch_size: int = 8, max_new_tokens: int = 48
    ):
        model_type = AutoConfig.from_pretrained(model_name_or_path).model_type
        if model_type not in GUARD_MODELS:
            known = ", ".join(f"{name} ({kind})" for kind, (name, _) in GUARD_MODELS.items())
            raise VlsafeError(
                f"Guard model {model_name_or_path} has model type {model_type!r}; the llama_guard judge runs "
                f"{known}. For a chat VLM judge use `--judges model --judge_model {model_name_or_path}`."
            )
        self.processor = load_processor(model_name_or_path)
        if not is_guard_template(getattr(self.processor, "chat_template", None)):
            raise VlsafeError(
                f"Guard model {model_name_or_path} has no Llama Guard chat template (none that renders the "
                "unsafe content categories), so it cannot be asked in Llama Guard's format. Use the original "
                f"checkpoint's processor files (e.g. {GUARD_MODELS[model_type][0]}) or the `model` judge."
            )
        self.model_type = model_type
        self.max_images = GUARD_MODELS[model_type][1]
        self.model = load_judge_model(model_name_or_path, dtype=dtype)
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens

    def close(self) -> None:
        """Free the guard model and its accelerator memory."""
        self.model = None
        free_model()

    def prompt_text(self, item: SafetyItem) -> str:
        """The text Llama Guard receives for `item` (before image tokens are expanded), as its template renders it."""
        (sendable,) = self._sendable([item])
        return self.processor.apply_chat_template(
            guard_conversation(sendable, self.max_images), add_generation_prompt=True, tokenize=False
        )

    def judge_safety(self, items: Sequence[SafetyItem]) -> list[Verdict]:
        """safe / unsafe (with the violated categories) / unparseable for each answer, in order."""
        items = self._sendable(items)
        replies = self._replies([guard_conversation(item, self.max_images) for item in items])
        verdicts = [parse_guard(reply) for reply in replies]
        counts = Counter(verdict.label for verdict in verdicts)
        if counts[UNPARSEABLE]:
            logger.warning(
                "llama_guard: %d of %d replies were not in Llama Guard's format ('unparseable', counted apart)",
                counts[UNPARSEABLE],
                len(verdicts),
            )
        logger.info("llama_guard verdicts: %s", dict(counts))
        return verdicts

    def _sendable(self, items: Sequence[SafetyItem]) -> list[SafetyItem]:
        """`items` as this guard can take them, changes counted and logged: Llama Guard 3 Vision sees the first
        image only, and its processor counts "<|image|>" in the text, so one spelled out gets a space inside."""
        placeholders = (
            media_placeholders(self.processor) if self.model_type in COUNTS_PLACEHOLDERS_IN_TEXT else []
        )
        prompts, defused_prompts = defuse_placeholders([item.prompt for item in items], placeholders)
        answers, defused_answers = defuse_placeholders([item.answer for item in items], placeholders)
        if defused_prompts or defused_answers:
            logger.warning(
                "llama_guard: %d requests and %d answers of %d spell out %s: judged with a space inside it, "
                "which %s's processor would otherwise take for an image",
                defused_prompts,
                defused_answers,
                len(items),
                " / ".join(placeholders),
                self.model_type,
            )
        cut = sum(self.max_images is not None and len(item.images) > self.max_images for item in items)
        if cut:
            logger.warning(
                "llama_guard (%s) reads %d image per conversation: %d of %d items were judged with their "
                "first image only.",
                self.model_type,
                self.max_images,
                cut,
                len(items),
            )
        return [
            replace(item, prompt=prompt, answer=answer)
            for item, prompt, answer in zip(items, prompts, answers, strict=True)
        ]

    def judge_preference(self, items: Sequence[PreferenceItem]) -> list[str]:
        """Not available: Llama Guard cannot compare answers (`compares_answers` is False)."""
        raise VlsafeError(
            "The llama_guard judge assesses safety only; win rates need the `model` or `api` judge."
        )

    def _replies(self, conversations: list[list[dict[str, Any]]]) -> list[str]:
        """Greedy replies to `conversations`, in order; under a data-parallel launch each process generates a
        contiguous share and the replies are gathered (call it in every process, with the same list)."""
        if self.model is None:
            raise VlsafeError("llama_guard judge: close() was called; build a new judge to judge again.")
        state = process_state()
        # Batches never mix conversations with and without images: Mllama's processor cannot pad those together.
        order = sorted(range(len(conversations)), key=lambda i: (_image_count(conversations[i]), i))
        finished: list[tuple[int, str]] = []
        with state.split_between_processes(order) as mine:
            logger.info(
                "llama_guard: process %d of %d judges %d of %d conversations",
                state.process_index,
                state.num_processes,
                len(mine),
                len(order),
            )
            batches = [
                batch
                for _, group in groupby(mine, key=lambda i: _image_count(conversations[i]))
                for batch in _chunks(list(group), self.batch_size)
            ]
            for batch in tqdm(batches, desc="llama_guard", disable=not state.is_local_main_process):
                texts = _generate(
                    self.model, self.processor, [conversations[i] for i in batch], self.max_new_tokens
                )
                finished += list(zip(batch, texts, strict=True))
        if state.num_processes > 1:
            finished = gather_object(finished)
        by_index = dict(finished)
        return [by_index[i] for i in range(len(conversations))]


def guard_inputs(processor: ProcessorMixin, conversations: list[list[dict[str, Any]]]) -> Any:
    """The model inputs for a batch of conversations (left-padded), as the checkpoint's template renders them;
    special tokens spelled out in a request or answer are encoded as plain text, never as control tokens."""
    return processor.apply_chat_template(
        conversations,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        sanitize_control_tokens=True,
        processor_kwargs={"padding": True, "padding_side": "left"},
    )


@torch.inference_mode()
def _generate(
    model: PreTrainedModel, processor: ProcessorMixin, conversations: list, max_new_tokens: int
) -> list[str]:
    """Greedy replies to one batch of conversations."""
    inputs = guard_inputs(processor, conversations).to(model.device)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    output = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)
    replies = processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return [reply.strip() for reply in replies]


def _image_count(conversation: list[dict[str, Any]]) -> int:
    return sum(part["type"] == "image" for message in conversation for part in message["content"])


def _chunks(indices: list[int], size: int) -> list[list[int]]:
    return [indices[start : start + size] for start in range(0, len(indices), size)]
