"""Drop samples longer than the training length before training, instead of letting the collator cut them.

TRL's vision collator truncates a conversation at `max_length`. Cutting through an image's tokens breaks
the step ("Image features and image tokens do not match"); cutting the answer teaches the model to stop
mid-sentence. A chain-of-thought answer over two images is long, so MIS samples hit this in practice:
`drop_too_long` counts each conversation's tokens exactly as the collator does (the chat template applied
with the real images, so image tokens count) and leaves out, with a count in the log, those that do not fit.
"""

from __future__ import annotations

import logging
from io import BytesIO

from datasets import Dataset, Image, List
from PIL import Image as PILImage
from tqdm.auto import tqdm
from transformers import ProcessorMixin
from trl.data_utils import prepare_multimodal_messages

from vlsafe.errors import DataError

logger = logging.getLogger(__name__)
VERIFY_SAMPLES = 8  # samples counted both ways before the size-based count is trusted
# Cross-attention models: the image placeholder stays one token; the image features go in aside.
_PLACEHOLDER_KEPT = {"MllamaProcessor"}


def token_lengths(
    dataset: Dataset, processor: ProcessorMixin, *, chat_template: str | None = None, batch_size: int = 32
) -> list[int]:
    """Tokens of each sample's full conversation (images included) as TRL's collator would feed the model.

    Running the image processor on every image is most of the cost, and only the images' sizes matter for
    the count, so vlsafe expands each image placeholder as the processor would for that image's size and
    tokenizes the text. That shortcut is checked against the full processor on the first samples and used
    only when they agree; otherwise every sample goes through the processor.
    """
    if not counts_from_sizes(processor):
        logger.info(
            "%s cannot count image tokens from sizes; running it on every sample", type(processor).__name__
        )
    else:
        probe = dataset.select(range(min(VERIFY_SAMPLES, len(dataset))))
        exact = processed_lengths(probe, processor, chat_template=chat_template, batch_size=batch_size)
        if size_based_lengths(probe, processor, chat_template=chat_template) == exact:
            return size_based_lengths(dataset, processor, chat_template=chat_template)
        logger.info(
            "Counting tokens from image sizes disagrees with %s; running it on every sample",
            type(processor).__name__,
        )
    return processed_lengths(dataset, processor, chat_template=chat_template, batch_size=batch_size)


def processed_lengths(
    dataset: Dataset, processor: ProcessorMixin, *, chat_template: str | None = None, batch_size: int = 32
) -> list[int]:
    """Token counts from the full processor, images preprocessed: exact by construction, and slow."""
    lengths: list[int] = []
    for start in tqdm(range(0, len(dataset), batch_size), desc="count tokens", leave=False):
        batch = dataset[start : start + batch_size]
        conversations = [
            prepare_multimodal_messages(messages, images=images)
            for messages, images in zip(batch["messages"], batch["images"], strict=True)
        ]
        counts = [0] * len(conversations)
        # Samples with and without images apart: mllama's image processor cannot take them in one batch.
        for with_images in (True, False):
            group = [i for i, images in enumerate(batch["images"]) if bool(images) == with_images]
            if not group:
                continue
            encoded = processor.apply_chat_template(
                [conversations[i] for i in group],
                chat_template=chat_template,
                tokenize=True,
                return_dict=True,
                return_tensors="pt",
                # The collator's settings: no special tokens added twice, right padding (masked, not counted).
                processor_kwargs={"padding": True, "padding_side": "right", "add_special_tokens": False},
            )
            for i, count in zip(group, encoded["attention_mask"].sum(dim=1).tolist(), strict=True):
                counts[i] = count
        lengths += counts
    return lengths


