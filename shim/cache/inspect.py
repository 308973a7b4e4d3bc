"""The cache directory as ``shim cache`` sees it, from outside the shim that may be running
on it: its entries with their hits, finding and removing one, checking each against the
digest it keeps, and totals. Reads the directory only, but for removals.

Safe beside a running shim, whose every change is a rename or an unlink (``shim.cache.store``):
metadata and usage files are only ever replaced whole, so they are read whole or not at all;
a metadata file without its data file is an entry being committed or dropped, and is passed
over; an entry is removed as shim drops one, metadata first, and the running shim drops it
from its index when it next looks (a request, or its upkeep within seconds). A body is judged
bad only when its entry is unchanged from before the check to after it: a check that raced a
commit, an eviction or a removal says so instead, and removes nothing.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from urllib.parse import unquote, urlsplit

import blake3

from shim._errors import RequestError, ShimError
from shim.cache.disk import DiskSpace, FreeToKeep, Watermarks, disk_space, free_to_keep
from shim.cache.store import EntryMeta, load_meta
from shim.cache.usage import USAGE_FILE, read_usage
from shim.identity import identify
from shim.providers import PROVIDERS, BucketConfig
from shim.recognize import ObjectRef, recognize

# Bytes per read of a body being checked.
_READ_SIZE = 1 << 20
# The shortest key prefix `shim cache rm` takes for a key.
MIN_PREFIX = 8
_HEX = frozenset("0123456789abcdef")


class NoSuchEntry(ShimError):
    """What `shim cache rm` was given names no entry, or more than one key prefix matches."""


@dataclass(frozen=True, slots=True)
class CacheEntry:
    meta: EntryMeta
    hits: int
    last_used: float | None  # stored or last served; None: shim has not recorded it yet
    bucket: str | None  # the configured bucket it belongs to, if any
    object: str  # its key in that bucket, else its URL's path

    @property
    def key(self) -> str:
        return self.meta.key


def _objects(root: Path) -> Path:
    return root / "objects"


def _metadata_files(root: Path) -> list[Path]:
    """The metadata files in the cache at ``root``; none when it has none yet. OSError when it
    cannot be read (another user's, not a directory): never an empty cache instead."""
    try:
        shards = [Path(entry.path) for entry in os.scandir(_objects(root)) if entry.is_dir()]
    except FileNotFoundError:
        return []
    found: list[Path] = []
    for shard in shards:
        with os.scandir(shard) as names:
            found.extend(Path(e.path) for e in names if e.name.endswith(".json"))
    return sorted(found)


def _recognized(url: str, buckets: Iterable[BucketConfig]) -> ObjectRef | None:
    """The object of a configured bucket ``url`` names; None when none does."""
    try:
        return recognize(url, buckets)
    except RequestError:
        return None


def _describe(url: str, buckets: Iterable[BucketConfig]) -> tuple[str | None, str]:
    """The bucket and object key ``url`` names, when a configured bucket recognises it."""
    ref = _recognized(url, buckets)
    if ref is None:
        return None, unquote(urlsplit(url).path)
    return ref.bucket.name, ref.key


def list_entries(root: Path, buckets: Iterable[BucketConfig] = ()) -> list[CacheEntry]:
    """The complete entries in the cache at ``root`` (none when there is no cache)."""
    buckets = tuple(buckets)
    usage = read_usage(root / USAGE_FILE)
    entries = []
    for meta_path in _metadata_files(root):
        meta = load_meta(meta_path)
        try:
            complete = meta is not None and meta_path.with_suffix("").stat().st_size == meta.size
        except FileNotFoundError:
            complete = False
        if meta is None or not complete:
            continue  # being committed or dropped, or damaged (see verify_entries)
        used = usage.get(meta.key)
        bucket, name = _describe(meta.url, buckets)
        entries.append(
            CacheEntry(
                meta,
                hits=used.hits if used else 0,
                last_used=used.last_used if used else None,
                bucket=bucket,
                object=name,
            )
        )
    return entries


SORT_KEYS = ("key", "size", "stored", "used", "hits")


def sort_entries(entries: Iterable[CacheEntry], by: str) -> list[CacheEntry]:
    """By key ascending, else largest, newest, most recently used or most hit first."""
    if by == "key":
        return sorted(entries, key=lambda e: e.key)
    orders: dict[str, Callable[[CacheEntry], float]] = {
        "size": lambda e: e.meta.size,
        "stored": lambda e: e.meta.stored_at,
        "used": lambda e: e.last_used or e.meta.stored_at,
        "hits": lambda e: e.hits,
    }
    order = orders[by]
    return sorted(entries, key=lambda e: (order(e), e.key), reverse=True)


def _object_of(url: str, buckets: Iterable[BucketConfig]) -> tuple[str, str, object] | None:
    ref = _recognized(url, buckets)
    return None if ref is None else (ref.bucket.reverse_alias, ref.key, ref.params)


def find_entries(
    entries: Iterable[CacheEntry],
    wanted: str,
    buckets: Iterable[BucketConfig] = (),
    extra_filter: Iterable[str] = (),
) -> list[CacheEntry]:
    """The entries ``wanted`` names: a key, a unique prefix of one (MIN_PREFIX characters at
    least), or a URL of the object (as a client asks for it, signed or not, or as `shim cache
    ls` shows it). NoSuchEntry when none, or when a prefix is ambiguous."""
    entries, buckets = list(entries), tuple(buckets)
    if MIN_PREFIX <= len(wanted) <= 64 and set(wanted) <= _HEX:
        found = [e for e in entries if e.key.startswith(wanted)]
        if len(found) > 1:
            raise NoSuchEntry(f"{wanted} is the start of {len(found)} keys; give more of it")
    else:
        signature = set(extra_filter).union(*(p.signature_params for p in PROVIDERS.values()))
        try:
            urls = {wanted, identify(wanted, signature).url}
        except (RequestError, ValueError):
            urls = {wanted}
        named = _object_of(wanted, buckets)
        found = [
            e
            for e in entries
            if e.meta.url in urls
            or (named is not None and _object_of(e.meta.url, buckets) == named)
        ]
    if not found:
        raise NoSuchEntry(f"no cache entry for {wanted}")
    return found


def remove_entry(root: Path, key: str) -> bool:
    """Remove entry ``key`` as shim drops one, metadata first; False when it was not there."""
    data_path = _objects(root) / key[:2] / key
    meta_path = data_path.with_suffix(".json")
    present = meta_path.exists()
    meta_path.unlink(missing_ok=True)
    data_path.unlink(missing_ok=True)
    return present


class Result(StrEnum):
    OK = "ok"
    BAD = "bad"  # its body is not what was stored: removed unless asked not to
    UNCHECKED = "unchecked"  # stored before entries kept a digest: its size alone checked
    CHANGED = "changed"  # replaced, evicted or removed while being checked: nothing judged


@dataclass(frozen=True, slots=True)
class Checked:
    meta: EntryMeta
    result: Result
    reason: str = ""
    removed: bool = False


def verify_entries(root: Path, *, remove: bool = True) -> Iterator[Checked]:
    """Check every entry's body against its size and the BLAKE3 it keeps, one after the
    other; a bad one is removed (``remove``) so that it is never served again."""
    for meta_path in _metadata_files(root):
        meta = load_meta(meta_path)
        if meta is not None:
            checked = _verify(meta_path, meta)
            if checked is not None:
                if checked.result is Result.BAD and remove:
                    checked = _remove_if_unchanged(meta_path, checked)
                yield checked


def _verify(meta_path: Path, meta: EntryMeta) -> Checked | None:
    """The verdict on one entry; None when it is no entry (its data file is not there)."""
    data_path = meta_path.with_suffix("")
    try:
        fd = os.open(data_path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        size = os.fstat(fd).st_size
        if size != meta.size:
            return _judged(meta_path, meta, fd, f"{size} bytes on disk, {meta.size} stored")
        if meta.blake3 is None:
            return Checked(meta, Result.UNCHECKED, "stored without a digest: size checked")
        digest = blake3.blake3(max_threads=1)  # a core is left to the shim serving
        while chunk := os.read(fd, _READ_SIZE):
            digest.update(chunk)
        if hmac.compare_digest(digest.hexdigest(), meta.blake3):
            return Checked(meta, Result.OK)
        return _judged(meta_path, meta, fd, "its bytes do not match the BLAKE3 stored with it")
    finally:
        os.close(fd)


def _unchanged(meta_path: Path, meta: EntryMeta, fd: int) -> bool:
    """Whether ``meta_path`` still describes ``meta`` and its data file is still ``fd``'s."""
    try:
        same_file = meta_path.with_suffix("").stat().st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False
    return same_file and load_meta(meta_path) == meta


def _judged(meta_path: Path, meta: EntryMeta, fd: int, reason: str) -> Checked:
    if _unchanged(meta_path, meta, fd):
        return Checked(meta, Result.BAD, reason)
    return Checked(meta, Result.CHANGED, "the entry changed while it was checked")


def _remove_if_unchanged(meta_path: Path, checked: Checked) -> Checked:
    """Remove a bad entry, unless shim replaced it since the check (then it is a new one)."""
    data_path = meta_path.with_suffix("")
    try:
        fd = os.open(data_path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return Checked(checked.meta, Result.CHANGED, "removed while it was checked")
    try:
        if not _unchanged(meta_path, checked.meta, fd):
            return Checked(checked.meta, Result.CHANGED, "the entry changed while it was checked")
        remove_entry(meta_path.parent.parent.parent, checked.meta.key)
    finally:
        os.close(fd)
    return Checked(checked.meta, Result.BAD, checked.reason, removed=True)


@dataclass(frozen=True, slots=True)
class CacheStats:
    entries: int
    bytes: int
    hits: int
    max_size: int
    filling: int  # temporary files of fills in flight
    filling_bytes: int
    disk: DiskSpace | None  # None: no cache directory yet
    keep: FreeToKeep | None


def cache_stats(
    root: Path, *, max_size: int, min_free: int, watermarks: Watermarks | None
) -> CacheStats:
    entries = list_entries(root)
    filling = []
    for temp in (root / "tmp").glob("*"):
        if temp.name.endswith(".json") or temp.name.startswith(USAGE_FILE):
            continue  # metadata and usage on their way in
        try:
            filling.append(temp.stat().st_size)
        except FileNotFoundError:
            continue  # committed or dropped since the listing
    disk = disk_space(root) if root.is_dir() else None
    return CacheStats(
        entries=len(entries),
        bytes=sum(e.meta.size for e in entries),
        hits=sum(e.hits for e in entries),
        max_size=max_size,
        filling=len(filling),
        filling_bytes=sum(filling),
        disk=disk,
        keep=None if disk is None else free_to_keep(disk.size, min_free, watermarks),
    )
