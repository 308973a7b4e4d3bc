"""The cache directory as `shim cache` reads it beside a running store: entries with their
hits, finding one by key or URL, removing it, verifying bodies against their digests, and
totals that agree with the store's own."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from shim.cache import inspect
from shim.cache.inspect import (
    NoSuchEntry,
    Result,
    cache_stats,
    find_entries,
    list_entries,
    remove_entry,
    sort_entries,
    verify_entries,
)
from shim.cache.store import CacheStore, load_meta
from shim.config import settings_from_mapping
from shim.providers import BucketConfig
from tests.cache.entries import commit_entry

KEY_A = "a" * 64
KEY_B = "ab" + "b" * 62
KEY_C = "c" * 64
ENDPOINT = "http://127.0.0.1:9000"


def _buckets() -> tuple[BucketConfig, ...]:
    credentials = {"source": "static", "access_key_id": "a", "secret_access_key": "b"}
    bucket = {"provider": "s3", "bucket": "models", "endpoint": ENDPOINT}
    raw = {"buckets": [{**bucket, "credentials": credentials}]}
    return settings_from_mapping(raw, env={}).buckets


def _store(root: Path) -> CacheStore:
    """Three entries of bucket 'models', as a running shim holds them; A served twice."""
    store = CacheStore(root, 1 << 20)
    store.open()
    commit_entry(store, KEY_A, b"a" * 300, url=f"{ENDPOINT}/models/dir/a.bin")
    commit_entry(store, KEY_B, b"b" * 100, url=f"{ENDPOINT}/models/b.bin")
    commit_entry(store, KEY_C, b"c" * 200, url=f"{ENDPOINT}/models/c.bin?versionId=v1")
    store.record_hit(KEY_A)
    store.record_hit(KEY_A)
    store.save_usage()
    return store


# -- ls -------------------------------------------------------------------------------------


def test_entries_are_listed_with_their_bucket_object_and_hits(tmp_path: Path) -> None:
    _store(tmp_path)
    entries = {e.key: e for e in list_entries(tmp_path, _buckets())}
    assert entries.keys() == {KEY_A, KEY_B, KEY_C}
    a = entries[KEY_A]
    assert (a.bucket, a.object, a.meta.size, a.hits) == ("models", "dir/a.bin", 300, 2)
    assert a.last_used is not None and a.last_used > a.meta.stored_at
    assert (entries[KEY_B].hits, entries[KEY_C].object) == (0, "c.bin")
    # Without the config, the URL's path stands for the object.
    bare = {e.key: e for e in list_entries(tmp_path)}
    assert (bare[KEY_A].bucket, bare[KEY_A].object) == (None, "/models/dir/a.bin")


def test_files_that_are_no_entry_are_passed_over(tmp_path: Path) -> None:
    store = _store(tmp_path)
    # Half of a commit (metadata in, data not yet), and data whose metadata went first.
    os.rename(store.data_path(KEY_B), tmp_path / "tmp" / "elsewhere")
    store.data_path(KEY_C).with_suffix(".json").unlink()
    assert [e.key for e in list_entries(tmp_path)] == [KEY_A]
    assert list_entries(tmp_path / "no-cache-yet") == []


def test_entries_sort_by_each_column(tmp_path: Path) -> None:
    _store(tmp_path)
    entries = list_entries(tmp_path)

    def keys(by: str) -> list[str]:
        return [e.key for e in sort_entries(entries, by)]

    assert keys("key") == [KEY_A, KEY_B, KEY_C]
    assert keys("size") == [KEY_A, KEY_C, KEY_B]
    assert keys("hits")[0] == KEY_A
    assert keys("used")[0] == KEY_A  # the others were not served since they were stored


# -- rm -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wanted", "key"),
    [
        (KEY_C, KEY_C),
        ("cccccccc", KEY_C),  # a unique prefix
        ("abbbbbbb", KEY_B),
        (f"{ENDPOINT}/models/dir/a.bin", KEY_A),  # as `shim cache ls` shows it
        (f"{ENDPOINT}/models/dir/a.bin?X-Amz-Signature=00&X-Amz-Date=1", KEY_A),  # signed
        (f"{ENDPOINT}/models/dir/a%2Ebin", KEY_A),  # another spelling of the same object
        (f"{ENDPOINT}/models/c.bin?versionId=v1", KEY_C),
    ],
)
def test_an_entry_is_found_by_key_prefix_or_url(tmp_path: Path, wanted: str, key: str) -> None:
    _store(tmp_path)
    found = find_entries(list_entries(tmp_path, _buckets()), wanted, _buckets())
    assert [e.key for e in found] == [key]


@pytest.mark.parametrize(
    "wanted",
    [
        "a" * 7,  # too short for a prefix: taken as a URL
        f"{ENDPOINT}/models/c.bin",  # another version than the one kept
        f"{ENDPOINT}/other/dir/a.bin",
        "d" * 64,
    ],
)
def test_what_names_no_entry_is_an_error(tmp_path: Path, wanted: str) -> None:
    _store(tmp_path)
    with pytest.raises(NoSuchEntry, match="no cache entry"):
        find_entries(list_entries(tmp_path, _buckets()), wanted, _buckets())


def test_an_ambiguous_prefix_is_refused(tmp_path: Path) -> None:
    store = _store(tmp_path)
    commit_entry(store, "a" * 63 + "b", b"x")
    with pytest.raises(NoSuchEntry, match="start of 2 keys"):
        find_entries(list_entries(tmp_path), "aaaaaaaa")


def test_removing_an_entry_under_a_running_store_corrects_its_accounting(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path)
    assert remove_entry(tmp_path, KEY_A)
    assert not remove_entry(tmp_path, KEY_A)
    assert not store.data_path(KEY_A).exists()
    assert not store.data_path(KEY_A).with_suffix(".json").exists()
    assert store.lookup(KEY_A) is None  # the next request is a miss
    assert (len(store), store.used) == (2, 300)


# -- verify ---------------------------------------------------------------------------------


def _flip_a_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as file:
        file.seek(offset)
        byte = file.read(1)
        file.seek(offset)
        file.write(bytes([byte[0] ^ 0x01]))


def test_verify_passes_intact_entries(tmp_path: Path) -> None:
    _store(tmp_path)
    assert [c.result for c in verify_entries(tmp_path)] == [Result.OK] * 3


def test_a_flipped_byte_is_bad_and_removed(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _flip_a_byte(store.data_path(KEY_B), 50)
    checked = {c.meta.key: c for c in verify_entries(tmp_path)}
    assert checked[KEY_B].result is Result.BAD and checked[KEY_B].removed
    assert "BLAKE3" in checked[KEY_B].reason
    assert {checked[KEY_A].result, checked[KEY_C].result} == {Result.OK}
    assert store.lookup(KEY_B) is None  # never served again
    assert [e.key for e in list_entries(tmp_path)] == [KEY_A, KEY_C]


def test_a_dry_run_names_a_bad_entry_and_keeps_it(tmp_path: Path) -> None:
    store = _store(tmp_path)
    with store.data_path(KEY_A).open("r+b") as file:
        file.truncate(299)
    (checked,) = [c for c in verify_entries(tmp_path, remove=False) if c.result is Result.BAD]
    assert (checked.meta.key, checked.removed) == (KEY_A, False)
    assert "299 bytes on disk, 300 stored" in checked.reason
    assert store.data_path(KEY_A).exists()


def test_an_entry_without_a_digest_is_said_to_be_unchecked(tmp_path: Path) -> None:
    store = _store(tmp_path)
    commit_entry(store, KEY_B, b"older", digest=False)
    checked = {c.meta.key: c.result for c in verify_entries(tmp_path)}
    assert checked[KEY_B] is Result.UNCHECKED


def test_an_entry_replaced_while_checked_is_not_judged_nor_removed(tmp_path: Path) -> None:
    """The race with a running shim: verify read the metadata, then shim committed a new
    body for the key (a revalidation that found it changed) before the body was read."""
    store = _store(tmp_path)
    meta_path = store.data_path(KEY_A).with_suffix(".json")
    read_before = load_meta(meta_path)
    assert read_before is not None
    fresh = commit_entry(store, KEY_A, b"A" * 300, url=read_before.url)
    checked = inspect._verify(meta_path, read_before)
    assert checked is not None and checked.result is Result.CHANGED
    assert store.lookup(KEY_A) == fresh


# -- stats ----------------------------------------------------------------------------------


def test_stats_agree_with_the_store(tmp_path: Path) -> None:
    store = _store(tmp_path)
    (tmp_path / "tmp" / f"{KEY_C}.1.2").write_bytes(b"x" * 7)  # a fill in flight
    stats = cache_stats(tmp_path, max_size=1 << 20, min_free=0, watermarks=None)
    assert (stats.entries, stats.bytes, stats.hits) == (len(store), store.used, 2)
    assert (stats.filling, stats.filling_bytes) == (1, 7)
    assert stats.disk is not None and stats.disk.size > 0
    remove_entry(tmp_path, KEY_B)
    assert cache_stats(tmp_path, max_size=1, min_free=0, watermarks=None).bytes == 500
    assert json.loads((tmp_path / "usage.json").read_text())["format"] == 1
