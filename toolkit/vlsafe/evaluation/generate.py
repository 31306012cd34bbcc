"""The generation engine: batched greedy generation, resumable, data-parallel under `accelerate launch`.

Prompts are left-padded so every sequence of a batch ends where generation starts, and processed by
image count, then length, with no batch mixing image counts, so a batch wastes little padding; answers come
back in the order of the input rows.
Batched answers equal batch-size-1 answers (tested), so batching is a pure speed-up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import gather_object, parse_flag_from_env
from tqdm.auto import tqdm
from transformers import PreTrainedModel, ProcessorMixin
from trl.data_utils import prepare_multimodal_messages

from vlsafe.data.formats import user_text
from vlsafe.evaluation.store import RecordStore

logger = logging.getLogger(__name__)


def process_state() -> PartialState:
    """This process's place in a data-parallel run. Honours ACCELERATE_USE_CPU as Accelerator does, so
    `ACCELERATE_USE_CPU=true torchrun --nproc_per_node N` spreads an evaluation over CPU processes too."""
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def prompt_messages(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The conversation up to the last user turn, with the row's images put into its image parts."""
    messages = list(row["messages"])
    while messages and messages[-1]["role"] == "assistant":
        messages.pop()
    return prepare_multimodal_messages(messages, images=list(row.get("images") or []))


def prompt_text(row: dict[str, Any]) -> str:
    """The user's words of a prompt row (what reports and judges show as the request)."""
    return user_text(row["messages"])


def media_placeholders(processor: ProcessorMixin) -> list[str]:
    """The strings this processor counts in the text to place images and videos (e.g. "<image>")."""
    tokens = (getattr(processor, name, None) for name in ("image_token", "video_token"))
    return [token for token in tokens if isinstance(token, str) and token]


def defuse_placeholders(texts: Sequence[str], placeholders: Sequence[str]) -> tuple[list[str], int]:
    """`texts` with every media placeholder they spell out broken by a space ("<image>" -> "< image>"), and how
    many texts changed. A request or answer that writes "<image>" is judged as text instead of failing the
    whole batch (the processor would count it as an image that is not there)."""
    defused = []
    for text in texts:
        for placeholder in placeholders:
            text = text.replace(placeholder, f"{placeholder[:1]} {placeholder[1:]}")
        defused.append(text)
    return defused, sum(new != old for new, old in zip(defused, texts, strict=True))


def defused_prompts(processor: ProcessorMixin, prompts: list) -> list:
    """The prompts with spelled-out media placeholders in their text parts defused (logged when any was): a
    benchmark question that writes "<image>" would otherwise be counted as an image that is not there."""
    placeholders = media_placeholders(processor)
    changed = 0

    def defused(part: dict) -> dict:
        nonlocal changed
        if part.get("type") != "text" or not part.get("text") or not placeholders:
            return part
        (text,), n = defuse_placeholders([part["text"]], placeholders)
        changed += n
        return part | {"text": text}

    out = [
        [
            m | {"content": [defused(p) for p in m["content"]]} if isinstance(m["content"], list) else m
            for m in messages
        ]
        for messages in prompts
    ]
    if changed:
        logger.info("%d prompt texts spell out a media placeholder %s: sent defused", changed, placeholders)
    return out


@torch.inference_mode()
def _generate_batch(model, processor, prompts: list, max_new_tokens: int) -> list[dict[str, Any]]:
    inputs = processor.apply_chat_template(
        defused_prompts(processor, prompts),
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs={"padding": True, "padding_side": "left"},
    ).to(model.device)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    output = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    new_tokens = output[:, inputs["input_ids"].shape[1] :].tolist()
    return [
        answer_record(tokens, processor, eos, model.generation_config.pad_token_id) for tokens in new_tokens
    ]


