"""Ordinary instruction data in LLaVA/ShareGPT form, for mixing helpfulness into safety fine-tuning.

A record is ``{"id", "image" (a path or a list of paths, optional), "conversations": [{"from", "value"}]}``
with ``from`` in human/user, gpt/assistant, system and one ``<image>`` placeholder per image in the human
turns, as in LLaVA's instruction mix (``llava_v1_5_mix665k.json``). Image paths are relative to an image
root folder (LLaVA's ``--image_folder``).
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

from datasets import Dataset

from vlsafe.data.archives import extract_zip
from vlsafe.data.formats import vision_dataset
from vlsafe.data.images import drop_unreadable, resolve_image_path
from vlsafe.data.records import checked_record_id
from vlsafe.data.sources import hub_file, is_local, read_json_list, short_repr
from vlsafe.errors import DataError

logger = logging.getLogger(__name__)

IMAGE_PLACEHOLDER = "<image>"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def load_sharegpt(
    source: str | Path,
    *,
    data_file: str | None = None,
    image_root: str | Path | None = None,
    image_archive: str | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    skip_missing_images: bool = False,
    name: str = "sharegpt",
    samples: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Load LLaVA/ShareGPT conversations as a TRL vision dataset with provenance (kind ``helpful``).

    `source` is a local json file, a local folder (with `data_file` in it), or a Hub dataset id (with
    `data_file` the json's name in the repo). Images are looked up under `image_root` (default: the
    json's folder), or under the extraction of `image_archive` (a zip in the same folder or Hub repo).
    `samples` draws that many conversations at random (seeded by `seed`) before their images are checked:
    every image is decoded in full, so a 665k-conversation file costs only the drawn ones. Asking for more
    than the file holds is an error, not a silent cap.
    """
    json_path, default_root = _locate_json(source, data_file, revision=revision, token=token)
    root = _images_root(source, default_root, image_root, image_archive, revision=revision, token=token)
    records = read_json_list(json_path, "conversations")
    rows = [
        conversation_row(record, index, root, json_path.name, name) for index, record in enumerate(records)
    ]
    if samples is not None:
        if samples > len(rows):
            raise DataError(
                f"Asked for {samples} samples of {json_path.name}, which has only {len(rows)} conversations; "
                "lower the number or point at a larger dataset."
            )
        rows = random.Random(seed).sample(rows, samples)
    rows = drop_unreadable(
        rows,
        dataset=f"{name} ({json_path})",
        skip_missing=skip_missing_images,
        noun="conversations",
    )
    logger.info("%s: %d conversations from %s", name, len(rows), json_path)
    return vision_dataset(rows)


def _locate_json(source: str | Path, data_file: str | None, *, revision, token) -> tuple[Path, Path | None]:
    path = Path(source).expanduser()
    if path.is_file():
        return path, path.parent
    if is_local(path):
        if data_file is None or not (path / data_file).is_file():
            raise DataError(f"Pass data_file=<json name> that exists in folder {path} (got {data_file!r}).")
        return path / data_file, path
    if data_file is None:
        raise DataError(
            f"{source} is neither a local file nor folder; for a Hub dataset pass data_file=<json name in the repo>."
        )
    return hub_file(str(source), data_file, revision=revision, token=token), None


def _images_root(
    source: str | Path,
    default_root: Path | None,
    image_root: str | Path | None,
    image_archive: str | None,
    *,
    revision: str | None,
    token: str | bool | None,
) -> Path:
    """The folder image paths are relative to: the extraction of `image_archive`, else `image_root`, else the
    json's folder (a local source only)."""
    if image_archive is not None:
        archive = (
            Path(source) / image_archive
            if is_local(source)
            else hub_file(str(source), image_archive, revision=revision, token=token)
        )
        if not Path(archive).is_file():
            raise DataError(f"Image archive {archive} does not exist; check `image_archive`.")
        return extract_zip(archive)
    if image_root is not None:
        return Path(image_root).expanduser()
    if default_root is not None:
        return default_root
    raise DataError(
        f"{source} is a Hub dataset: pass image_root=<local folder with its images> or image_archive=<zip in the repo>."
    )


def conversation_row(record: Any, index: int, root: Path, where: str, name: str) -> dict[str, Any]:
    """One conversation as a row (images resolved under `root`), checking that `<image>` placeholders and
    images agree; a malformed record raises a `DataError` naming its id, its #index and the file `where`."""
    record_id = record.get("id", index) if isinstance(record, dict) else index
    label = f"{short_repr(record_id)} (#{index}) in {where}"

    def fail(problem: str) -> DataError:
        return DataError(f"Malformed conversation {label}: {problem}. Fix or remove it.")

    if not isinstance(record, dict):
        raise fail(f"expected an object, found {short_repr(record)}")
    record_id = checked_record_id(record_id, record=f"conversation {label}")
    images = record.get("image", [])
    images = [images] if isinstance(images, str) else images
    if not isinstance(images, list) or not all(isinstance(p, str) and p for p in images):
        raise fail(
            f"field 'image' must be a path or a list of paths, found {short_repr(record.get('image'))}"
        )
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise fail("field 'conversations' must be a non-empty list")
    messages, placeholders = [], 0
    for turn in turns:
        speaker = turn.get("from") if isinstance(turn, dict) else None
        if not isinstance(speaker, str) or speaker not in ROLES or not isinstance(turn.get("value"), str):
            raise fail(
                f"each turn needs 'from' in {sorted(ROLES)} and a string 'value', found {short_repr(turn)}"
            )
        role = ROLES[speaker]
        pieces = turn["value"].split(IMAGE_PLACEHOLDER)
        if role != "user" and len(pieces) > 1:
            raise fail(f"an {IMAGE_PLACEHOLDER} placeholder outside a human turn")
        placeholders += len(pieces) - 1
        content = []
        for position, piece in enumerate(pieces):
            if position:
                content.append({"type": "image", "text": None})
            if piece.strip():
                content.append({"type": "text", "text": piece.strip()})
        messages.append({"role": role, "content": content})
    if placeholders != len(images):
        raise fail(f"{placeholders} {IMAGE_PLACEHOLDER} placeholders but {len(images)} images")
    if not any(message["role"] == "assistant" for message in messages):
        raise fail("no gpt/assistant turn to learn from")
    return {
        "images": [str(resolve_image_path(root, path, record=label)) for path in images],
        "messages": messages,
        "source": name,
        "id": record_id,
        "kind": "helpful",
        "safe": True,
        "category": None,
        "subcategory": None,
    }
