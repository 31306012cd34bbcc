"""TRL's vision dataset format: `images` + conversational `messages`, plus vlsafe's provenance columns."""

from __future__ import annotations

from typing import Any

from datasets import Dataset, Features, Image, List, Value

# Content parts are stored as one struct type, so image parts carry text=None.
MESSAGES_FEATURE = List(
    {"role": Value("string"), "content": List({"type": Value("string"), "text": Value("string")})}
)
# Kept next to the training columns so evaluation and reports can group by them.
PROVENANCE_FEATURES = {
    "source": Value("string"),
    "id": Value("string"),
    "kind": Value("string"),
    "safe": Value("bool"),
    "category": Value("string"),
    "subcategory": Value("string"),
}


def user_turn(text: str, images: int = 1) -> dict[str, Any]:
    """A user message: `images` image parts first, then the text."""
    return {
        "role": "user",
        "content": [{"type": "image", "text": None}] * images + [{"type": "text", "text": text}],
    }


def assistant_turn(text: str) -> dict[str, Any]:
    """An assistant message with one text part."""
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def vision_dataset(rows: list[dict[str, Any]], extra: dict[str, Value] | None = None) -> Dataset:
    """Build the dataset with image columns decoded lazily from their paths."""
    features = {"images": List(Image()), "messages": MESSAGES_FEATURE, **PROVENANCE_FEATURES, **(extra or {})}
    return rows_dataset(rows, Features(features))


def rows_dataset(rows: list[dict[str, Any]], features: Features) -> Dataset:
    """`Dataset.from_list`, also for no rows (every record skipped, or an empty file), which it refuses."""
    if not rows:
        return Dataset.from_dict({name: [] for name in features}, features=features)
    return Dataset.from_list(rows, features=features)


def user_text(messages: list[dict[str, Any]]) -> str:
    """The words of the user turns of a conversation (what reports and judges show as the request)."""
    return "\n".join(
        part["text"]
        for message in messages
        if message["role"] == "user"
        for part in message["content"]
        if part.get("text")
    )
