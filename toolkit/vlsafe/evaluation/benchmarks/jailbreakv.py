"""JailBreakV-28K (Luo et al., COLM 2024), Hub dataset ``JailbreakV-28K/JailBreakV-28k`` (MIT licence): jailbreak
prompts transferred from LLM attacks and image-based attacks, each with one image.

Layout of the Hub repository, under ``JailBreakV_28K/``: ``mini_JailBreakV_28K.csv`` (280 rows) and
``JailBreakV_28K.csv`` (28,000 rows), columns ``id, jailbreak_query, redteam_query, format, policy, image_path,
from, selected_mini, transfer_from_llm``, with ``image_path`` relative to ``JailBreakV_28K/`` (folders
``llm_transfer_attack/``, ``figstep/``, ``query_related/``). Every prompt is harmful (ASR): subset ``mini`` (the
default) and ``full`` (the whole csv). The text is ``jailbreak_query``, the category ``policy``; ``format`` (the
attack) and ``redteam_query`` (the plain harmful request) are kept as columns; the id is the file's ``id``.

From the Hub this loader downloads the csv of each chosen subset and then only the images its rows name (the
repository holds 28,000 images; `mini` needs 280). A local source is the folder of a download, holding
``JailBreakV_28K/``, or that folder itself.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from vlsafe.data.images import resolve_image_path
from vlsafe.data.sources import hub_file, is_local, read_csv_records
from vlsafe.errors import DataError
from vlsafe.evaluation.benchmarks._a_common import (
    find_file,
    optional_text,
    record_name,
    require_unique,
    text_field,
)
from vlsafe.evaluation.benchmarks.base import Benchmark, prompt_row

logger = logging.getLogger(__name__)

REPO = "JailbreakV-28K/JailBreakV-28k"
FOLDER = "JailBreakV_28K"
FILES = {"mini": "mini_JailBreakV_28K.csv", "full": "JailBreakV_28K.csv"}
COLUMNS = ("id", "jailbreak_query", "policy", "image_path")  # the columns the prompts need


def load_prompts(
    source: str | Path, subsets: Sequence[str], *, revision: str | None, references: Path | None = None
) -> list[dict[str, Any]]:
    """The chosen csv files as prompt rows (image, then the jailbreak query); from the Hub with their images."""
    local = is_local(source)
    rows = []
    for subset in subsets:
        if local:
            path = find_file(
                Path(source).expanduser(), [f"{FOLDER}/{FILES[subset]}", FILES[subset]], BENCHMARK
            )
        else:
            path, revision = _hub_csv(str(source), FILES[subset], revision)
        rows += _prompts(path, subset)
    if not local:
        _fetch_images(str(source), rows, path.parents[1], revision)
    return rows


def _prompts(path: Path, subset: str) -> list[dict[str, Any]]:
    named = []
    for index, record in enumerate(read_csv_records(path, COLUMNS)):
        name = record_name(index, record["id"])
        image = text_field(record, "image_path", name=name, path=path)
        row = prompt_row(
            id=text_field(record, "id", name=name, path=path),
            subset=subset,
            text=text_field(record, "jailbreak_query", name=name, path=path),
            images=[resolve_image_path(path.parent, image, record=f"{name} in {path}")],
            category=text_field(record, "policy", name=name, path=path),
            format=optional_text(record, "format"),
            redteam_query=optional_text(record, "redteam_query"),
        )
        named.append((row, name))
    require_unique(((row["id"], name) for row, name in named), path)
    return [row for row, _ in named]


def _hub_csv(repo: str, filename: str, revision: str | None) -> tuple[Path, str | None]:
    """(the downloaded csv, the commit it came from): later files come from that same commit."""
    try:
        validate_repo_id(repo)
    except HFValidationError:
        raise DataError(
            f"{BENCHMARK.title}: {repo!r} is neither a local folder nor a Hub dataset id; pass the folder of a "
            f"download of {BENCHMARK.url}, or its id {REPO}."
        ) from None
    path = hub_file(repo, f"{FOLDER}/{filename}", revision=revision)
    snapshot = path.parents[1]  # the cache's snapshots/<commit>/ folder
    return path, snapshot.name if re.fullmatch(r"[0-9a-f]{40}", snapshot.name) else revision


def _fetch_images(repo: str, rows: list[dict[str, Any]], snapshot: Path, revision: str | None) -> None:
    """Download the images `rows` name that are not in the cache yet; one not in the repository stays missing
    (load_benchmark names it, or skips its prompt with skip_missing_images)."""
    wanted = {Path(p).relative_to(snapshot).as_posix() for row in rows for p in row["images"]}
    # A name with control characters cannot be a file of the repository: it stays missing.
    needed = sorted(n for n in wanted if n.isprintable() and not (snapshot / n).exists())
    logger.info(
        "%s: downloading %d of the %d images of the chosen subsets", BENCHMARK.title, len(needed), len(wanted)
    )

    def fetch(name: str) -> None:
        try:
            hub_file(repo, name, revision=revision, required=False)
        except OSError as error:  # e.g. a name too long for this filesystem's cache
            raise DataError(f"Cannot store {name} of {repo} ({error.strerror or error}).") from None

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(fetch, needed))


BENCHMARK = Benchmark(
    name="jailbreakv",
    title="JailBreakV-28K",
    subsets={"mini": True, "full": True},
    load=load_prompts,
    published=f"hf:{REPO}",
    licence="MIT",
    paper_judge="Llama Guard judges each answer unsafe or safe (ASR), as remembered from the paper",
    hub_id=REPO,
    default_subsets=("mini",),
    extra_columns=("format", "redteam_query"),
    fetches_itself=True,
    aliases=("JailBreakV-28k", "JailBreakV-28K", FOLDER),
)
