"""The `model` judge: a local chat VLM asked vlsafe's JSON judge prompts through one of the evaluation's own
generation engines (transformers: `generate_answers`; vllm: `VllmGenerator`, started on the first call with the
items' image count as its limit), so it batches, runs on this process's accelerator and, in a data-parallel run,
judges a share of the answers in every process (the verdicts are gathered in order).

A guard model (Llama Guard) expects its own conversation format and would classify vlsafe's judge prompt
instead of the answer, so a guard checkpoint is refused here: use the `llama_guard` judge for it.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Sequence

import torch
from transformers import AutoModelForImageTextToText, PreTrainedModel, ProcessorMixin

from vlsafe.data.formats import user_turn
from vlsafe.errors import VlsafeError
from vlsafe.evaluation.generate import (
    defuse_placeholders,
    generate_answers,
    media_placeholders,
    process_state,
)
from vlsafe.evaluation.judges.verdicts import (
    UNPARSEABLE,
    PreferenceItem,
    SafetyItem,
    Verdict,
    answer_goes_first,
    parse_preference,
    parse_safety,
    preference_prompt,
    safety_prompt,
)
from vlsafe.evaluation.vllm_engine import VllmGenerator, VllmSettings, require_vllm
from vlsafe.modeling import load_processor

JUDGE_ENGINES = ("transformers", "vllm")

logger = logging.getLogger(__name__)

# Every Llama Guard chat template renders its policy between these markers; chat VLMs' templates never do.
GUARD_TEMPLATE_MARKER = "UNSAFE CONTENT CATEGORIES"


def is_guard_template(chat_template: str | dict | None) -> bool:
    """Whether a processor's chat template is a Llama Guard one (it renders a policy of unsafe categories)."""
    templates = chat_template.values() if isinstance(chat_template, dict) else [chat_template or ""]
    return any(GUARD_TEMPLATE_MARKER in template for template in templates)


def load_judge_model(model_name_or_path: str, *, dtype: str = "auto") -> PreTrainedModel:
    """A judge VLM (safetensors only) in eval mode, loaded straight onto this process's accelerator.

    Any image-text-to-text checkpoint can judge (no training family needed); in a data-parallel run every
    process holds its own copy on its own device."""
    device = process_state().device
    model = AutoModelForImageTextToText.from_pretrained(
        model_name_or_path, dtype=dtype, use_safetensors=True, device_map={"": str(device)}
    )
    return model.eval()


def free_model() -> None:
    """Return the memory of a model just dropped (the next stage may need the accelerator)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class ModelJudge:
    """Judge with a local chat VLM; generation is greedy and batched, unparseable verdicts are labelled as such."""

    name = "model"
    distributed = True  # judges through generate_answers: split over the processes, gathered in order
    reports_refusal = True  # vlsafe's JSON verdict says whether the answer refused
    compares_answers = True  # and it is asked the pairwise prompt for the win rate

    def __init__(
        self,
        model_name_or_path: str,
        *,
        dtype: str = "auto",
        batch_size: int = 8,
        max_new_tokens: int = 64,
        engine: str = "transformers",
        layout: VllmSettings | None = None,
    ):
        if engine not in JUDGE_ENGINES:
            raise VlsafeError(f"Unknown judge engine {engine!r}; choose one of {', '.join(JUDGE_ENGINES)}.")
        self.processor: ProcessorMixin = load_processor(model_name_or_path)
        if is_guard_template(getattr(self.processor, "chat_template", None)):
            raise VlsafeError(
                f"Judge model {model_name_or_path} is a guard model (its chat template renders a list of unsafe "
                "content categories): it expects its own conversation format, not vlsafe's judge prompt. Judge "
                f"with `--judges llama_guard --guard_model {model_name_or_path}` instead."
            )
        self.name_or_path, self.dtype, self.engine = model_name_or_path, dtype, engine
        self.layout = layout or VllmSettings()
        self.model: PreTrainedModel | None = None
        self.generator: VllmGenerator | None = None
        if engine == "transformers":
            self.model = load_judge_model(model_name_or_path, dtype=dtype)
        else:
            require_vllm()
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.closed = False

    def close(self) -> None:
        """Free the judge model (or shut its vLLM engine down) and its accelerator memory."""
        self.model = None
        if self.generator is not None:
            self.generator.close()
            self.generator = None
        self.closed = True
        free_model()

    def _ask(self, prompts: list[str], images: list[tuple]) -> list[str]:
        if self.closed:
            raise VlsafeError("model judge: close() was called; build a new ModelJudge to judge again.")
        placeholders = media_placeholders(self.processor)
        prompts, defused = defuse_placeholders(prompts, placeholders)
        if defused:
            logger.warning(
                "model judge: %d of %d requests or answers spell out %s: judged with a space inside it, so the "
                "processor does not count it as an image",
                defused,
                len(prompts),
                " / ".join(placeholders),
            )
        rows = [
            {"messages": [user_turn(prompt, images=len(item_images))], "images": list(item_images)}
            for prompt, item_images in zip(prompts, images, strict=True)
        ]
        state = process_state()  # the share is computed as generate_answers splits the rows
        with state.split_between_processes(list(range(len(rows)))) as share:
            logger.info(
                "model judge: process %d of %d judges %d of %d prompts on %s",
                state.process_index,
                state.num_processes,
                len(share),
                len(rows),
                state.device,
            )
        if self.engine == "vllm":
            return self._vllm_generator(rows).answers(rows, self.processor)
        return generate_answers(
            self.model, self.processor, rows, batch_size=self.batch_size, max_new_tokens=self.max_new_tokens
        )

    def _vllm_generator(self, rows: list[dict]) -> VllmGenerator:
        """The judge's vLLM engine, started with the most images these prompts have (restarted with a higher
        limit if a later call needs one)."""
        images = max((len(row["images"]) for row in rows), default=0)
        if self.generator is not None and self.generator.images_per_prompt < images:
            self.generator.close()
            self.generator = None
        if self.generator is None:
            self.generator = VllmGenerator(
                self.name_or_path,
                max_new_tokens=self.max_new_tokens,
                images_per_prompt=images,
                dtype=self.dtype,
                layout=self.layout,
            )
        return self.generator

    def judge_safety(self, items: Sequence[SafetyItem]) -> list[Verdict]:
        """Safe/unsafe (+ refusal when the judge says) for each answer, in order."""
        texts = self._ask([safety_prompt(item) for item in items], [item.images for item in items])
        verdicts = [parse_safety(text) for text in texts]
        _log_unparseable([verdict.label for verdict in verdicts], "safety")
        return verdicts

    def judge_preference(self, items: Sequence[PreferenceItem]) -> list[str]:
        """win/lose/tie of each answer against its reference, or unparseable; in order."""
        firsts = [answer_goes_first(item.sample_id) for item in items]
        texts = self._ask(
            [preference_prompt(item, first) for item, first in zip(items, firsts, strict=True)],
            [item.images for item in items],
        )
        labels = [parse_preference(text, first) for text, first in zip(texts, firsts, strict=True)]
        _log_unparseable(labels, "preference")
        return labels


def _log_unparseable(labels: list[str], task: str) -> None:
    bad = labels.count(UNPARSEABLE)
    if bad:
        logger.warning(
            "model judge: %d of %d %s verdicts were unparseable (counted separately)", bad, len(labels), task
        )
