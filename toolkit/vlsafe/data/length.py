"""Drop samples longer than the training length before training, instead of letting the collator cut them.

TRL's vision collator truncates a conversation at `max_length`. Cutting through an image's tokens breaks
the step ("Image features and image tokens do not match"); cutting the answer teaches the model to stop
mid-sentence. A chain-of-thought answer over two images is long, so MIS samples hit this in practice:
`drop_too_long` counts each conversation's tokens exactly as the collator does (the chat template applied
with the real images, so image tokens count) and leaves out, with a count in the log, those that do not fit.
"""

from __future__ import annotations

import logging

from datasets import Dataset
from tqdm.auto import tqdm
from transformers import ProcessorMixin
from trl.data_utils import prepare_multimodal_messages

from vlsafe.errors import DataError

logger = logging.getLogger(__name__)


def token_lengths(
    dataset: Dataset, processor: ProcessorMixin, *, chat_template: str | None = None, batch_size: int = 32
) -> list[int]:
    """Tokens of each sample's full conversation (images included) as TRL's collator would feed the model."""
    lengths: list[int] = []
    for start in tqdm(range(0, len(dataset), batch_size), desc="count tokens", leave=False):
        batch = dataset[start : start + batch_size]
        conversations = [
            prepare_multimodal_messages(messages, images=images)
            for messages, images in zip(batch["messages"], batch["images"], strict=True)
        ]
        encoded = processor.apply_chat_template(
            conversations,
            chat_template=chat_template,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            # The collator's settings: no special tokens added twice, right padding (masked, not counted).
            processor_kwargs={"padding": True, "padding_side": "right", "add_special_tokens": False},
        )
        lengths += encoded["attention_mask"].sum(dim=1).tolist()
    return lengths


def drop_too_long(
    dataset: Dataset,
    processor: ProcessorMixin,
    max_length: int | None,
    *,
    chat_template: str | None = None,
    batch_size: int = 32,
) -> Dataset:
    """`dataset` without the samples whose conversation exceeds `max_length` tokens (None: unchanged).

    The number left out, the longest length and their ids are logged; leaving out every sample is an error.
    Pass the `chat_template` the trainer uses if it differs from the processor's.
    """
    if max_length is None or len(dataset) == 0:
        return dataset
    lengths = token_lengths(dataset, processor, chat_template=chat_template, batch_size=batch_size)
    keep = [index for index, length in enumerate(lengths) if length <= max_length]
    if len(keep) == len(dataset):
        logger.info(
            "All %d samples fit in max_length=%d (longest: %d tokens)", len(dataset), max_length, max(lengths)
        )
        return dataset
    if not keep:
        raise DataError(
            f"All {len(dataset)} samples are longer than max_length={max_length} tokens (shortest: "
            f"{min(lengths)}, longest: {max(lengths)}); raise max_length, or lower the image resolution "
            "(e.g. max_pixels for Qwen-VL)."
        )
    dropped = sorted(set(range(len(dataset))) - set(keep))
    ids = dataset["id"] if "id" in dataset.column_names else [str(index) for index in range(len(dataset))]
    dropped_ids = [ids[index] for index in dropped]
    logger.warning(
        "Left out %d of %d samples longer than max_length=%d tokens (longest: %d), so that none is truncated: "
        "ids %s%s",
        len(dropped),
        len(dataset),
        max_length,
        max(lengths),
        ", ".join(dropped_ids[:10]),
        f" and {len(dropped_ids) - 10} more" if len(dropped_ids) > 10 else "",
    )
    logger.debug("All ids left out for length: %s", dropped_ids)
    return dataset.select(keep)
