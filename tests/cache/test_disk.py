"""The free space the cache keeps: min_free, the watermarks, and the disk as statvfs sees it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shim.cache.disk import DiskSpace, FreeToKeep, Watermarks, disk_space, free_to_keep

GiB = 1024**3


def test_without_watermarks_min_free_is_kept() -> None:
    assert free_to_keep(100 * GiB, GiB, None) == FreeToKeep(GiB, GiB)


def test_the_marks_keep_their_share_of_the_disk_free() -> None:
    keep = free_to_keep(100 * GiB, GiB, Watermarks(0.85, 0.80))
    assert keep == FreeToKeep(floor=15 * GiB, target=20 * GiB)


def test_min_free_wins_on_a_disk_whose_share_is_smaller() -> None:
    keep = free_to_keep(10 * GiB, 3 * GiB, Watermarks(0.85, 0.80))
    assert keep == FreeToKeep(floor=3 * GiB, target=3 * GiB)


@pytest.mark.parametrize(("high", "low"), [(0.8, 0.8), (0.8, 0.9), (1.1, 0.5), (0.5, 0.0)])
def test_watermarks_out_of_order_are_refused(high: float, low: float) -> None:
    with pytest.raises(ValueError, match="0 < low < high <= 1"):
        Watermarks(high, low)


def test_disk_space_is_what_df_counts(tmp_path: Path) -> None:
    stats = os.statvfs(tmp_path)
    disk = disk_space(tmp_path)
    assert disk.free == stats.f_bavail * stats.f_frsize
    assert disk.size == (stats.f_blocks - stats.f_bfree + stats.f_bavail) * stats.f_frsize
    assert DiskSpace(size=100, free=25).used_fraction == 0.75