def answer_record(
    token_ids: Sequence[int], processor: ProcessorMixin, eos: set[int], pad: int | None
) -> dict[str, Any]:
    """A generation record from an answer's new token ids, by every engine: pad tokens are not counted, the
    answer ends at the first end-of-sequence token, `truncated` when none came (it hit max_new_tokens, so the
    judge sees a cut-off answer), text decoded without special tokens and stripped."""
    produced = [t for t in token_ids if t != pad or t in eos]
    length = next((i for i, t in enumerate(produced) if t in eos), len(produced))
    text = processor.batch_decode([list(token_ids)], skip_special_tokens=True)[0]
    return {"generation": text.strip(), "new_tokens": length, "truncated": length == len(produced)}


def generate_answers(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    rows: Sequence[dict[str, Any]],
    *,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    progress: bool = True,
) -> list[str]:
    """Greedy answers to each row's prompt, in the order of `rows` (single process, nothing stored)."""
    keys = [str(index) for index in range(len(rows))]
    records = generate_records(
        model, processor, rows, keys, batch_size=batch_size, max_new_tokens=max_new_tokens, progress=progress
    )
    return [record["generation"] for record in records]


def generate_records(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    rows: Sequence[dict[str, Any]],
    keys: Sequence[str],
    *,
    store: RecordStore | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Generation records (`generation`, `new_tokens`, `truncated`) for `rows`, in their order.

    Rows whose key is already in `store` are not generated again; each finished row is stored at once.
    Under `accelerate launch` the pending rows are split across processes and the records gathered, so
    every process returns the full list in input order.
    """

    def generate(share: list[int]) -> Iterator[tuple[int, dict[str, Any]]]:
        model.eval()
        batches = _batches(share, rows, batch_size)
        local_main = process_state().is_local_main_process
        for batch in tqdm(batches, desc="generate", disable=not progress or not local_main):
            records = _generate_batch(
                model, processor, [prompt_messages(rows[i]) for i in batch], max_new_tokens
            )
            yield from zip(batch, records, strict=True)

    return records_in_order(
        keys, store, generate, order=lambda index: (_image_count(rows[index]), len(prompt_text(rows[index])))
    )


def records_in_order(
    keys: Sequence[str],
    store: RecordStore | None,
    generate: Callable[[list[int]], Iterable[tuple[int, dict[str, Any]]]],
    *,
    order: Callable[[int], Any] | None = None,
) -> list[dict[str, Any]]:
    """The record of every key, in the order of `keys`, by any engine: the indices not in `store` are split
    across the processes of a data-parallel run (in `order`), `generate(share)` yields (index, record) for this
    process's share, each record is stored as it comes, and the records are gathered so that every process
    returns the full list."""
    state = process_state()
    # Every process has loaded its store before any writes to it: otherwise a late process would find records
    # another one just wrote, split a different pending list, and rows would fall between the two.
    state.wait_for_everyone()
    pending = [index for index, key in enumerate(keys) if store is None or key not in store]
    if order is not None:
        pending.sort(key=order)
    finished: list[tuple[int, dict[str, Any]]] = []
    with state.split_between_processes(pending) as mine:
        for index, record in generate(mine):
            if store is not None:
                store.put(keys[index], record)
            finished.append((index, record))
    if state.num_processes > 1:
        finished = gather_object(finished)
    by_index = dict(finished)
    return [by_index[index] if index in by_index else store.get(key) for index, key in enumerate(keys)]


def _image_count(row: dict[str, Any]) -> int:
    return len(row.get("images") or [])


def _batches(indices: Sequence[int], rows: Sequence[dict[str, Any]], batch_size: int) -> list[list[int]]:
    """`indices` (sorted by image count) cut into batches of at most `batch_size` that never mix prompts with
    different numbers of images. Such prompts differ by hundreds of image tokens, so a mixed batch is mostly
    padding; and mllama's image processor fails on a batch whose first prompt has no image while a later one
    has (transformers 5.23, `pad_batches_and_tiles`)."""
    batches: list[list[int]] = []
    for index in indices:
        if (
            batches
            and len(batches[-1]) < batch_size
            and _image_count(rows[batches[-1][0]]) == _image_count(rows[index])
        ):
            batches[-1].append(index)
        else:
            batches.append([index])
    return batches