def size_based_lengths(
    dataset: Dataset, processor: ProcessorMixin, *, chat_template: str | None = None
) -> list[int]:
    """Token counts from the rendered text with each image placeholder expanded as the processor expands it
    for that image's size (`image_replacements`); image files are opened for their header only."""
    if not counts_from_sizes(processor):
        raise ValueError(f"{type(processor).__name__} cannot count image tokens from image sizes")
    undecoded = dataset.select_columns(["messages", "images"]).cast_column(
        "images", List(Image(decode=False))
    )
    lengths = []
    for row in tqdm(undecoded, desc="count tokens", leave=False):
        images = [_open_header(image) for image in row["images"]]
        sizes = [_decoded_size(image) for image in images]
        for image in images:
            image.close()
        text = processor.apply_chat_template(
            prepare_multimodal_messages(row["messages"], images=images),
            chat_template=chat_template,
            tokenize=False,
        )
        # The processor's own layout step (mllama adds its BOS there) and placeholder expansion.
        _, texts, *_ = processor.prepare_inputs_layout(text=[text])
        if sizes:
            texts, _ = processor.get_text_with_replacements(texts, image_replacements(processor, sizes))
        lengths.append(len(processor.tokenizer(texts[0], add_special_tokens=False)["input_ids"]))
    return lengths


def counts_from_sizes(processor: ProcessorMixin) -> bool:
    """Whether `image_replacements` knows this processor's rule, so tokens can be counted from sizes."""
    if not getattr(processor, "image_token", None):
        return False
    name = type(processor).__name__
    if name == "Gemma3Processor":
        # Pan-and-scan crops depend on the pixels' aspect ratio through the image processor's own logic.
        return not getattr(processor.image_processor, "do_pan_and_scan", False)
    return name in _PLACEHOLDER_KEPT or hasattr(processor, "_get_num_multimodal_tokens")


def image_replacements(processor: ProcessorMixin, sizes: list[tuple[int, int]]) -> list[str]:
    """The text each image placeholder of one sample becomes, from the images' (height, width) alone.

    Calls the processor's own `replace_image_token` with the few fields it reads from the image
    processor's output, computed from the sizes, so begin/end-of-image and newline tokens come out exactly
    as the processor writes them. Processors without a rule here expand to `_get_num_multimodal_tokens`
    image tokens per image.
    """
    name = type(processor).__name__
    if name in _PLACEHOLDER_KEPT:  # cross-attention: the placeholder stays one token, features go aside
        return [processor.image_token] * len(sizes)
    if name == "Gemma3Processor":  # a fixed number of soft tokens between <boi> and <eoi>, no crops
        inputs = {"num_crops": [0] * len(sizes)}
    elif name == "Gemma4Processor":  # soft tokens from the aspect-preserving resize, between <boi>/<eoi>
        counts = processor._get_num_multimodal_tokens(image_sizes=sizes)["num_image_tokens"]
        inputs = {"num_soft_tokens_per_image": counts}
    elif name == "LlavaOnevisionProcessor" and len(sizes) > 1:
        # Several images in a sample: each gets the base view only (no anyres tiles), whatever its size.
        inputs = {"batch_num_images": [len(sizes)]}
    else:
        counts = processor._get_num_multimodal_tokens(image_sizes=sizes)["num_image_tokens"]
        return [processor.image_token * count for count in counts]
    return [processor.replace_image_token(inputs, image_idx=index) for index in range(len(sizes))]


def _open_header(image: dict) -> PILImage.Image:
    """The image, lazily opened: PIL reads the size from the header and decodes pixels only on demand."""
    return PILImage.open(BytesIO(image["bytes"]) if image["bytes"] else image["path"])


def _decoded_size(image: PILImage.Image) -> tuple[int, int]:
    """(height, width) as `datasets` decodes the image: EXIF orientations 5-8 turn it by 90 degrees."""
    turned = image.getexif().get(PILImage.ExifTags.Base.Orientation) in (5, 6, 7, 8)
    return (image.width, image.height) if turned else (image.height, image.width)


def drop_too_long(
    dataset: Dataset,
    processor: ProcessorMixin,
    max_length: int | None,
    *,
    chat_template: str | None = None,
    batch_size: int = 32,
    lengths: list[int] | None = None,
) -> Dataset:
    """`dataset` without the samples whose conversation exceeds `max_length` tokens (None: unchanged).

    The number left out, the longest length and their ids are logged; leaving out every sample is an error.
    Pass the `chat_template` the trainer uses if it differs from the processor's, and `lengths` if the
    token counts (`token_lengths`) are already known.
    """
    if max_length is None or len(dataset) == 0:
        return dataset
    if lengths is None:
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
