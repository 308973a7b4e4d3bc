"""Disk store of complete objects keyed by task ID, with a size cap and LRU eviction.

An entry is a data file plus a JSON metadata file. A fill writes into ``tmp/`` and
``commit`` moves it in only once complete; so a crash or a cut transfer leaves at most a
temporary file, which ``open`` removes. Files never change in place after commit, which is
what makes memory-mapping them for zero-copy hits safe.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

_KEY = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class EntryMeta:
    key: str
    url: str  # the task identity URL, kept for operators
    size: int
    etag: str | None = None
    content_type: str | None = None
    content_encoding: str | None = None
    last_modified: str | None = None
    stored_at: float = 0.0


class CacheStore:
    """Index and files of the embedded cache. Not thread-safe: used from the event loop."""

    def __init__(self, root: Path, max_size: int) -> None:
        self.root = root
        self.max_size = max_size
        self._objects = root / "objects"
        self._tmp = root / "tmp"
        self._entries: OrderedDict[str, EntryMeta] = OrderedDict()  # LRU first
        self._pins: dict[str, int] = {}
        self._reserved = 0
        self.used = 0

    # -- start-up ---------------------------------------------------------------------------
    def open(self) -> None:
        """Create the directories, drop leftovers of interrupted fills, index what is complete."""
        self._objects.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)
        for leftover in self._tmp.iterdir():
            leftover.unlink(missing_ok=True)
        found: list[tuple[float, EntryMeta]] = []
        for meta_path in self._objects.glob("*/*.json"):
            meta = self._load_meta(meta_path)
            data_path = meta_path.with_suffix("")
            try:
                stat = data_path.stat()
            except FileNotFoundError:
                stat = None
            if meta is None or stat is None or stat.st_size != meta.size:
                meta_path.unlink(missing_ok=True)
                data_path.unlink(missing_ok=True)
                continue
            found.append((stat.st_atime, meta))
        for data_path in self._objects.glob("*/*"):
            if data_path.suffix != ".json" and not data_path.with_suffix(".json").exists():
                data_path.unlink(missing_ok=True)
        for _, meta in sorted(found, key=lambda item: item[0]):
            self._entries[meta.key] = meta
            self.used += meta.size
        self._evict(0)

    @staticmethod
    def _load_meta(path: Path) -> EntryMeta | None:
        try:
            meta = EntryMeta(**json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return None
        valid = isinstance(meta.key, str) and isinstance(meta.size, int) and meta.size >= 0
        return meta if valid and _KEY.fullmatch(meta.key) and path.stem == meta.key else None

    # -- lookup -----------------------------------------------------------------------------
    def data_path(self, key: str) -> Path:
        if not _KEY.fullmatch(key):
            raise ValueError("a cache key is a lowercase SHA-256 hex digest")
        return self._objects / key[:2] / key

    def lookup(self, key: str) -> EntryMeta | None:
        """The complete entry for ``key``, marked most recently used; None if absent, or if
        its file went missing or changed size behind shim's back (then it is dropped)."""
        meta = self._entries.get(key)
        if meta is None:
            return None
        try:
            intact = self.data_path(key).stat().st_size == meta.size
        except OSError:
            intact = False
        if not intact:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return meta

    def __len__(self) -> int:
        return len(self._entries)

    # -- readers ----------------------------------------------------------------------------
    def pin(self, key: str) -> None:
        self._pins[key] = self._pins.get(key, 0) + 1

    def unpin(self, key: str) -> None:
        count = self._pins.get(key, 0) - 1
        if count > 0:
            self._pins[key] = count
        else:
            self._pins.pop(key, None)

    # -- fills ------------------------------------------------------------------------------
    def reserve(self, size: int) -> bool:
        """Make room for ``size`` more bytes, evicting unpinned entries; False if impossible."""
        if not self._evict(size):
            return False
        self._reserved += size
        return True

    def release(self, size: int) -> None:
        self._reserved -= size

    def temp_path(self, key: str) -> Path:
        return self._tmp / f"{key}.{os.getpid()}.{time.monotonic_ns()}"

    def commit(self, meta: EntryMeta, temp: Path, reserved: int) -> None:
        """Move a complete, verified temporary file in as the entry for ``meta.key``."""
        data_path = self.data_path(meta.key)
        data_path.parent.mkdir(exist_ok=True)
        meta_path = data_path.with_suffix(".json")
        meta_tmp = temp.with_suffix(".json")
        meta_tmp.write_text(json.dumps(asdict(meta)), encoding="utf-8")
        self._drop(meta.key)
        # Metadata first: a data file without metadata is a leftover, never an entry.
        meta_tmp.replace(meta_path)
        temp.replace(data_path)
        self._reserved -= reserved
        self._entries[meta.key] = meta
        self.used += meta.size

    # -- eviction ---------------------------------------------------------------------------
    def _drop(self, key: str) -> None:
        meta = self._entries.pop(key, None)
        if meta is None:
            return
        self.used -= meta.size
        data_path = self.data_path(key)
        data_path.with_suffix(".json").unlink(missing_ok=True)
        data_path.unlink(missing_ok=True)

    def _evict(self, incoming: int) -> bool:
        """Evict least recently used, unpinned entries until ``incoming`` bytes fit. Evicts
        nothing when even evicting every unpinned entry would not make room."""
        evictable = sum(m.size for k, m in self._entries.items() if k not in self._pins)
        if self.used - evictable + self._reserved + incoming > self.max_size:
            return False
        for key in list(self._entries):
            if self.used + self._reserved + incoming <= self.max_size:
                break
            if key not in self._pins:
                self._drop(key)
        return self.used + self._reserved + incoming <= self.max_size
