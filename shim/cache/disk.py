"""The disk the cache lives on: how full it is, and the free space the cache leaves on it.

Two limits, whichever leaves more free: ``min_free`` bytes, and the watermarks, fractions of
the disk in use as ``df`` counts it (used / (used + available)). A fill that would take the
disk past the high mark evicts least recently used entries first, and once past it (another
writer on the node, or fills landing together) the cache evicts down to the low mark, so that
it does not evict again at every fill. Pure but for ``disk_space``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class DiskSpace:
    """One look at a filesystem, as an unprivileged writer sees it."""

    size: int  # used + free: blocks reserved for root are neither
    free: int

    @property
    def used_fraction(self) -> float:
        return 1.0 - self.free / self.size if self.size else 1.0


def disk_space(path: Path) -> DiskSpace:
    stats = os.statvfs(path)
    free = stats.f_bavail * stats.f_frsize
    used = (stats.f_blocks - stats.f_bfree) * stats.f_frsize
    return DiskSpace(size=used + free, free=free)


@dataclass(frozen=True, slots=True)
class Watermarks:
    """Evict once more than ``high`` of the disk is in use, until no more than ``low`` is."""

    high: float
    low: float

    def __post_init__(self) -> None:
        if not 0 < self.low < self.high <= 1:
            raise ValueError("watermarks need 0 < low < high <= 1")


@dataclass(frozen=True, slots=True)
class FreeToKeep:
    """Free bytes the cache keeps: ``floor`` always (a fill that cannot keep it is not kept),
    and ``target`` once eviction for the disk starts (at most what ``floor`` asks, and more
    between the marks)."""

    floor: int
    target: int


def free_to_keep(disk_size: int, min_free: int, marks: Watermarks | None) -> FreeToKeep:
    if marks is None:
        return FreeToKeep(min_free, min_free)
    # What may be in use, rounded down: what is kept free is never less than the mark says.
    return FreeToKeep(
        floor=max(min_free, disk_size - math.floor(marks.high * disk_size)),
        target=max(min_free, disk_size - math.floor(marks.low * disk_size)),
    )
