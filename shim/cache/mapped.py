"""Zero-copy cache hits: hand mitmproxy a memory map of the entry as the response body.

mitmproxy has no API for a body an addon produces bit by bit, and streaming a hit through a
local server costs a Python round per 64 KiB. A read-only map of the (never modified) entry
file is sent by the kernel straight from the page cache. Two costs are managed here: the
entry stays pinned until the last byte left, and the pages already sent are dropped from
the process's resident set as it goes, so RSS does not grow with the object.
"""

from __future__ import annotations

import asyncio
import mmap
import weakref
from collections.abc import Callable
from pathlib import Path

from shim.ranges import ByteRange

_TRIM_INTERVAL = 0.05


def map_entry(
    path: Path, byte_range: ByteRange, on_release: Callable[[], None]
) -> tuple[memoryview, asyncio.Task[None]]:
    """A read-only view of ``byte_range`` of ``path``. ``on_release`` runs once nothing refers
    to the map any more (sent, or the client went away). Call from a running event loop."""
    with path.open("rb") as file:
        mapping = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    mapping.madvise(mmap.MADV_SEQUENTIAL)
    weakref.finalize(mapping, on_release)
    trimmer = asyncio.get_running_loop().create_task(_drop_sent_pages(weakref.ref(mapping)))
    return memoryview(mapping)[byte_range.start : byte_range.end + 1], trimmer


async def _drop_sent_pages(ref: weakref.ref[mmap.mmap]) -> None:
    # Sends happen on this thread between our calls, so no page is dropped mid-copy; a page
    # still to be sent is simply faulted in again from the page cache.
    while (mapping := ref()) is not None:
        mapping.madvise(mmap.MADV_DONTNEED)
        del mapping
        await asyncio.sleep(_TRIM_INTERVAL)
