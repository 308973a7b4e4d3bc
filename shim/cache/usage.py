"""How often and how lately each cache entry was served: counted in memory on every hit and
written to ``usage.json`` in the cache directory every few seconds when it changed (and at
shutdown), whole and atomically, so that ``shim cache ls`` reads it while shim runs and the
order of eviction survives a restart. One record per entry: as bounded as the index."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

USAGE_FILE = "usage.json"
_FORMAT = 1


@dataclass(frozen=True, slots=True)
class Usage:
    hits: int  # answers served from the entry since it was stored
    last_used: float  # when it was last served, or stored


class UsageLog:
    """The records, by cache key. Not thread-safe: used from the event loop."""

    def __init__(self, records: dict[str, Usage] | None = None) -> None:
        self._records = records or {}
        self._dirty = False

    def get(self, key: str) -> Usage | None:
        return self._records.get(key)

    def stored(self, key: str, when: float) -> None:
        self._records[key] = Usage(0, when)
        self._dirty = True

    def hit(self, key: str, when: float) -> None:
        known = self._records.get(key)
        self._records[key] = Usage((known.hits if known else 0) + 1, when)
        self._dirty = True

    def forget(self, key: str) -> None:
        if self._records.pop(key, None) is not None:
            self._dirty = True

    def snapshot(self) -> dict[str, Usage] | None:
        """The records, if anything changed since the last snapshot: a copy, cheap enough for
        the event loop (the records themselves never change); ``encode`` it anywhere."""
        if not self._dirty:
            return None
        self._dirty = False
        return dict(self._records)

    def unsaved(self) -> None:
        """A snapshot could not be written: the next one is due anyway."""
        self._dirty = True


def encode(records: dict[str, Usage]) -> bytes:
    """The file's content (50 ms for 10,000 entries here: off the event loop)."""
    entries = {key: [usage.hits, usage.last_used] for key, usage in records.items()}
    return json.dumps({"format": _FORMAT, "entries": entries}).encode()


def write_usage(path: Path, temp: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` through ``temp`` (same filesystem): readers see the old
    file or the new one, whole. Owner-only, as everything in the cache."""
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        temp.replace(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


def read_usage(path: Path) -> dict[str, Usage]:
    """The records in ``path``; none when it is missing or unreadable (the counts start over,
    nothing else depends on them)."""
    try:
        doc = json.loads(path.read_bytes())
        entries = doc["entries"] if doc.get("format") == _FORMAT else {}
        return {
            str(key): Usage(int(hits), float(last_used))
            for key, (hits, last_used) in entries.items()
        }
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}
