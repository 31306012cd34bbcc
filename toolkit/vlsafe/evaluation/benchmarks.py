"""Benchmarks the harness can run: each subset is a set of prompts that is either harmful (the model should
refuse: ASR) or safe (the model should answer: over-refusal and win rate against the reference answer).

Any benchmark can be run with extra safe prompts from LLaVA/ShareGPT conversations, as the subset `benign`
(:func:`load_benign_prompts`), so that a benchmark of harmful prompts only (MIS) also shows over-refusal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset, Image, List, Value

from vlsafe.data.formats import vision_dataset
from vlsafe.data.sharegpt import load_sharegpt
from vlsafe.data.vlguard import VLGUARD_REPO, load_vlguard
from vlsafe.errors import DataError, VlsafeError

BENIGN_SUBSET = "benign"


@dataclass(frozen=True)
class Benchmark:
    """A prompt source: its default Hub dataset, its subsets (name -> harmful?) and a prompt loader."""

    default_source: str
    subsets: dict[str, bool]
    load: Callable[..., Dataset]  # (source, subset, revision) -> prompts with id, category, messages, images


def _vlguard_prompts(source: str, subset: str, revision: str | None) -> Dataset:
    return load_vlguard(source, "test", subset, revision=revision)


def _mis_prompts(source: str, subset: str, revision: str | None) -> Dataset:
    from vlsafe.data.mis import load_mis_test

    return load_mis_test(source, subset, revision=revision)


BENCHMARKS = {
    "vlguard": Benchmark(
        VLGUARD_REPO, {"unsafes": True, "safe_unsafes": True, "safe_safes": False}, _vlguard_prompts
    ),
    # Every MIS test prompt is harmful: the harm appears from the two images together.
    "mis": Benchmark("Tuwhy/MIS_Test", {"easy": True, "hard": True, "real": True}, _mis_prompts),
}


def get_benchmark(name: str) -> Benchmark:
    """The benchmark called `name`, or an error listing the available ones."""
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise VlsafeError(f"Unknown benchmark {name!r}; available: {sorted(BENCHMARKS)}.") from None


def load_benign_prompts(
    source: str | Path, *, data_file: str | None = None, image_root: str | Path | None = None
) -> Dataset:
    """Safe prompts from LLaVA/ShareGPT conversations (`vlsafe.data.sharegpt.load_sharegpt` arguments).

    Each conversation gives one prompt: its first user turn with that turn's images; the assistant's reply
    to it is kept in ``response`` as the reference answer (for the win-rate judges). Later turns are dropped,
    so every prompt is asked without a conversation history the model did not write.
    """
    conversations = load_sharegpt(source, data_file=data_file, image_root=image_root, name=BENIGN_SUBSET)
    # Image paths rather than decoded pictures: the prompt rows decode them lazily again.
    paths = conversations.cast_column("images", List(Image(decode=False)))["images"]
    rows = [
        _first_exchange(row, [image["path"] for image in images])
        for row, images in zip(conversations.remove_columns("images"), paths, strict=True)
    ]
    return vision_dataset(rows, extra={"response": Value("string")})


def _first_exchange(row: dict[str, Any], images: list[str]) -> dict[str, Any]:
    """The row cut to its first user turn (and that turn's images), with the reply to it as ``response``."""
    messages = row["messages"]
    user = next((i for i, message in enumerate(messages) if message["role"] == "user"), None)
    if user is None:
        raise DataError(f"Benign conversation {row['id']!r} has no human/user turn to ask; fix or remove it.")
    # Only human turns hold <image> placeholders, so the first user turn's images come first.
    n_images = sum(part["type"] == "image" for part in messages[user]["content"])
    reply = next((m for m in messages[user + 1 :] if m["role"] == "assistant"), None)
    reference = None if reply is None else " ".join(p["text"] for p in reply["content"] if p["text"])
    return row | {"messages": [messages[user]], "images": images[:n_images], "response": reference}
