"""Resolve a dataset `source` (a Hub dataset id or a local folder) to local files."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from huggingface_hub import hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from vlsafe.errors import DataError, HubAccessError

logger = logging.getLogger(__name__)


def is_local(source: str | Path) -> bool:
    """A source is local when it names an existing folder; anything else is a Hub repo id."""
    return Path(source).expanduser().is_dir()


def hub_file(
    repo_id: str,
    filename: str,
    *,
    repo_type: str = "dataset",
    revision: str | None = None,
    token: str | bool | None = None,
    required: bool = True,
) -> Path | None:
    """Download one file of a Hub repo into the HF cache (honours HF_ENDPOINT) and return its path.

    Access problems become one clear message saying how to get access; a missing optional file
    (``required=False``) returns None.
    """
    page = f"https://huggingface.co/{'datasets/' if repo_type == 'dataset' else ''}{repo_id}"
    try:
        return Path(hf_hub_download(repo_id, filename, repo_type=repo_type, revision=revision, token=token))
    except GatedRepoError as error:
        raise HubAccessError(
            f"{repo_id} is a gated {repo_type} repository and this token has no access to it. Accept its "
            f"terms on {page} while logged in, then authenticate here with `hf auth login` or the HF_TOKEN "
            f"environment variable (or pass token=...). Hub said: HTTP {_status(error)}."
        ) from None
    except RevisionNotFoundError:
        raise DataError(
            f"Revision {revision!r} does not exist in {repo_id}; check the revision name."
        ) from None
    except RepositoryNotFoundError as error:
        raise HubAccessError(
            f"{repo_type.capitalize()} repository {repo_id!r} was not found, or it is private and this token "
            f"cannot see it (HTTP {_status(error)}). Check the id, or log in with `hf auth login` / HF_TOKEN. "
            "To use a local copy instead, pass the folder path as the source."
        ) from None
    except LocalEntryNotFoundError:
        raise DataError(
            f"Cannot download {filename} from {repo_id}: the Hub is unreachable and the file is not in the local "
            "cache. Connect to the Hub (or set HF_ENDPOINT to a mirror), or pass a local folder as the source."
        ) from None
    except EntryNotFoundError:
        if required:
            raise DataError(f"{repo_id} has no file {filename!r} (revision {revision or 'main'}).") from None
        return None


def _status(error: Exception) -> str:
    response = getattr(error, "response", None)
    return str(getattr(response, "status_code", "?"))


def read_json_list(path: Path, what: str = "records") -> list[Any]:
    """The list of records in a .json file (or one record per line of a .jsonl file), or a clear error."""
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        records = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{path} is not valid JSON ({error}); download or regenerate it.") from None
    if not isinstance(records, list):
        raise DataError(f"{path} must hold a JSON list of {what}, found {type(records).__name__}.")
    return records
