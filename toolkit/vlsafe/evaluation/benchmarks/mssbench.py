"""MSSBench, Multimodal Situational Safety (Zhou et al., 2024): the same query is fine in one situation and
unsafe in another. Data on the Hub ``kzhou35/mssbench`` (the default source), code on GitHub ``eric-ai-lab/MSSBench``.

Layout: ``combined.json`` (the repository's script reads it as ``combine.json``: both are accepted), an object
with the keys ``chat`` and ``embodied``. Only the chat task is loaded: a list of items ``safe_image_path``,
``unsafe_image_path`` (file names relative to ``chat/``), ``intent`` (what the user means to do; kept as a
column), ``unsafe_image`` (a caption, not used), ``Type`` (the category) and ``queries`` (a list: one prompt
each). Each query gives two prompts: with the safe image, subset ``chat_safe`` (the user should be answered:
over-refusal, benign) and with the unsafe image, subset ``chat_unsafe`` (the answer should point out the risk:
ASR). The embodied task (robot plans, ``embodied/``) is not loaded and not downloaded.

The paper's main setting puts an instruction before each query (``PROMPT_CHAT_IF`` in the repository's
``utils/prompts.py``: the model is told the image is its first-person view); pass it as the loader option
``instruction`` to reproduce that, else the query is asked alone. Items have no ids: a prompt's id is
``chat-<hash>`` of its two image paths and its query (`vlsafe.data.mis.derived_id`), the same in both subsets, so
it follows the item when the file is reordered (an exact repeat gets ``-2``, ``-3``...). Licence: the code is
MIT; the dataset card states none.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlsafe.data.mis import derived_id
from vlsafe.data.sources import read_json_object, short_repr
from vlsafe.errors import DataError
from vlsafe.evaluation.benchmarks import _b_common as common
from vlsafe.evaluation.benchmarks.base import Benchmark, prompt_row

HUB_ID = "kzhou35/mssbench"
JSON_PLACES = ("combined.json", "combine.json")
IMAGE_KEYS = {"chat_safe": "safe_image_path", "chat_unsafe": "unsafe_image_path"}


def load_prompts(
    folder: Path,
    subsets: Sequence[str],
    *,
    revision: str | None = None,
    references: Path | None = None,
    instruction: str | None = None,
) -> list[dict[str, Any]]:
    """The chat task's prompts of the chosen subsets: one image, then the query (after `instruction`, if any)."""
    path = common.find_json(folder, JSON_PLACES, title=BENCHMARK.title, url=BENCHMARK.url)
    chat = read_json_object(path, "the keys 'chat' and 'embodied'").get("chat")
    if not isinstance(chat, list):
        raise DataError(
            f"{path} has no list under the key 'chat' (found {short_repr(chat)}); MSSBench's combined.json holds "
            "an object with the keys 'chat' and 'embodied'. Download it again from "
            f"{BENCHMARK.url}."
        )
    images = common.images_folder(path.parent, "chat", title=BENCHMARK.title, url=BENCHMARK.url)
    rows = []
    for index, item in enumerate(chat):
        rows += _item_rows(index, item, subsets, path, images, instruction or "")
    _number_repeats(rows)
    return rows


def _item_rows(
    index: int, item: Any, subsets: Sequence[str], where: Path, images: Path, instruction: str
) -> list[dict[str, Any]]:
    """The prompts of one chat item: each query with each chosen subset's image."""
    name = f"chat #{index}"
    item = common.as_object(item, where=where, name=name)
    paths = {subset: common.text(item, key, where=where, name=name) for subset, key in IMAGE_KEYS.items()}
    queries = item.get("queries")
    if not isinstance(queries, list) or not queries:
        raise DataError(
            f"Malformed record {name} in {where}: field 'queries' must be a non-empty list of strings, found "
            f"{short_repr(queries)}. Fix or remove the record."
        )
    extra = {
        "category": common.text(item, "Type", where=where, name=name, required=False),
        "intent": common.text(item, "intent", where=where, name=name, required=False),
    }
    rows = []
    for number, query in enumerate(queries):
        query = common.text({"query": query}, "query", where=where, name=f"{name}, query #{number}")
        prompt_id = derived_id("chat", [paths["chat_safe"], paths["chat_unsafe"]], query)
        for subset in subsets:
            image = common.image_file(images, "", images, paths[subset], record=f"{name} in {where}")
            rows.append(
                prompt_row(id=prompt_id, subset=subset, text=instruction + query, images=[image], **extra)
            )
    return rows


def _number_repeats(rows: list[dict[str, Any]]) -> None:
    """Exact repeats (same images and query) get ``-2``, ``-3``... in file order, so ids stay unique."""
    seen: Counter[tuple[str, str]] = Counter()
    for row in rows:
        key = (row["subset"], row["id"])
        seen[key] += 1
        if seen[key] > 1:
            row["id"] = f"{row['id']}-{seen[key]}"


BENCHMARK = Benchmark(
    name="mssbench",
    title="MSSBench",
    subsets={"chat_safe": False, "chat_unsafe": True},
    load=load_prompts,
    published=f"hf:{HUB_ID}",
    licence="code MIT; the dataset card states none",
    paper_judge=(
        "GPT-4o judge (per the paper; the repository's script calls an Azure deployment), 4 classes: refuses / "
        "points out the risk / answers unaware / cannot answer; safe-image accuracy = answered (classes 2-3), "
        "unsafe-image accuracy = refused or warned (classes 0-1)"
    ),
    hub_id=HUB_ID,
    extra_columns=("intent",),
    fetch_patterns=(*JSON_PLACES, "chat/*", "chat.zip", "chat.tar"),
    aliases=("MSSBench",),
)
