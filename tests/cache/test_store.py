"""CacheStore: commit/lookup, crash leftovers, reopening, LRU eviction, pins, key safety,
owner-only files, and the disk's free space and watermarks (on a small tmpfs of the test's
own)."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest

from shim.cache.disk import Watermarks
from shim.cache.store import CacheStore, DiskFull, EntryMeta
from tests.cache.conftest import SMALL_DISK
from tests.cache.entries import commit_entry

KEY_A = "a" * 64
KEY_B = "b" * 64
KEY_C = "c" * 64
KEY_D = "d" * 64


MiB = 1024 * 1024


def _open(root: Path, max_size: int = 100, min_free: int = 0) -> CacheStore:
    store = CacheStore(root, max_size, min_free=min_free)
    store.open()
    return store


def _meta(key: str, size: int) -> EntryMeta:
    return EntryMeta(key=key, url=f"https://h/{key[:4]}", size=size)


def _fill(store: CacheStore, key: str, size: int, *, content: bytes | None = None) -> EntryMeta:
    body = content if content is not None else bytes([ord(key[0])]) * size
    return commit_entry(store, key, body)


def _write_temp(store: CacheStore, temp: Path, body: bytes) -> None:
    fd = store.create_temp(temp)
    try:
        os.write(fd, body)
    finally:
        os.close(fd)


def _keys(store: CacheStore) -> set[str]:
    return {key for key in (KEY_A, KEY_B, KEY_C, KEY_D) if store.lookup(key) is not None}


# -- commit and lookup ----------------------------------------------------------------------


def test_commit_then_lookup_returns_the_entry_and_its_file(tmp_path: Path) -> None:
    store = _open(tmp_path)
    meta = EntryMeta(
        key=KEY_A,
        url="https://h/a",
        size=5,
        etag='"abc"',
        content_type="application/octet-stream",
        content_encoding=None,
        last_modified="Mon, 01 Jan 2024 00:00:00 GMT",
        stored_at=1700000000.0,
    )
    reservation = store.reserve(5)
    assert reservation is not None
    temp = store.temp_path(KEY_A)
    temp.write_bytes(b"hello")
    store.commit(meta, temp, reservation)

    assert store.lookup(KEY_A) == meta
    assert store.data_path(KEY_A).read_bytes() == b"hello"
    assert not temp.exists()
    assert len(store) == 1
    assert store.used == 5


def test_lookup_of_an_absent_key_is_none(tmp_path: Path) -> None:
    store = _open(tmp_path)
    assert store.lookup(KEY_A) is None
    assert len(store) == 0


def test_temp_paths_are_in_tmp_and_unique(tmp_path: Path) -> None:
    store = _open(tmp_path)
    first, second = store.temp_path(KEY_A), store.temp_path(KEY_A)
    assert first != second
    assert first.parent == second.parent == tmp_path / "tmp"


def test_data_path_is_sharded_by_key_prefix(tmp_path: Path) -> None:
    store = _open(tmp_path)
    key = "0f" + "1" * 62
    assert store.data_path(key) == tmp_path / "objects" / "0f" / key


def test_recommit_replaces_the_entry_without_double_counting(tmp_path: Path) -> None:
    store = _open(tmp_path)
    _fill(store, KEY_A, 10)
    meta = _fill(store, KEY_A, 4, content=b"new!")
    assert store.used == 4
    assert len(store) == 1
    assert store.lookup(KEY_A) == meta
    assert store.data_path(KEY_A).read_bytes() == b"new!"


# -- key safety -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "../x",
        "../" + "a" * 61,
        "a" * 63,
        "a" * 65,
        "A" * 64,
        "g" * 64,
        "",
        "/" + "a" * 63,
        "a" * 64 + "\n",
        "aa/" + "a" * 61,
    ],
)
def test_data_path_rejects_anything_but_a_sha256_hex_key(tmp_path: Path, key: str) -> None:
    store = _open(tmp_path)
    with pytest.raises(ValueError, match="SHA-256"):
        store.data_path(key)


def test_commit_with_a_bad_key_writes_nothing_into_objects(tmp_path: Path) -> None:
    store = _open(tmp_path)
    temp = store.temp_path("x")
    temp.write_bytes(b"data")
    reservation = store.reserve(4)
    assert reservation is not None
    with pytest.raises(ValueError, match="SHA-256"):
        store.commit(_meta("../../evil", 4), temp, reservation)
    assert list((tmp_path / "objects").iterdir()) == []
    assert not (tmp_path / "evil").exists()
    assert len(store) == 0


# -- opening: leftovers and survivors -------------------------------------------------------


def test_open_creates_the_directories(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    _open(root)
    assert (root / "objects").is_dir()
    assert (root / "tmp").is_dir()


def test_open_removes_temp_files_of_interrupted_fills(tmp_path: Path) -> None:
    store = _open(tmp_path)
    assert store.reserve(10)
    temp = store.temp_path(KEY_A)
    temp.write_bytes(b"half")
    temp.with_suffix(".json").write_text("{}", encoding="utf-8")

    reopened = _open(tmp_path)
    assert list((tmp_path / "tmp").iterdir()) == []
    assert reopened.lookup(KEY_A) is None
    assert reopened.used == 0


def test_an_entry_survives_reopening(tmp_path: Path) -> None:
    store = _open(tmp_path)
    meta = _fill(store, KEY_A, 7)

    reopened = _open(tmp_path)
    assert reopened.lookup(KEY_A) == meta
    assert reopened.used == 7
    assert len(reopened) == 1
    assert reopened.data_path(KEY_A).read_bytes() == b"a" * 7


def test_metadata_without_data_is_dropped_at_open(tmp_path: Path) -> None:
    store = _open(tmp_path)
    _fill(store, KEY_A, 7)
    _fill(store, KEY_B, 3)
    store.data_path(KEY_A).unlink()

    reopened = _open(tmp_path)
    assert reopened.lookup(KEY_A) is None
    assert not reopened.data_path(KEY_A).with_suffix(".json").exists()
    assert reopened.lookup(KEY_B) is not None
    assert reopened.used == 3


@pytest.mark.parametrize("actual", [b"", b"short", b"much too long"])
def test_size_mismatch_is_dropped_at_open(tmp_path: Path, actual: bytes) -> None:
    store = _open(tmp_path)
    _fill(store, KEY_A, 7)
    store.data_path(KEY_A).write_bytes(actual)

    reopened = _open(tmp_path)
    assert reopened.lookup(KEY_A) is None
    assert reopened.used == 0
    assert not reopened.data_path(KEY_A).exists()
    assert not reopened.data_path(KEY_A).with_suffix(".json").exists()


def test_data_without_metadata_is_dropped_at_open(tmp_path: Path) -> None:
    store = _open(tmp_path)
    _fill(store, KEY_A, 7)
    store.data_path(KEY_A).with_suffix(".json").unlink()

    reopened = _open(tmp_path)
    assert reopened.lookup(KEY_A) is None
    assert not reopened.data_path(KEY_A).exists()
    assert reopened.used == 0


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        "[]",
        json.dumps({"key": KEY_A, "url": "u"}),
        json.dumps({"key": KEY_A, "url": "u", "size": 7, "unknown": 1}),
        json.dumps({"key": KEY_B, "url": "u", "size": 7}),
    ],
)
def test_unreadable_or_mismatched_metadata_is_dropped_at_open(tmp_path: Path, content: str) -> None:
    store = _open(tmp_path)
    _fill(store, KEY_A, 7)
    store.data_path(KEY_A).with_suffix(".json").write_text(content, encoding="utf-8")

    reopened = _open(tmp_path)
    assert reopened.lookup(KEY_A) is None
    assert reopened.lookup(KEY_B) is None
    assert not reopened.data_path(KEY_A).exists()
    assert reopened.used == 0


@pytest.mark.parametrize("bad_key", [123, None])
def test_metadata_with_a_non_string_key_is_dropped_at_open(
    tmp_path: Path, bad_key: int | None
) -> None:
    store = _open(tmp_path)
    _fill(store, KEY_A, 7)
    meta_path = store.data_path(KEY_A).with_suffix(".json")
    meta_path.write_text(json.dumps({"key": bad_key, "url": "u", "size": 7}), encoding="utf-8")

    reopened = _open(tmp_path)
    assert reopened.lookup(KEY_A) is None
    assert reopened.used == 0


def test_open_evicts_down_to_a_smaller_max_size(tmp_path: Path) -> None:
    store = _open(tmp_path)
    _fill(store, KEY_A, 40)
    _fill(store, KEY_B, 40)

    reopened = _open(tmp_path, max_size=50)
    assert reopened.used <= 50
    assert len(reopened) == 1


def test_reopening_orders_recency_by_access_time(tmp_path: Path) -> None:
    store = _open(tmp_path)
    for key in (KEY_A, KEY_B, KEY_C):
        _fill(store, key, 30)
    # B was read longest ago, then C, then A.
    for key, when in ((KEY_B, 1_000_000), (KEY_C, 2_000_000), (KEY_A, 3_000_000)):
        os.utime(store.data_path(key), (when, when))

    reopened = _open(tmp_path)
    assert reopened.reserve(20)
    assert _keys(reopened) == {KEY_A, KEY_C}


# -- reserve, release and eviction ----------------------------------------------------------


def test_reserve_within_the_cap_evicts_nothing(tmp_path: Path) -> None:
    store = _open(tmp_path)
    _fill(store, KEY_A, 40)
    assert store.reserve(60)
    assert _keys(store) == {KEY_A}


def test_reserve_past_max_size_evicts_least_recently_used(tmp_path: Path) -> None:
    store = _open(tmp_path)
    _fill(store, KEY_A, 30)
    _fill(store, KEY_B, 30)
    _fill(store, KEY_C, 30)

    assert store.reserve(20)
    assert _keys(store) == {KEY_B, KEY_C}
    assert not store.data_path(KEY_A).exists()
    assert store.used == 60


def test_reserve_evicts_as_many_as_needed_in_lru_order(tmp_path: Path) -> None:
    store = _open(tmp_path)
    for key in (KEY_A, KEY_B, KEY_C):
        _fill(store, key, 30)

    assert store.reserve(50)
    assert _keys(store) == {KEY_C}


def test_lookup_refreshes_recency(tmp_path: Path) -> None:
    store = _open(tmp_path)
    _fill(store, KEY_A, 30)
    _fill(store, KEY_B, 30)
    _fill(store, KEY_C, 30)
    assert store.lookup(KEY_A) is not None

    assert store.reserve(20)
    assert store.lookup(KEY_B) is None
    assert store.lookup(KEY_A) is not None
    assert store.lookup(KEY_C) is not None


def test_outstanding_reservations_count_against_the_cap(tmp_path: Path) -> None:
    store = _open(tmp_path)
    _fill(store, KEY_A, 30)
    assert store.reserve(60)
    assert store.reserve(30)  # 30 + 60 + 30 > 100: A must go
    assert store.lookup(KEY_A) is None
    assert not store.reserve(20)  # 90 reserved, nothing left to evict


def test_reserve_of_more_than_max_size_fails_and_evicts_nothing(tmp_path: Path) -> None:
    store = _open(tmp_path)
    _fill(store, KEY_A, 30)
    assert not store.reserve(101)
    assert _keys(store) == {KEY_A}
    assert store.reserve(70)


def test_reserve_of_exactly_max_size_in_an_empty_store_succeeds(tmp_path: Path) -> None:
    store = _open(tmp_path)
    assert store.reserve(100)
    assert not store.reserve(1)


def test_release_gives_space_back(tmp_path: Path) -> None:
    store = _open(tmp_path)
    reservation = store.reserve(80)
    assert reservation is not None
    assert not store.reserve(30)
    store.release(reservation)
    assert store.reserve(30)
    assert store.reserve(70)


def test_commit_turns_the_reservation_into_used_space(tmp_path: Path) -> None:
    store = _open(tmp_path)
    _fill(store, KEY_A, 60)
    assert store.used == 60
    assert store.reserve(40)
    assert store.lookup(KEY_A) is not None


def test_pinned_entries_are_never_evicted(tmp_path: Path) -> None:
    store = _open(tmp_path)
    _fill(store, KEY_A, 30)
    _fill(store, KEY_B, 30)
    _fill(store, KEY_C, 30)
    store.pin(KEY_A)

    assert store.reserve(20)
    assert _keys(store) == {KEY_A, KEY_C}
    assert store.data_path(KEY_A).exists()


def test_reserve_fails_when_only_pinned_entries_could_make_room(tmp_path: Path) -> None:
    store = _open(tmp_path)
    _fill(store, KEY_A, 50)
    _fill(store, KEY_B, 50)
    store.pin(KEY_A)
    store.pin(KEY_B)

    assert not store.reserve(10)
    assert _keys(store) == {KEY_A, KEY_B}
    assert store.used == 100


def test_pins_are_counted(tmp_path: Path) -> None:
    store = _open(tmp_path)
    _fill(store, KEY_A, 60)
    store.pin(KEY_A)
    store.pin(KEY_A)
    store.unpin(KEY_A)
    assert not store.reserve(50)
    assert store.lookup(KEY_A) is not None
    store.unpin(KEY_A)
    assert store.reserve(50)
    assert store.lookup(KEY_A) is None


def test_unpin_of_an_unpinned_key_is_harmless(tmp_path: Path) -> None:
    store = _open(tmp_path)
    _fill(store, KEY_A, 60)
    store.unpin(KEY_A)
    store.pin(KEY_A)
    assert not store.reserve(50)


def test_failed_reserve_evicts_nothing(tmp_path: Path) -> None:
    store = _open(tmp_path)
    _fill(store, KEY_A, 40)
    _fill(store, KEY_B, 40)
    store.pin(KEY_A)

    assert not store.reserve(70)  # even with B gone, 40 + 70 > 100
    assert _keys(store) == {KEY_A, KEY_B}


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_lookup_drops_an_entry_whose_file_was_damaged_behind_its_back(
    tmp_path: Path, damage: str
) -> None:
    store = _open(tmp_path)
    _fill(store, KEY_A, 10)
    path = store.data_path(KEY_A)
    if damage == "delete":
        path.unlink()
    else:
        path.write_bytes(b"short")
    assert store.lookup(KEY_A) is None
    assert store.used == 0
    assert len(store) == 0
    assert not path.with_suffix(".json").exists()


# -- owner-only files -----------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o277])
def test_files_are_0600_and_directories_0700_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    root = tmp_path / "cache"
    previous = os.umask(umask)
    try:
        store = _open(root)
        _fill(store, KEY_A, 5)
        temp = store.temp_path(KEY_B)
        _write_temp(store, temp, b"in flight")
    finally:
        os.umask(previous)
    data = store.data_path(KEY_A)
    for directory in (root, root / "objects", root / "tmp", data.parent):
        assert _mode(directory) == 0o700, directory
    for file in (data, data.with_suffix(".json"), temp):
        assert _mode(file) == 0o600, file


def test_open_makes_the_files_of_an_older_cache_private(tmp_path: Path) -> None:
    store = _open(tmp_path)
    _fill(store, KEY_A, 5)
    data = store.data_path(KEY_A)
    for path, mode in (
        (tmp_path / "objects", 0o755),
        (tmp_path / "tmp", 0o755),
        (data.parent, 0o755),
        (data, 0o644),
        (data.with_suffix(".json"), 0o644),
    ):
        path.chmod(mode)

    reopened = _open(tmp_path)
    assert reopened.lookup(KEY_A) is not None
    assert [_mode(p) for p in (tmp_path / "objects", tmp_path / "tmp", data.parent)] == [0o700] * 3
    assert [_mode(p) for p in (data, data.with_suffix(".json"))] == [0o600] * 2


# -- the disk's free space ------------------------------------------------------------------


def test_in_an_ample_cache_nothing_is_held_for_the_disk(tmp_path: Path) -> None:
    store = _open(tmp_path, max_size=100)
    assert store.reserve(100) is not None


def test_reserve_leaves_min_free_on_the_disk(small_disk: Path) -> None:
    store = _open(small_disk, max_size=1024 * MiB, min_free=2 * MiB)
    assert store.reserve(SMALL_DISK - 3 * MiB) is not None  # 1 MiB to spare
    assert store.reserve(MiB + 1) is None  # what the first fill still writes counts
    assert store.reserve(MiB // 2) is not None


def test_bytes_a_fill_wrote_are_not_counted_twice(small_disk: Path) -> None:
    store = _open(small_disk, max_size=1024 * MiB, min_free=MiB)
    reservation = store.reserve(5 * MiB)
    assert reservation is not None
    _write_temp(store, store.temp_path(KEY_A), b"x" * 5 * MiB)
    reservation.written = 5 * MiB
    assert store.reserve(MiB) is not None  # 3 MiB free, 1 MiB of them left free


def test_reserve_evicts_entries_to_leave_min_free(small_disk: Path) -> None:
    # max_size is far beyond the disk: only the disk makes room short.
    store = _open(small_disk, max_size=1024 * MiB, min_free=MiB)
    _fill(store, KEY_A, 3 * MiB)
    _fill(store, KEY_B, 3 * MiB)
    assert store.reserve(2 * MiB) is not None
    assert _keys(store) == {KEY_B}
    assert store.disk_free() >= 3 * MiB


def test_reserve_evicts_nothing_when_pinned_entries_hold_the_disk(small_disk: Path) -> None:
    store = _open(small_disk, max_size=1024 * MiB, min_free=MiB)
    _fill(store, KEY_A, 3 * MiB)
    _fill(store, KEY_B, 3 * MiB)
    store.pin(KEY_A)
    assert store.reserve(4 * MiB) is None
    assert _keys(store) == {KEY_A, KEY_B}


def test_free_disk_evicts_until_the_bytes_fit(small_disk: Path) -> None:
    store = _open(small_disk, max_size=1024 * MiB)
    _fill(store, KEY_A, 2 * MiB)
    _fill(store, KEY_B, 2 * MiB)
    _fill(store, KEY_C, 2 * MiB)
    ballast = small_disk / "ballast"
    ballast.write_bytes(b"\0" * store.disk_free())
    assert store.disk_free() == 0

    assert store.free_disk(3 * MiB)
    assert _keys(store) == {KEY_C}
    store.pin(KEY_C)
    assert not store.free_disk(6 * MiB)  # only C could go, and it is being read
    assert _keys(store) == {KEY_C}


def test_open_warns_when_max_size_is_more_than_the_disk_holds(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="shim.cache"):
        _open(small_disk / "fits", max_size=SMALL_DISK - 2 * MiB, min_free=MiB)
    assert caplog.messages == []
    with caplog.at_level(logging.WARNING, logger="shim.cache"):
        _open(small_disk / "too-big", max_size=20 * 1024 * MiB, min_free=MiB)
    assert len(caplog.messages) == 1
    assert "cache.max_size (20.0 GiB) is more than" in caplog.messages[0]
    assert "stream through without being kept" in caplog.messages[0]


def test_a_commit_that_cannot_write_its_metadata_leaves_nothing_behind(small_disk: Path) -> None:
    store = _open(small_disk, max_size=1024 * MiB)
    reservation = store.reserve(MiB)
    assert reservation is not None
    temp = store.temp_path(KEY_A)
    _write_temp(store, temp, b"a" * MiB)
    ballast = small_disk / "ballast"
    ballast.write_bytes(b"\0" * store.disk_free())

    with pytest.raises(DiskFull, match="no room for an entry's metadata"):
        store.commit(_meta(KEY_A, MiB), temp, reservation)
    assert list((small_disk / "tmp").iterdir()) == [temp]
    assert store.lookup(KEY_A) is None

    ballast.unlink()
    store.commit(_meta(KEY_A, MiB), temp, reservation)
    assert store.lookup(KEY_A) is not None


# -- edges: empty objects, files that went, temporary paths, the exact min_free boundary -------


def test_an_empty_object_is_an_entry_that_survives_reopening(tmp_path: Path) -> None:
    store = _open(tmp_path)
    meta = _fill(store, KEY_A, 0)
    assert store.lookup(KEY_A) == meta and meta.size == 0
    reopened = _open(tmp_path)
    assert reopened.lookup(KEY_A) == meta


def test_an_entry_whose_files_both_went_is_dropped_without_an_error(tmp_path: Path) -> None:
    store = _open(tmp_path)
    _fill(store, KEY_A, 10)
    path = store.data_path(KEY_A)
    path.with_suffix(".json").unlink()  # an operator clearing the cache directory
    path.unlink()
    assert store.lookup(KEY_A) is None
    assert (store.used, len(store)) == (0, 0)


def test_a_temporary_file_is_never_opened_twice(tmp_path: Path) -> None:
    store = _open(tmp_path)
    temp = store.temp_path(KEY_A)
    _write_temp(store, temp, b"first")
    with pytest.raises(FileExistsError):
        store.create_temp(temp)
    assert temp.read_bytes() == b"first"


def test_a_metadata_write_failing_for_another_reason_than_room_is_not_disk_full(
    tmp_path: Path,
) -> None:
    store = _open(tmp_path)
    reservation = store.reserve(5)
    assert reservation is not None
    temp = store.temp_path(KEY_A)
    _write_temp(store, temp, b"aaaaa")
    temp.with_name(f"{temp.name}.json").write_bytes(b"")  # its temporary name is taken
    with pytest.raises(FileExistsError):
        store.commit(_meta(KEY_A, 5), temp, reservation)
    assert store.lookup(KEY_A) is None


# -- watermarks -------------------------------------------------------------------------------


def _with_marks(root: Path, high: float, low: float) -> CacheStore:
    store = CacheStore(root, 1024 * MiB, watermarks=Watermarks(high, low))
    store.open()
    return store


def test_a_fill_that_would_pass_the_high_mark_evicts_down_to_the_low_one(small_disk: Path) -> None:
    # 8 MiB: the high mark leaves 4 MiB free, the low one 5.6 MiB once the new body is in.
    store = _with_marks(small_disk, 0.5, 0.3)
    for key in (KEY_A, KEY_B, KEY_C):
        _fill(store, key, MiB)
    _fill(store, KEY_D, MiB)  # 4 MiB in use would pass 50%
    # A alone would have kept the disk under the high mark; B went too, down to the low mark.
    assert _keys(store) == {KEY_C, KEY_D}
    assert store.used == 2 * MiB
    assert store.disk().used_fraction <= 0.3


def test_without_watermarks_min_free_alone_bounds_the_disk(small_disk: Path) -> None:
    store = _open(small_disk, max_size=1024 * MiB, min_free=MiB)
    for key in (KEY_A, KEY_B, KEY_C, KEY_D):
        _fill(store, key, MiB)
    assert _keys(store) == {KEY_A, KEY_B, KEY_C, KEY_D}


def test_another_writer_past_the_high_mark_makes_the_sweep_evict_unpinned_entries(
    small_disk: Path,
) -> None:
    store = _with_marks(small_disk, 0.5, 0.3)
    for key in (KEY_A, KEY_B, KEY_C):
        _fill(store, key, MiB)
    assert store.sweep() == 0  # 3 of 8 MiB: under the high mark
    store.pin(KEY_A)  # the least recently used, but being read
    (small_disk / "ballast").write_bytes(b"\0" * (3 * MiB // 2))  # 56% in use
    assert store.sweep() == 2  # B and C; A would be needed for the low mark, but is pinned
    assert _keys(store) == {KEY_A}
    assert store.used == MiB
    assert not store.data_path(KEY_B).exists()
    assert store.sweep() == 0  # nothing left it may evict


def test_a_fill_is_not_kept_when_pinned_entries_hold_the_disk_past_the_high_mark(
    small_disk: Path,
) -> None:
    store = _with_marks(small_disk, 0.5, 0.3)
    for key in (KEY_A, KEY_B, KEY_C):
        _fill(store, key, MiB)
        store.pin(key)
    assert store.reserve(3 * MiB // 2) is None
    assert _keys(store) == {KEY_A, KEY_B, KEY_C}  # nothing evicted for nothing


def test_open_sweeps_a_disk_found_past_the_high_mark(small_disk: Path) -> None:
    store = _open(small_disk / "cache", max_size=1024 * MiB)
    for key in (KEY_A, KEY_B, KEY_C, KEY_D):
        _fill(store, key, MiB)
    reopened = _with_marks(small_disk / "cache", 0.4, 0.2)  # 4 of 8 MiB: past 40%
    assert len(reopened) == 1 and reopened.disk().used_fraction <= 0.2
