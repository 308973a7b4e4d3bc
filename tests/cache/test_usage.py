"""Hits and recency of the entries: counted in memory, written whole when they changed, read
back by `shim cache ls` and by the store when it opens (the order of eviction)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from shim.cache.store import CacheStore
from shim.cache.usage import USAGE_FILE, Usage, UsageLog, encode, read_usage, write_usage
from tests.cache.entries import commit_entry

KEY_A = "a" * 64
KEY_B = "b" * 64
KEY_C = "c" * 64


def _open(root: Path, max_size: int = 100) -> CacheStore:
    store = CacheStore(root, max_size)
    store.open()
    return store


def test_a_snapshot_is_taken_only_when_something_changed() -> None:
    log = UsageLog()
    assert log.snapshot() is None
    log.stored(KEY_A, 10.0)
    log.hit(KEY_A, 20.0)
    log.hit(KEY_A, 30.0)
    records = log.snapshot()
    assert records is not None and records == {KEY_A: Usage(2, 30.0)}
    assert json.loads(encode(records))["entries"] == {KEY_A: [2, 30.0]}
    assert log.snapshot() is None  # nothing new since
    log.forget(KEY_A)
    assert log.get(KEY_A) is None and log.snapshot() is not None


def test_the_file_is_replaced_whole_and_owner_only(tmp_path: Path) -> None:
    log = UsageLog({KEY_A: Usage(3, 5.0)})
    log.hit(KEY_B, 6.0)
    records = log.snapshot()
    assert records is not None
    write_usage(tmp_path / USAGE_FILE, tmp_path / "temp", encode(records))
    assert read_usage(tmp_path / USAGE_FILE) == {KEY_A: Usage(3, 5.0), KEY_B: Usage(1, 6.0)}
    assert stat.S_IMODE((tmp_path / USAGE_FILE).stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == [USAGE_FILE]  # no temporary file left


@pytest.mark.parametrize(
    "content",
    [b"", b"{", b"[]", b'{"format": 2, "entries": {}}', b'{"format": 1, "entries": {"k": 1}}'],
)
def test_an_unreadable_file_is_no_usage(tmp_path: Path, content: bytes) -> None:
    (tmp_path / USAGE_FILE).write_bytes(content)
    assert read_usage(tmp_path / USAGE_FILE) == {}
    assert read_usage(tmp_path / "missing") == {}


def test_the_store_counts_hits_and_saves_them(tmp_path: Path) -> None:
    store = _open(tmp_path)
    commit_entry(store, KEY_A, b"a" * 10)
    commit_entry(store, KEY_B, b"b" * 10)
    store.record_hit(KEY_A)
    store.record_hit(KEY_A)
    store.record_hit(KEY_C)  # no such entry: not counted
    store.save_usage()
    saved = read_usage(tmp_path / USAGE_FILE)
    assert saved.keys() == {KEY_A, KEY_B}
    assert (saved[KEY_A].hits, saved[KEY_B].hits) == (2, 0)
    assert saved[KEY_A].last_used >= saved[KEY_B].last_used
    store.remove(KEY_A)
    store.save_usage()
    assert read_usage(tmp_path / USAGE_FILE).keys() == {KEY_B}


def test_reopening_orders_recency_by_the_recorded_use_before_access_times(
    tmp_path: Path,
) -> None:
    store = _open(tmp_path, max_size=20)
    commit_entry(store, KEY_A, b"a" * 10)
    commit_entry(store, KEY_B, b"b" * 10)
    store.record_hit(KEY_A)  # A is now the most recently used
    store.save_usage()
    # Access times that say the opposite (a backup, a scan, relatime).
    os.utime(store.data_path(KEY_A), (1_000, 1_000))
    os.utime(store.data_path(KEY_B), (2_000_000_000, 2_000_000_000))
    reopened = _open(tmp_path, max_size=20)
    assert reopened.usage.get(KEY_A) == read_usage(tmp_path / USAGE_FILE)[KEY_A]
    commit_entry(reopened, KEY_C, b"c" * 10)  # evicts the least recently used
    assert reopened.lookup(KEY_A) is not None
    assert reopened.lookup(KEY_B) is None
