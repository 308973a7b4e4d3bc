"""Zero-copy cache hits: hand mitmproxy a memory map of the entry as the response body.

mitmproxy has no API for a body an addon produces bit by bit, and streaming a hit through a
local server costs a Python round per 64 KiB. A read-only map of the (never modified) entry
file is sent by the kernel straight from the page cache. Two costs are managed here: the
entry stays pinned until the last byte left, and the pages already sent are dropped from the
process's resident set as it goes, so RSS does not grow with the object.

The dropping runs on a thread of its own: on a fast link the kernel may copy most of the map
in one send call, during which the event loop cannot run, but other threads can (the call
releases the GIL). Dropping a page of a clean, shared, read-only file map only unmaps it; one
still to be sent is faulted in again from the page cache.
"""

from __future__ import annotations

import asyncio
import mmap
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

from shim.ranges import ByteRange

_DROP_INTERVAL = 0.005


class _PageDropper:
    """One daemon thread that keeps dropping the resident pages of every live map."""

    def __init__(self) -> None:
        self._maps: set[weakref.ref[mmap.mmap]] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, mapping: mmap.mmap) -> None:
        with self._lock:
            self._maps.add(weakref.ref(mapping))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="shim-page-dropper", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(_DROP_INTERVAL)
            with self._lock:
                refs = list(self._maps)
            for ref in refs:
                # A strong reference for the call: the map cannot be unmapped (and its address
                # range reused) underneath madvise.
                mapping = ref()
                if mapping is None:
                    with self._lock:
                        self._maps.discard(ref)
                    continue
                mapping.madvise(mmap.MADV_DONTNEED)
                del mapping


_dropper = _PageDropper()


def _call_on(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    # The last reference may go on the dropper's thread: hop back to the loop, if it still runs.
    if not loop.is_closed():
        loop.call_soon_threadsafe(callback)


def map_entry(path: Path, byte_range: ByteRange, on_release: Callable[[], None]) -> memoryview:
    """A read-only view of ``byte_range`` of ``path``. ``on_release`` runs on the calling event
    loop once nothing refers to the map any more (sent, or the client went away)."""
    loop = asyncio.get_running_loop()
    with path.open("rb") as file:
        mapping = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    mapping.madvise(mmap.MADV_SEQUENTIAL)
    weakref.finalize(mapping, _call_on, loop, on_release)
    _dropper.watch(mapping)
    return memoryview(mapping)[byte_range.start : byte_range.end + 1]
