"""SIUO, Safe Inputs but Unsafe Output (Wang et al., 2024): cross-modality safety. GitHub ``sinwang20/SIUO``.

Layout of the repository: ``data/siuo_gen.json`` (the generation task; ``siuo_mcqa.json`` beside it is the
multiple-choice variant, not loaded), a list of 167 records ``question_id`` (an integer: the id, 1001... with
the category in its first digit), ``image`` (a file name such as ``S-01.png``, in ``images/`` beside the json,
where the image archive unpacks), ``question``, ``category`` (9, lower case as published: self-harm, dangerous
behavior, morality, illegal activities & crime, "controversial topics, politics", discrimination & stereotyping,
religion beliefs, information misinterpretation, privacy violation), ``safety_warning`` (what a safe answer must
heed; kept as a column, the paper's judge reads it) and ``reference_answer``. The json is also accepted at the
folder's root, and the images as ``images.zip`` / ``images.tar`` beside it.

Image and question are each safe; together they ask for something unsafe: subset ``harmful``, scored as ASR.
``reference_answer`` becomes the reference (empty: none). It is a safe answer to a harmful prompt, so the win-rate
judges, which compare answers to benign prompts only, do not use it by default. Licence: CC BY-NC 4.0.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlsafe.data.sources import read_json_list
from vlsafe.evaluation.benchmarks import _b_common as common
from vlsafe.evaluation.benchmarks.base import Benchmark, prompt_row

JSON_PLACES = ("data/siuo_gen.json", "siuo_gen.json")


def load_prompts(
    folder: Path, subsets: Sequence[str], *, revision: str | None = None, references: Path | None = None
) -> list[dict[str, Any]]:
    """The prompts of SIUO's generation task: one image, then the question; the reference answer kept."""
    path = common.find_json(folder, JSON_PLACES, title=BENCHMARK.title, url=BENCHMARK.url)
    records = read_json_list(path, "SIUO records")
    images = common.images_folder(path.parent, "images", title=BENCHMARK.title, url=BENCHMARK.url)
    return [_row(index, record, path, images) for index, record in enumerate(records)]


def _row(index: int, record: Any, where: Path, images: Path) -> dict[str, Any]:
    name = common.record_name(index, record.get("question_id") if isinstance(record, dict) else None)
    record = common.as_object(record, where=where, name=name)
    image = common.text(record, "image", where=where, name=name)
    return prompt_row(
        id=common.record_id(record, "question_id", where=where, index=index),
        subset="harmful",
        text=common.text(record, "question", where=where, name=name),
        images=[common.image_file(images, "", images, image, record=f"{name} in {where}")],
        category=common.text(record, "category", where=where, name=name, required=False),
        reference=common.text(record, "reference_answer", where=where, name=name, required=False),
        safety_warning=common.text(record, "safety_warning", where=where, name=name, required=False),
    )


BENCHMARK = Benchmark(
    name="siuo",
    title="SIUO",
    subsets={"harmful": True},
    load=load_prompts,
    published="github:sinwang20/SIUO",
    licence="CC BY-NC 4.0",
    paper_judge=(
        "GPT-4V judge given the question, the record's safety_warning and reference answer: safe (True/False) "
        "and effective (very / partially / ineffective); the paper also reports human evaluation"
    ),
    extra_columns=("safety_warning",),
    aliases=("SIUO",),
)
