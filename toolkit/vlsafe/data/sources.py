"""Resolve a dataset `source` (a Hub dataset id or a local folder) to local files."""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import reprlib
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
)

from vlsafe.errors import DataError, hub_error

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

    Access problems become one clear message saying how to get access (`vlsafe.errors.hub_error`); a missing
    optional file (``required=False``) returns None.
    """
    try:
        return Path(hf_hub_download(repo_id, filename, repo_type=repo_type, revision=revision, token=token))
    except (HfHubHTTPError, EntryNotFoundError, HFValidationError) as error:  # not OSErrors of the local disk
        if (
            not required
            and isinstance(error, EntryNotFoundError)
            and not isinstance(error, LocalEntryNotFoundError)
        ):
            return None
        raise hub_error(
            error,
            repo_id,
            f"download {filename} from",
            repo_type=repo_type,
            revision=revision,
            filename=filename,
        ) from None


def hub_snapshot(
    repo_id: str,
    *,
    repo_type: str = "dataset",
    revision: str | None = None,
    token: str | bool | None = None,
    allow_patterns: Sequence[str] | None = None,
    ignore_patterns: Sequence[str] | None = None,
) -> Path:
    """Download the files of a Hub repo that match `allow_patterns` (all when None) into the HF cache and return
    the snapshot folder; problems are mapped as `hub_file` maps them."""
    try:
        return Path(
            snapshot_download(
                repo_id,
                repo_type=repo_type,
                revision=revision,
                token=token,
                allow_patterns=list(allow_patterns) if allow_patterns is not None else None,
                ignore_patterns=list(ignore_patterns) if ignore_patterns is not None else None,
            )
        )
    except (HfHubHTTPError, EntryNotFoundError, HFValidationError) as error:
        raise hub_error(error, repo_id, "download files of", repo_type=repo_type, revision=revision) from None


# Bounded reprs of untrusted values: long strings, and deep or wide nesting, are cut.
_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 80
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict = 3, 4, 4

# A \uD800-\uDFFF escape. JSON allows one alone, but a lone surrogate cannot be encoded as UTF-8, so Arrow
# (the dataset) and the content ids of MIS could not take the text.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def short_repr(value: Any, limit: int = 80) -> str:
    """The repr of an untrusted value for an error message, at most about `limit` characters of a string
    (the rest marked by '...') and a few levels and items of a list or object."""
    if isinstance(value, str):
        return repr(value[:limit]) + ("..." if len(value) > limit else "")
    return _SHORT.repr(value)


def read_text(path: Path) -> str:
    """The UTF-8 text of a data file (a leading byte-order mark allowed), or a `DataError` naming it."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(
            f"{path} is not UTF-8 text (byte {error.start}: {error.reason}); download or regenerate it."
        ) from None
    except OSError as error:
        raise DataError(f"Cannot read {path} ({error.strerror or error}); check the path.") from None


def read_json_list(path: Path, what: str = "records") -> list[Any]:
    """The list of records in a .json file (or one record per line of a .jsonl file), or a clear error.

    Untrusted text: invalid UTF-8, malformed or too deeply nested JSON, integers too long for Python and
    lone surrogates (text no dataset can store) all become a `DataError` naming the file and the position.
    """
    records = _read_json(path)
    if not isinstance(records, list):
        raise DataError(f"{path} must hold a JSON list of {what}, found {type(records).__name__}.")
    return records


def read_json_object(path: Path, what: str = "records keyed by id") -> dict[str, Any]:
    """The JSON object in a .json file (benchmarks that key their records by id), or a clear error.

    A key that occurs twice at the top level is an error: json would silently keep the last record only."""
    repeats: list[list[str]] = []  # per object parsed, innermost first: the top-level object comes last

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        counts = Counter(key for key, _ in items)
        repeats.append([key for key, n in counts.items() if n > 1])
        return dict(items)

    data = _read_json(path, object_pairs_hook=pairs)
    if not isinstance(data, dict):
        raise DataError(f"{path} must hold a JSON object of {what}, found {type(data).__name__}.")
    if repeats and repeats[-1]:
        raise DataError(
            f"{path} holds the key {short_repr(repeats[-1][0])} more than once ({len(repeats[-1])} keys repeat): "
            "only one of its records would count. Download the file again, or remove the duplicate."
        )
    return data


def _read_json(path: Path, object_pairs_hook: Callable | None = None) -> Any:
    """The parsed content of a .json (or .jsonl: a list of its lines) file, checked as `read_json_list` says."""
    text = read_text(path)
    if path.suffix == ".jsonl":
        # Split on newlines only: str.splitlines() would also cut at U+2028 and others, valid inside strings.
        records = [
            _parse(line, path, f" at line {number}", object_pairs_hook)
            for number, line in enumerate(text.split("\n"), start=1)
            if line.strip()
        ]
    else:
        records = _parse(text, path, "", object_pairs_hook)
    if _SURROGATE_ESCAPE.search(text):
        if isinstance(records, dict):
            items = ((short_repr(key), record) for key, record in records.items())
        else:
            items = (
                (f"#{index}", record)
                for index, record in enumerate(records if isinstance(records, list) else [records])
            )
        for name, record in items:
            bad = _unencodable_text(record)
            if bad is not None:
                raise DataError(
                    f"Record {name} in {path} holds text that is not valid Unicode (a lone surrogate escape in "
                    f"{short_repr(bad)}); fix or remove the record."
                )
    return records


def read_csv_records(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    """The rows of a CSV file with a header (benchmarks publish their prompts so), as dicts of strings.

    The header must name every one of `columns` (others are kept); a row with a different number of fields,
    text that is not UTF-8 or a NUL byte is a `DataError` naming the file and the line.
    """
    text = read_text(path)
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise DataError(f"{path} holds a NUL byte (line {line}): not a CSV text file; download it again.")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path} is empty; a CSV with the header {list(columns)} is expected.")
        missing = [column for column in columns if column not in header]
        if missing:
            raise DataError(
                f"{path} has the columns {short_repr(header)}, without {missing}: not the expected layout. "
                "Download the file again from the benchmark's repository."
            )
        rows = []
        for line in reader:
            if not line:
                continue
            if len(line) != len(header):
                raise DataError(
                    f"{path}, line {reader.line_num}: {len(line)} fields where the header has {len(header)}; "
                    "the file is damaged (download it again) or the row needs quoting."
                )
            rows.append(dict(zip(header, line, strict=True)))
    except csv.Error as error:
        raise DataError(f"{path}, line {reader.line_num}: not valid CSV ({error}).") from None
    return rows


def _parse(text: str, path: Path, where: str, object_pairs_hook: Callable | None = None) -> Any:
    try:
        return json.loads(text, object_pairs_hook=object_pairs_hook)
    except json.JSONDecodeError as error:
        problem = str(error)
    except RecursionError:
        problem = "nested too deeply"
    except ValueError as error:  # e.g. an integer literal over Python's digit limit
        problem = str(error).split(";")[0]
    raise DataError(f"{path} is not valid JSON{where} ({problem}); download or regenerate it.")


def _unencodable_text(value: Any) -> str | None:
    """The first string (key or value) inside `value` that cannot be encoded as UTF-8, else None."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return item
    return None
