"""MIS, Multi-Image Safety (Ding et al., 2025), as TRL-ready vision datasets: two images per sample.

Hub layouts:

- ``Tuwhy/MIS_Train``: ``mis_train.json`` (LLaVA/ShareGPT records: ``image`` = two paths, a human turn with
  ``<image>`` placeholders and the question, a gpt turn with the chain-of-thought answer) + ``images.zip``.
  Every MIS_Train query is harmful only through its pair of images, and every answer is the safe behaviour
  (describe both images, reason about the risk, decline), so each sample gets ``kind="unsafe"``,
  ``safe=False``: like VLGuard's ``unsafe`` kind, ``safe`` describes the input, not the answer. The
  paper's general multi-image QA comes from a separate ShareGPT source (`vlsafe.data.sharegpt`).
- ``Tuwhy/MIS_Test``: ``mis_{easy,hard,real}.json`` with ``category``, ``sub_category``, ``question``,
  ``image_path1``, ``image_path2`` and, in some files only, ``id``; images under
  ``{easy,hard,real}_image/<n>/object{1,2}.png``, shipped as folders or as ``{split}_image.zip``. Test rows
  hold the user turn only: both images, in the order of the paths, then the question.

Records without an ``id`` get ``<split>-<hash>``: the first 12 hex digits of the SHA-1 of their image paths
and question, with ``-2``, ``-3``... on exact repeats. It depends on the record's content, not its
position, so it survives re-downloads and upstream insertions, and keys of a resumable evaluation stay
attached to the same prompt.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from datasets import Dataset, Value

from vlsafe.data.archives import extract_zip
from vlsafe.data.formats import user_turn, vision_dataset
from vlsafe.data.images import drop_unreadable, resolve_image_path
from vlsafe.data.records import checked_record_id
from vlsafe.data.sharegpt import ROLES, conversation_row
from vlsafe.data.sources import hub_file, hub_snapshot, is_local, read_json_list, short_repr
from vlsafe.errors import DataError

logger = logging.getLogger(__name__)

MIS_TRAIN_REPO = "Tuwhy/MIS_Train"
MIS_TEST_REPO = "Tuwhy/MIS_Test"
TEST_SPLITS = ("easy", "hard", "real")
CATEGORIES = ("Illegal Activity", "Violent", "Hate", "Self-Harm", "Privacy", "Erotic")
TRAIN_FILE, TRAIN_ARCHIVE = "mis_train.json", "images.zip"


def load_mis_train(
    source: str | Path = MIS_TRAIN_REPO,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    skip_missing_images: bool = False,
) -> Dataset:
    """Load MIS_Train as conversations (two images, question, chain-of-thought answer) with provenance.

    `source` is a Hub dataset id or a local folder holding ``mis_train.json`` next to ``images.zip`` or to
    the extracted images. Optional ``category`` / ``sub_category`` fields of a record are kept.
    """
    json_path, base = _locate_train(source, revision=revision, token=token)
    records = read_json_list(json_path)
    root = _image_root(base, "train", next((_images(r)[0] for r in records if _images(r)), ""))
    rows = [_train_row(record, index, root, json_path.name) for index, record in enumerate(records)]
    _number_repeats(rows)
    rows = drop_unreadable(
        rows,
        dataset=f"MIS train ({json_path})",
        skip_missing=skip_missing_images,
        noun="conversations",
    )
    logger.info("MIS train: %d samples from %s", len(rows), source)
    return vision_dataset(rows)


def load_mis_test(
    source: str | Path = MIS_TEST_REPO,
    split: str = "easy",
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    skip_missing_images: bool = False,
) -> Dataset:
    """Load one MIS test split (``easy``, ``hard`` or ``real``) as prompts: two images, then the question.

    Every MIS test prompt is harmful (``kind="unsafe"``); ``category`` / ``subcategory`` come from the
    record, ``split`` says which file it came from.
    """
    if split not in TEST_SPLITS:
        raise DataError(f"MIS test has splits {TEST_SPLITS}, not {split!r}.")
    json_path, folder = _locate_test(source, split, revision=revision, token=token)
    where = json_path.name
    rows = [_test_row(record, index, where, split) for index, record in enumerate(read_json_list(json_path))]
    _number_repeats(rows)
    if rows:
        root = _image_root(folder, split, rows[0]["images"][0])
        for row in rows:
            row["images"] = [
                str(resolve_image_path(root, path, record=f"{short_repr(row['id'])} in {where}"))
                for path in row["images"]
            ]
    rows = drop_unreadable(
        rows,
        dataset=f"MIS {split} ({source})",
        skip_missing=skip_missing_images,
        noun="prompts",
    )
    logger.info("MIS %s: %d prompts", split, len(rows))
    return vision_dataset(rows, extra={"split": Value("string")})


def derived_id(split: str, paths: list[str], text: str) -> str:
    """A content-based id for a record that has none: ``<split>-<12 hex digits of SHA-1(paths, text)>``."""
    digest = hashlib.sha1("\n".join([*paths, text]).encode("utf-8")).hexdigest()[:12]
    return f"{split}-{digest}"


def _locate_train(source: str | Path, *, revision: str | None, token: str | bool | None) -> tuple[Path, Path]:
    """(mis_train.json, folder the images are extracted to or lie in)."""
    if is_local(source):
        folder = Path(source).expanduser()
        json_path, archive = folder / TRAIN_FILE, folder / TRAIN_ARCHIVE
        if not json_path.is_file():
            raise DataError(
                f"{folder} has no {TRAIN_FILE}; an MIS_Train folder holds {TRAIN_FILE} and {TRAIN_ARCHIVE}."
            )
        if not archive.is_file():
            return json_path, folder  # images already extracted next to the json
    else:
        json_path = hub_file(str(source), TRAIN_FILE, revision=revision, token=token)
        archive = hub_file(str(source), TRAIN_ARCHIVE, revision=revision, token=token)
    return json_path, extract_zip(archive)


def _images(record: Any) -> list[str]:
    """A ShareGPT record's image paths (a path or a list of them); [] when it has none or is malformed."""
    images = record.get("image", []) if isinstance(record, dict) else []
    images = [images] if isinstance(images, str) else images
    return images if isinstance(images, list) and all(isinstance(p, str) for p in images) else []


