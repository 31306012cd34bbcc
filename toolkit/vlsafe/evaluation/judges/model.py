"""The `model` judge: a local Hugging Face VLM (e.g. Llama Guard 3 Vision, or any chat VLM) asked the
judge prompts through vlsafe's own generation engine, so it batches and runs on the same hardware."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from vlsafe.data.formats import user_turn
from vlsafe.evaluation.generate import generate_answers
from vlsafe.evaluation.judges.verdicts import (
    PreferenceItem,
    SafetyItem,
    Verdict,
    answer_goes_first,
    parse_preference,
    parse_safety,
    preference_prompt,
    safety_prompt,
)
from vlsafe.modeling import load_model, load_processor

logger = logging.getLogger(__name__)


class ModelJudge:
    """Judge with a local model; generation is greedy, and unparseable verdicts are labelled as such."""

    name = "model"

    def __init__(
        self, model_name_or_path: str, *, dtype: str = "auto", batch_size: int = 8, max_new_tokens: int = 64
    ):
        self.model = load_model(model_name_or_path, dtype=dtype)
        self.processor = load_processor(model_name_or_path)
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens

    def _ask(self, prompts: list[str], images: list[tuple]) -> list[str]:
        rows = [
            {"messages": [user_turn(prompt, images=len(item_images))], "images": list(item_images)}
            for prompt, item_images in zip(prompts, images, strict=True)
        ]
        return generate_answers(
            self.model, self.processor, rows, batch_size=self.batch_size, max_new_tokens=self.max_new_tokens
        )

    def judge_safety(self, items: Sequence[SafetyItem]) -> list[Verdict]:
        """Safe/unsafe (+ refusal when the judge says) for each answer."""
        texts = self._ask([safety_prompt(item) for item in items], [item.images for item in items])
        verdicts = [parse_safety(text) for text in texts]
        _log_unparseable(verdicts, "safety")
        return verdicts

    def judge_preference(self, items: Sequence[PreferenceItem]) -> list[str]:
        """win/lose/tie of each answer against its reference, or unparseable."""
        firsts = [answer_goes_first(item.sample_id) for item in items]
        texts = self._ask(
            [preference_prompt(item, first) for item, first in zip(items, firsts, strict=True)],
            [item.images for item in items],
        )
        return [parse_preference(text, first) for text, first in zip(texts, firsts, strict=True)]


def _log_unparseable(verdicts: list[Verdict], task: str) -> None:
    bad = sum(verdict.label == "unparseable" for verdict in verdicts)
    if bad:
        logger.warning(
            "model judge: %d of %d %s verdicts were unparseable (counted separately)",
            bad,
            len(verdicts),
            task,
        )
