"""Checks shared by the FigStep, XSTest, MM-SafetyBench and JailBreakV-28K loaders: finding a published file
among the names it goes by, one field of one record, and ids unique within a file."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from vlsafe.data.sources import short_repr
from vlsafe.errors import DataError
from vlsafe.evaluation.benchmarks.base import Benchmark


def find_file(folder: Path, candidates: Sequence[str], benchmark: Benchmark) -> Path:
    """The first of `candidates` (paths relative to `folder`) that is a file, or a `DataError` naming them all."""
    for relative in candidates:
        if (folder / relative).is_file():
            return folder / relative
    present = sorted(p.name for p in folder.iterdir())[:8] if folder.is_dir() else []
    raise DataError(
        f"{benchmark.title}: {folder} has none of {', '.join(candidates)}"
        + (f" (it holds {', '.join(present)})" if present else " (it is empty or not a folder)")
        + f". Pass the benchmark's folder as published at {benchmark.url} (its repository root)."
    )


def record_name(index: int, record_id: Any = None) -> str:
    """How messages name a record: its id when it has a usable one, and its position (#index, from 0)."""
    if isinstance(record_id, str) and record_id.strip():
        return f"{short_repr(record_id)} (#{index})"
    return f"#{index}"


def text_field(record: Mapping[str, Any], key: str, *, name: str, path: Path) -> str:
    """`record[key]` when it is a string with words in it, else a `DataError` naming the file and the record."""
    value = record.get(key)
    if not isinstance(value, str) or not value.strip():
        found = "no such field" if key not in record else f"found {short_repr(value)}"
        raise DataError(
            f"Malformed record {name} in {path}: field {key!r} must be a non-empty string ({found}). Fix or "
            "remove the record, or download the file again."
        )
    return value


def optional_text(record: Mapping[str, Any], key: str) -> str | None:
    """`record[key]` when it is a non-empty string, else None: for columns kept only as information."""
    value = record.get(key)
    return value if isinstance(value, str) and value.strip() else None


def require_unique(ids: Iterable[tuple[str, str]], path: Path) -> None:
    """`ids` are (id, record name) pairs of one file; an id given twice is a `DataError` naming both records."""
    first: dict[str, str] = {}
    for record_id, name in ids:
        if record_id in first:
            raise DataError(
                f"{path}: records {first[record_id]} and {name} have the same id {short_repr(record_id)}; the "
                "file is damaged or edited (answers are stored by id). Download it again."
            )
        first[record_id] = name
