"""Append-only JSONL records on disk, so an interrupted evaluation resumes without redoing finished work.

Each process writes its own shard (`<name>.rank<k>.jsonl`), so data-parallel workers never interleave
writes; reading merges all shards. The first line of a shard is a header with the settings the records
depend on: resuming with other settings is refused instead of mixing incompatible results.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from vlsafe.errors import VlsafeError

logger = logging.getLogger(__name__)


class RecordStore:
    """Finished records keyed by a string, persisted line by line as they finish."""

    def __init__(
        self, folder: str | Path, name: str, settings: dict[str, Any], *, rank: int = 0, resume: bool = True
    ):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.settings = json.loads(json.dumps(settings, default=str))  # normalise types as stored
        self.records: dict[str, dict[str, Any]] = {}
        shards = sorted(self.folder.glob(f"{name}.rank*.jsonl"))
        if not resume:
            for shard in shards:
                shard.unlink()
            shards = []
        for shard in shards:
            self._load(shard)
        self.path = self.folder / f"{name}.rank{rank}.jsonl"
        if not self.path.exists():
            self.path.write_text(json.dumps({"header": self.settings}) + "\n")
        elif not _ends_with_newline(self.path):
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write("\n")  # end the line an interruption cut short, so the next record starts clean
        if self.records:
            logger.info("Resuming %s: %d finished records found in %s", name, len(self.records), self.folder)

    def _load(self, shard: Path) -> None:
        lines = shard.read_text(encoding="utf-8").splitlines()
        header = json.loads(lines[0]).get("header") if lines else None
        if header != self.settings:
            raise VlsafeError(
                f"{shard} holds results made with other settings ({header}) than this run ({self.settings}). "
                "Use a fresh output_dir, or pass --resume false to discard them."
            )
        for line in lines[1:]:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by the interruption: that record is simply redone
            self.records[record["key"]] = record

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def get(self, key: str) -> dict[str, Any]:
        return self.records[key]

    def put(self, key: str, record: dict[str, Any]) -> None:
        """Keep and persist one finished record (flushed at once, so a crash loses at most this line)."""
        record = {"key": key, **record}
        self.records[key] = record
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def _ends_with_newline(path: Path) -> bool:
    """Whether the file's last byte is a newline (read alone: shards can be large)."""
    with path.open("rb") as handle:
        handle.seek(-1, 2)
        return handle.read(1) == b"\n"
