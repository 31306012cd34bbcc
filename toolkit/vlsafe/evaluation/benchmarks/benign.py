"""Safe prompts of the user's own, from LLaVA/ShareGPT conversations: the subset ``benign`` (over-refusal).

Any benchmark runs with them (`EvaluationConfig.benign_prompts`), so that a benchmark of harmful prompts only (MIS)
also shows over-refusal. Each conversation gives one prompt: its first user turn with that turn's images; the
assistant's reply to it is the reference answer (for the win-rate judges). Later turns are dropped, so every
prompt is asked without a conversation history the model did not write.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlsafe.data.formats import user_text
from vlsafe.data.sharegpt import load_sharegpt
from vlsafe.errors import DataError
from vlsafe.evaluation.benchmarks.base import Benchmark, image_paths, prompt_row

SUBSET = "benign"


def load_prompts(
    source: str | Path,
    subsets: Sequence[str] = (SUBSET,),
    *,
    revision: str | None = None,
    references: Path | None = None,
    data_file: str | None = None,
    image_root: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Prompt rows from conversations (`vlsafe.data.sharegpt.load_sharegpt`'s source, data_file, image_root)."""
    conversations = load_sharegpt(
        source, data_file=data_file, image_root=image_root, revision=revision, name=SUBSET
    )
    return [
        _first_exchange(row, paths)
        for row, paths in zip(conversations, image_paths(conversations), strict=True)
    ]


def _first_exchange(row: dict[str, Any], images: list[str]) -> dict[str, Any]:
    """The row cut to its first user turn (and that turn's images), with the reply to it as reference."""
    messages = row["messages"]
    user = next((i for i, message in enumerate(messages) if message["role"] == "user"), None)
    if user is None:
        raise DataError(f"Benign conversation {row['id']!r} has no human/user turn to ask; fix or remove it.")
    # Only human turns hold <image> placeholders, so the first user turn's images come first.
    n_images = sum(part["type"] == "image" for part in messages[user]["content"])
    reply = next((m for m in messages[user + 1 :] if m["role"] == "assistant"), None)
    reference = None if reply is None else " ".join(p["text"] for p in reply["content"] if p["text"])
    return prompt_row(
        id=row["id"],
        subset=SUBSET,
        text=user_text([messages[user]]),
        images=images[:n_images],
        category=None,
        reference=reference,
    )


BENCHMARK = Benchmark(
    name="benign",
    title="Benign prompts",
    subsets={SUBSET: False},
    load=load_prompts,
    published="local:benign_prompts",
    licence="the user's own data",
    paper_judge="-",
    fetches_itself=True,
    checks_images=False,
)