def _locate_test(
    source: str | Path, split: str, *, revision: str | None, token: str | bool | None
) -> tuple[Path, Path]:
    """(mis_{split}.json, folder holding ``{split}_image/``, extracted from ``{split}_image.zip`` if need be)."""
    name = f"mis_{split}.json"
    if is_local(source):
        folder = Path(source).expanduser()
        json_path = folder / name
        if not json_path.is_file():
            raise DataError(f"{folder} has no {name}; an MIS_Test folder holds mis_{{easy,hard,real}}.json.")
    else:
        json_path = hub_file(str(source), name, revision=revision, token=token)  # also checks access
        folder = hub_snapshot(
            str(source),
            revision=revision,
            token=token,
            allow_patterns=[f"{split}_image/**", f"{split}_image.zip"],
        )
    if (folder / f"{split}_image").is_dir():
        return json_path, folder
    archive = folder / f"{split}_image.zip"
    if not archive.is_file():
        raise DataError(
            f"MIS test images of split {split!r} not found: {folder} has neither {split}_image/ nor "
            f"{split}_image.zip. Download them from https://huggingface.co/datasets/{MIS_TEST_REPO}."
        )
    return json_path, extract_zip(archive)


def _image_root(base: Path, split: str, probe: str) -> Path:
    """`base`, or its only subfolder when the archive wraps everything in one (``MIS_Train/images/...``)."""
    if not probe or _exists(base / probe):
        return base
    subfolders = [path for path in base.iterdir() if path.is_dir() and not path.name.startswith((".", "__"))]
    if len(subfolders) == 1 and _exists(subfolders[0] / probe):
        logger.info("MIS %s: images are under %s", split, subfolders[0])
        return subfolders[0]
    return base  # require_images then names the missing files


def _exists(path: Path) -> bool:
    """`path.exists()`, False for a path the filesystem cannot even look up (too long, NUL byte): data is untrusted."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def _test_row(record: Any, index: int, where: str, split: str) -> dict[str, Any]:
    """One prompt row from a test record, each field checked; the error names the record."""
    name = f"#{index}" + (
        f" (id {short_repr(record['id'])})" if isinstance(record, dict) and "id" in record else ""
    )

    def field(key: str, required: bool = True) -> str | None:
        value = record.get(key)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value.strip():
            raise DataError(
                f"Malformed MIS record {name} in {where}: field {key!r} must be a non-empty string, found "
                f"{short_repr(value)}. Fix or remove the record."
            )
        return value

    if not isinstance(record, dict):
        raise DataError(
            f"Malformed MIS record #{index} in {where}: expected an object, found {short_repr(record)}. "
            "Fix or remove the record."
        )
    paths = [field("image_path1"), field("image_path2")]
    question = field("question")
    record_id = record.get("id")
    if record_id is not None:
        record_id = checked_record_id(record_id, record=f"MIS record {name} in {where}")
    return {
        "images": paths,
        "messages": [user_turn(question, images=2)],
        "source": "mis",
        "id": record_id if record_id is not None else derived_id(split, paths, question),
        "kind": "unsafe",
        "safe": False,
        "category": field("category"),
        "subcategory": field("sub_category", required=False),
        "split": split,
    }


def _number_repeats(rows: list[dict[str, Any]]) -> None:
    """Make ids unique in file order: the second ``x`` becomes ``x-2``, the third ``x-3``."""
    seen: Counter[str] = Counter()
    for row in rows:
        seen[row["id"]] += 1
        if seen[row["id"]] > 1:
            row["id"] = f"{row['id']}-{seen[row['id']]}"


def _train_row(record: Any, index: int, root: Path, where: str) -> dict[str, Any]:
    """One conversation row (checked by `conversation_row`) with MIS provenance: the record's id, else a
    content id from its images and first human turn; its optional ``category`` / ``sub_category``."""
    row = conversation_row(record, index, root, where, "mis")
    label = f"{short_repr(record.get('id', index))} (#{index}) in {where}"
    question = next((t["value"] for t in record["conversations"] if ROLES[t["from"]] == "user"), None)
    if question is None:
        raise DataError(f"Malformed conversation {label}: no human turn with the question. Fix or remove it.")
    for key in ("category", "sub_category"):
        if not isinstance(record.get(key), str | None):
            raise DataError(
                f"Malformed conversation {label}: field {key!r} must be a string or absent, found "
                f"{short_repr(record[key])}. Fix or remove it."
            )
    return row | {
        "id": row["id"] if "id" in record else derived_id("train", _images(record), question),
        "kind": "unsafe",
        "safe": False,
        "category": record.get("category"),
        "subcategory": record.get("sub_category"),
    }
