"""The cache's upkeep while shim runs, every few seconds: drop entries whose file was removed
behind shim's back (``shim cache rm``, an operator), so that ``used`` and the gauges follow
the disk; evict past the high watermark, which other writers on the node may cross; and write
the entries' hits and recency for ``shim cache ls``. Bounded work: one look at each entry's
file (in a thread), one statvfs, and at most one small file written per round."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from shim.cache.store import CacheStore

log = logging.getLogger("shim.cache")

UPKEEP_SECONDS = 5.0


class Upkeep:
    def __init__(
        self,
        store: CacheStore,
        on_change: Callable[[], None],
        *,
        interval: float = UPKEEP_SECONDS,
    ) -> None:
        self._store = store
        self._on_change = on_change  # the gauges
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="cache upkeep")

    async def stop(self) -> None:
        """Stop, and write the usage one last time."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._store.save_usage()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.round()
            except Exception:
                log.exception("the cache's upkeep failed; trying again in %.0f s", self._interval)

    async def round(self) -> None:
        store = self._store
        damaged = await asyncio.to_thread(store.check_files, store.entries())
        store.drop_damaged(damaged)
        store.sweep()
        usage = store.usage.snapshot()  # on the loop, which changes the records
        if usage is not None:
            await asyncio.to_thread(store.write_usage, usage)
        self._on_change()
