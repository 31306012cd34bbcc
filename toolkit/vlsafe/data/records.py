"""Checks of one field of one untrusted record that every loader shares (data loaders and benchmark loaders)."""

from __future__ import annotations

from typing import Any

from vlsafe.data.sources import short_repr
from vlsafe.errors import DataError


def checked_record_id(value: Any, *, record: str, field: str = "id") -> str:
    """A record's id field as a string: an integer (not a bool) or a string with more than white space in it.

    Anything else raises a `DataError` naming the record (`record`, e.g. ``"VLGuard record #3 in train.json"``),
    the field and what it holds. Stores, reports and pairs key samples by id, so an empty or structured id
    would silently merge or lose samples.
    """
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).strip():
        named = "" if field == "id" else " (its id)"
        raise DataError(
            f"Malformed {record}: field {field!r}{named} must be an integer or a non-empty string, found "
            f"{short_repr(value)}. Fix or remove the record."
        )
    return str(value)
