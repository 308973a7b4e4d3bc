"""Disk store of complete objects keyed by task ID, with a size cap and LRU eviction.

An entry is a data file plus a JSON metadata file. A fill writes into ``tmp/`` and
``commit`` moves it in only once complete; so a crash or a cut transfer leaves at most a
temporary file, which ``open`` removes. Files never change in place after commit, which is
what makes memory-mapping them for zero-copy hits safe.

Space is held for every fill in flight (``Reservation``): against ``max_size`` for a fill that
will become an entry, and against the disk's free space, of which ``min_free`` and what the
high watermark asks are always left, for every temporary file (``shim.cache.disk``). The
cache holds private-bucket objects: files are 0600 and directories 0700, whatever the umask.

Others may change the directory while shim runs (``shim cache rm`` and ``verify``, an
operator): an entry whose file went is dropped from the index, and its bytes from ``used``,
when a request finds it gone and by ``check_files`` / ``drop_damaged`` every few seconds
(``shim.cache.upkeep``). Nothing outside shim writes an entry, so no file ever holds bytes
other than its metadata describes.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from shim._errors import ShimError
from shim.cache.disk import DiskSpace, FreeToKeep, Watermarks, disk_space, free_to_keep
from shim.cache.usage import USAGE_FILE, Usage, UsageLog, encode, read_usage, write_usage
from shim.units import format_size

log = logging.getLogger("shim.cache")

_KEY = re.compile(r"[0-9a-f]{64}")
FILE_MODE = 0o600
DIR_MODE = 0o700
# Disk an entry takes beyond its bytes: its last block and the metadata file.
_ENTRY_OVERHEAD = 2 * 4096


def is_cache_key(text: str) -> bool:
    """Whether ``text`` has the form of a cache key (a lowercase SHA-256 hex digest)."""
    return _KEY.fullmatch(text) is not None


class DiskFull(ShimError):
    """A fill's temporary file found no room even after evicting what could be evicted."""


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
    validated_at: float = 0.0  # when the origin last confirmed it; 0: at stored_at
    # Every header kept with the object, as served (the fields above are its validators);
    # empty in entries stored before headers were kept, which serve those fields alone.
    headers: dict[str, str] = field(default_factory=dict)
    # The BLAKE3 (hex) of the body as stored, for `shim cache verify`; None in entries
    # stored before shim kept one.
    blake3: str | None = None


