"""VLSBench (Hu et al., 2024): multimodal safety without visual safety information leakage. Code on GitHub
``AI45Lab/VLSBench``, data on the Hub ``Foreshhh/vlsbench`` (the default source).

Layout: ``data.json`` at the root of the dataset (the GitHub repository keeps a copy in ``data/data.json``,
without the images), a list of 2,241 records ``instruction_id`` (an integer: the id), ``instruction`` (the
prompt), ``image_path`` (``imgs/<n>.png``, relative to the json's folder; several records share one image),
``category`` (6: Illegal Activity, Violent, Privacy, Erotic, Self-Harm, Hate), ``sub_category`` (19, kept as a
column), ``source`` and, in some copies, ``image_description`` and ``safety_reason`` (not used). Images: ``imgs/``
beside the json, or the archive ``imgs.tar`` / ``imgs.zip`` there (extracted once into the vlsafe cache).

The text never names the risk: only the image shows it. Every prompt is harmful: subset ``harmful``, scored as
ASR. Licence: not stated in the GitHub repository; see the dataset card.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlsafe.data.sources import read_json_list
from vlsafe.evaluation.benchmarks import _b_common as common
from vlsafe.evaluation.benchmarks.base import Benchmark, prompt_row

HUB_ID = "Foreshhh/vlsbench"
JSON_PLACES = ("data.json", "data/data.json")


def load_prompts(
    folder: Path, subsets: Sequence[str], *, revision: str | None = None, references: Path | None = None
) -> list[dict[str, Any]]:
    """The prompts of VLSBench: one image, then the instruction."""
    path = common.find_json(folder, JSON_PLACES, title=BENCHMARK.title, url=BENCHMARK.url)
    records = read_json_list(path, "VLSBench records")
    images = common.images_folder(path.parent, "imgs", title=BENCHMARK.title, url=BENCHMARK.url)
    return [_row(index, record, path, images) for index, record in enumerate(records)]


def _row(index: int, record: Any, where: Path, images: Path) -> dict[str, Any]:
    name = common.record_name(index, record.get("instruction_id") if isinstance(record, dict) else None)
    record = common.as_object(record, where=where, name=name)
    image = common.text(record, "image_path", where=where, name=name)
    return prompt_row(
        id=common.record_id(record, "instruction_id", where=where, index=index),
        subset="harmful",
        text=common.text(record, "instruction", where=where, name=name),
        images=[common.image_file(images, "imgs", where.parent, image, record=f"{name} in {where}")],
        category=common.text(record, "category", where=where, name=name, required=False),
        sub_category=common.text(record, "sub_category", where=where, name=name, required=False),
    )


BENCHMARK = Benchmark(
    name="vlsbench",
    title="VLSBench",
    subsets={"harmful": True},
    load=load_prompts,
    published=f"hf:{HUB_ID}",
    licence="see the dataset card (not stated in the GitHub repository)",
    paper_judge="GPT-4o judge: safe with refusal / safe with warning / unsafe; safety rate = refusal + warning",
    hub_id=HUB_ID,
    extra_columns=("sub_category",),
    aliases=("VLSBench", "vlsbench"),
)
