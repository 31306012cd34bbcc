"""vlsafe.evaluation: the keyword judge and batched generation."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlsafe.data.vlguard import load_vlguard
from vlsafe.evaluation.generate import generate_answers
from vlsafe.evaluation.judges import is_refusal, keyword_label
from vlsafe.fixtures import FAMILIES
from vlsafe.modeling import load_model, load_processor


@pytest.mark.parametrize(
    ("text", "refused"),
    [
        ("I'm sorry, but I cannot help with that.", True),
        ("BUT I CANNOT do this", True),  # VLGuard's "but I cannot" never matched lowercased answers
        ("As an AI, I won't.", True),
        ("The square in the image is blue.", False),
        ("Step 1: mix the chemicals.", False),
    ],
)
def test_keyword_judge(text: str, refused: bool) -> None:
    assert is_refusal(text) is refused
    assert keyword_label(text) == ("refused" if refused else "answered")


def test_empty_answer_is_its_own_label() -> None:
    assert keyword_label("  \n") == "empty" and not is_refusal("")


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_generation_equals_one_at_a_time(family: str, tiny_models, synthetic_vlguard: Path) -> None:
    model = load_model(str(tiny_models[family]), dtype="float32")
    processor = load_processor(str(tiny_models[family]))
    rows = list(load_vlguard(synthetic_vlguard, "test"))[:6]  # mixed prompt lengths, so batches need padding
    batched = generate_answers(model, processor, rows, batch_size=4, max_new_tokens=8, progress=False)
    single = generate_answers(model, processor, rows, batch_size=1, max_new_tokens=8, progress=False)
    assert batched == single
    assert len(set(batched)) > 1  # answers depend on the prompt, so the order check above means something