def load_meta(path: Path) -> EntryMeta | None:
    """The entry metadata in ``path``, if it is whole, valid and named by its key."""
    try:
        meta = EntryMeta(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None
    valid = (
        isinstance(meta.key, str)
        and isinstance(meta.size, int)
        and meta.size >= 0
        and isinstance(meta.headers, dict)
        and all(isinstance(v, str) for item in meta.headers.items() for v in item)
        and (meta.blake3 is None or isinstance(meta.blake3, str))
    )
    return meta if valid and _KEY.fullmatch(meta.key) and path.stem == meta.key else None


@dataclass(eq=False, slots=True)
class Reservation:
    """Space held for one fill in flight, until it commits or ends."""

    size: int  # bytes expected
    written: int = 0  # bytes already on disk, which the free-space figure shows already

    @property
    def unwritten(self) -> int:
        return max(self.size - self.written, 0)


class CacheStore:
    """Index and files of the embedded cache. Not thread-safe: used from the event loop."""

    def __init__(
        self,
        root: Path,
        max_size: int,
        *,
        min_free: int = 0,
        watermarks: Watermarks | None = None,
    ) -> None:
        self.root = root
        self.max_size = max_size
        self.min_free = min_free
        self.watermarks = watermarks
        self._objects = root / "objects"
        self._tmp = root / "tmp"
        self._entries: OrderedDict[str, EntryMeta] = OrderedDict()  # LRU first
        self._pins: dict[str, int] = {}
        self._reservations: set[Reservation] = set()
        self.usage = UsageLog()
        self.used = 0

    # -- start-up ---------------------------------------------------------------------------
    def open(self) -> None:
        """Create the directories, drop leftovers of interrupted fills, index what is complete."""
        if not self.root.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            self.root.chmod(DIR_MODE)
        _private_dir(self._objects)
        _private_dir(self._tmp)
        for leftover in self._tmp.iterdir():
            leftover.unlink(missing_ok=True)
        for shard in self._objects.iterdir():
            if shard.is_dir():
                shard.chmod(DIR_MODE)  # caches made before files were private
        found: list[tuple[float, EntryMeta]] = []
        usage = read_usage(self.root / USAGE_FILE)
        for meta_path in self._objects.glob("*/*.json"):
            meta = load_meta(meta_path)
            data_path = meta_path.with_suffix("")
            try:
                stat = data_path.stat()
            except FileNotFoundError:
                stat = None
            if meta is None or stat is None or stat.st_size != meta.size:
                meta_path.unlink(missing_ok=True)
                data_path.unlink(missing_ok=True)
                continue
            meta_path.chmod(FILE_MODE)
            data_path.chmod(FILE_MODE)
            # Recency as shim recorded it, else as the file's access time tells.
            used = usage.get(meta.key)
            found.append((used.last_used if used else stat.st_atime, meta))
        for data_path in self._objects.glob("*/*"):
            if data_path.suffix != ".json" and not data_path.with_suffix(".json").exists():
                data_path.unlink(missing_ok=True)
        for _, meta in sorted(found, key=lambda item: item[0]):
            self._entries[meta.key] = meta
            self.used += meta.size
        self.usage = UsageLog({k: v for k, v in usage.items() if k in self._entries})
        self._evict_until(lambda: self._over_cap(0))
        self.sweep()
        self._warn_if_the_disk_is_smaller()

    def _warn_if_the_disk_is_smaller(self) -> None:
        free = self.disk_free()
        keep = self.free_to_keep().floor
        holdable = self.used + free - keep
        if self.max_size > holdable:
            log.warning(
                "cache.max_size (%s) is more than %s can hold (%s cached + %s free - %s kept "
                "free by min_free and the high watermark = %s): objects that do not fit stream "
                "through without being kept",
                format_size(self.max_size),
                self.root,
                format_size(self.used),
                format_size(free),
                format_size(keep),
                format_size(max(holdable, 0)),
            )

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
        if not self._intact(meta):
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return meta

    def _intact(self, meta: EntryMeta) -> bool:
        try:
            return self.data_path(meta.key).stat().st_size == meta.size
        except OSError:
            return False

    def record_hit(self, key: str) -> None:
        """Entry ``key`` answered a request: counted for `shim cache ls`."""
        if key in self._entries:
            self.usage.hit(key, time.time())

    def entries(self) -> list[EntryMeta]:
        """The index as it stands, least recently used first."""
        return list(self._entries.values())

    def check_files(self, entries: Iterable[EntryMeta]) -> list[EntryMeta]:
        """Those of ``entries`` whose file went or changed size behind shim's back. Reads the
        disk only: safe from another thread."""
        objects = str(self._objects)
        damaged = []
        for meta in entries:
            # A string: building a Path costs ten times the stat (4 us here).
            path = f"{objects}/{meta.key[:2]}/{meta.key}"
            try:
                intact = os.stat(path).st_size == meta.size  # noqa: PTH116
            except OSError:
                intact = False
            if not intact:
                damaged.append(meta)
        return damaged

    def drop_damaged(self, damaged: Iterable[EntryMeta]) -> int:
        """Drop the entries ``check_files`` found damaged that are still indexed as they were
        then (a new entry for the key since is another one); how many were dropped."""
        dropped = 0
        for meta in damaged:
            if self._entries.get(meta.key) is meta:
                log.warning("cache entry %s lost its file: dropped", meta.url)
                self._drop(meta.key)
                dropped += 1
        return dropped

    def save_usage(self) -> None:
        """Write the hits and recency of the entries when they changed (see shim.cache.usage)."""
        records = self.usage.snapshot()
        if records is not None:
            self.write_usage(records)

    def write_usage(self, records: dict[str, Usage]) -> None:
        """Write a snapshot of the usage; safe from another thread."""
        temp = self._tmp / f"{USAGE_FILE}.{os.getpid()}.{time.monotonic_ns()}"
        try:
            write_usage(self.root / USAGE_FILE, temp, encode(records))
        except OSError as error:
            self.usage.unsaved()
            log.warning("could not record the cache's usage: %s", error)

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

    # -- space ------------------------------------------------------------------------------
    @property
    def reserved(self) -> int:
        """Bytes held under max_size for fills in flight that will become entries."""
        return sum(r.size for r in self._reservations)

    def disk(self) -> DiskSpace:
        """The cache's filesystem now (for an unprivileged writer)."""
        return disk_space(self._tmp if self._tmp.exists() else self.root)

    def disk_free(self) -> int:
        return self.disk().free

    def free_to_keep(self) -> FreeToKeep:
        return free_to_keep(self.disk().size, self.min_free, self.watermarks)

    def _over_cap(self, incoming: int) -> int:
        return self.used + self.reserved + incoming - self.max_size

    def _short_of_disk(self, incoming: int, keep: int) -> int:
        """How far ``incoming`` more bytes on disk would eat into ``keep`` free bytes, counting
        what fills in flight are still to write."""
        unwritten = sum(r.unwritten for r in self._reservations)
        return incoming + unwritten + keep - self.disk_free()

    # -- fills ------------------------------------------------------------------------------
    def reserve(self, size: int) -> Reservation | None:
        """Room for a fill of ``size`` bytes that becomes an entry: under max_size and on disk,
        leaving min_free and below the high watermark, after evicting unpinned entries as
        needed (down to the low watermark once past the high one). None if impossible."""
        needed = size + _ENTRY_OVERHEAD
        keep = self.free_to_keep()
        past_the_mark = self._short_of_disk(needed, keep.floor) > 0

        def missing() -> int:
            return max(self._over_cap(size), self._short_of_disk(needed, keep.floor))

        if not self._evict_until(missing):
            return None
        if past_the_mark:
            self._evict_while(lambda: self._short_of_disk(needed, keep.target) > 0)
        reservation = Reservation(size)
        self._reservations.add(reservation)
        return reservation

    def release(self, reservation: Reservation) -> None:
        self._reservations.discard(reservation)

    def free_disk(self, needed: int) -> bool:
        """A write found the disk full: evict unpinned entries until ``needed`` bytes are free.
        False (evicting nothing) if even evicting every unpinned entry would not do."""
        return self._evict_until(lambda: needed - self.disk_free())

    def temp_path(self, key: str) -> Path:
        return self._tmp / f"{key}.{os.getpid()}.{time.monotonic_ns()}"

    def create_temp(self, path: Path) -> int:
        """Open a new temporary file for writing, owner-only; returns its descriptor."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        os.fchmod(fd, FILE_MODE)  # the umask may have taken more away
        return fd

    def commit(self, meta: EntryMeta, temp: Path, reservation: Reservation) -> None:
        """Move a complete, verified temporary file in as the entry for ``meta.key``."""
        data_path = self.data_path(meta.key)
        _private_dir(data_path.parent)
        meta_path = data_path.with_suffix(".json")
        meta_tmp = self._meta_temp(meta, temp.with_name(f"{temp.name}.json"))
        self._drop(meta.key)
        # Metadata first: a data file without metadata is a leftover, never an entry.
        meta_tmp.replace(meta_path)
        temp.replace(data_path)
        self.release(reservation)
        self._entries[meta.key] = meta
        self.used += meta.size
        self.usage.stored(meta.key, time.time())
        self.sweep()

    def _meta_temp(self, meta: EntryMeta, path: Path) -> Path:
        """Write ``meta`` to the new temporary file ``path``, to be moved in place."""
        try:
            with os.fdopen(self.create_temp(path), "w", encoding="utf-8") as out:
                out.write(json.dumps(asdict(meta)))
        except BaseException as error:
            path.unlink(missing_ok=True)
            if isinstance(error, OSError) and error.errno == errno.ENOSPC:
                raise DiskFull("the cache's disk has no room for an entry's metadata") from None
            raise
        return path

    # -- freshness --------------------------------------------------------------------------
    def revalidated(self, key: str, when: float) -> EntryMeta | None:
        """Record that the origin confirmed entry ``key`` unchanged at ``when``; the updated
        metadata, or None when the entry is gone. Kept in memory even if the disk is full."""
        meta = self._entries.get(key)
        if meta is None:
            return None
        meta = replace(meta, validated_at=when)
        self._entries[key] = meta
        temp = self.temp_path(key)
        try:
            self._meta_temp(meta, temp.with_name(f"{temp.name}.json")).replace(
                self.data_path(key).with_suffix(".json")
            )
        except (OSError, DiskFull) as error:
            log.warning("could not record the validation of %s: %s", meta.url, error)
        return meta

    def remove(self, key: str) -> bool:
        """Remove entry ``key`` (its object changed or is gone); False if it was absent.
        Readers that hold its file open finish on it: the unlinked file keeps its bytes until
        the last of them closes it, and a new entry for ``key`` is a new file."""
        present = key in self._entries
        self._drop(key)
        return present

    # -- eviction ---------------------------------------------------------------------------
    def sweep(self) -> int:
        """Past the high watermark (or into min_free), evict least recently used, unpinned
        entries until below the low one, as far as they go; how many were evicted."""
        keep = self.free_to_keep()
        if self._short_of_disk(0, keep.floor) <= 0:
            return 0
        evicted = self._evict_while(lambda: self._short_of_disk(0, keep.target) > 0)
        if evicted:
            log.warning(
                "the cache's disk is %.0f%% full: evicted %d entries (%s free, %s wanted)",
                100 * self.disk().used_fraction,
                evicted,
                format_size(self.disk_free()),
                format_size(keep.target),
            )
        return evicted

    def _drop(self, key: str) -> None:
        meta = self._entries.pop(key, None)
        if meta is None:
            return
        self.used -= meta.size
        self.usage.forget(key)
        data_path = self.data_path(key)
        data_path.with_suffix(".json").unlink(missing_ok=True)
        data_path.unlink(missing_ok=True)

    def _evict_until(self, missing: Callable[[], int]) -> bool:
        """Evict least recently used, unpinned entries until ``missing()`` bytes are none.
        Evicts nothing when even evicting every unpinned entry would not be enough."""
        evictable = [key for key in self._entries if key not in self._pins]
        if missing() > sum(self._entries[key].size for key in evictable):
            return False
        self._evict_while(lambda: missing() > 0)
        return missing() <= 0

    def _evict_while(self, wanted: Callable[[], bool]) -> int:
        """Evict least recently used, unpinned entries while ``wanted()``; how many."""
        evicted = 0
        for key in [key for key in self._entries if key not in self._pins]:
            if not wanted():
                break
            self._drop(key)
            evicted += 1
        return evicted


def _private_dir(path: Path) -> None:
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=DIR_MODE)
    path.chmod(DIR_MODE)  # the umask may have taken more away, or an older shim made it
