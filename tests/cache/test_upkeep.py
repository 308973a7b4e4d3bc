"""The cache's upkeep while shim runs: entries removed behind its back leave the index and
``used`` (not only when next requested), the watermarks are kept, the usage is written."""

from __future__ import annotations

import asyncio
from pathlib import Path

from shim.cache.inspect import remove_entry
from shim.cache.store import CacheStore
from shim.cache.upkeep import Upkeep
from shim.cache.usage import USAGE_FILE, read_usage
from tests.cache.entries import commit_entry

KEY_A = "a" * 64
KEY_B = "b" * 64


def _store(root: Path) -> CacheStore:
    store = CacheStore(root, 100)
    store.open()
    commit_entry(store, KEY_A, b"a" * 10)
    commit_entry(store, KEY_B, b"b" * 20)
    return store


def test_a_round_drops_entries_removed_behind_shim_s_back(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.record_hit(KEY_B)
    changes: list[tuple[int, int]] = []
    upkeep = Upkeep(store, lambda: changes.append((len(store), store.used)))
    assert remove_entry(tmp_path, KEY_A)  # shim cache rm
    assert (len(store), store.used) == (2, 30)  # nobody asked for it yet
    asyncio.run(upkeep.round())
    assert changes == [(1, 20)]
    assert store.entries() == [store.lookup(KEY_B)]
    assert read_usage(tmp_path / USAGE_FILE)[KEY_B].hits == 1


def test_an_entry_committed_again_after_the_check_is_kept(tmp_path: Path) -> None:
    store = _store(tmp_path)
    remove_entry(tmp_path, KEY_A)
    damaged = store.check_files(store.entries())
    assert [meta.key for meta in damaged] == [KEY_A]
    fresh = commit_entry(store, KEY_A, b"A" * 5)  # a fill of it landed meanwhile
    assert store.drop_damaged(damaged) == 0
    assert store.lookup(KEY_A) == fresh
    assert store.used == 25


def test_stopping_writes_the_usage_once_more(tmp_path: Path) -> None:
    store = _store(tmp_path)

    async def scenario() -> None:
        upkeep = Upkeep(store, lambda: None, interval=3600)
        upkeep.start()
        store.record_hit(KEY_A)
        await upkeep.stop()

    asyncio.run(scenario())
    assert read_usage(tmp_path / USAGE_FILE)[KEY_A].hits == 1
