"""Gathers the status page's snapshot from the running parts of shim (shim.status renders it):
read-only, and cheap enough to run on every page load. Thin on purpose."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

import shim
from shim.cache.server import CacheServer
from shim.config import Settings
from shim.dfdaemon_health import DfdaemonProbe
from shim.requestlog import RecentRequests
from shim.status import BucketState, CacheUse, Credentials, StatusSnapshot, snapshot


class StatusGatherer:
    def __init__(
        self,
        settings: Callable[[], Settings],
        cache: CacheServer,
        recent: RecentRequests,
        credentials: Mapping[tuple[str, str], bool],
        ready: Callable[[], bool],
    ) -> None:
        """``credentials``: by (reverse alias, provider), whether the bucket's credentials
        loaded at start-up or when a reload brought new ones (absent: still being checked)."""
        self._settings = settings
        self._cache = cache
        self._recent = recent
        self._credentials = credentials
        self._ready = ready
        self._probe: DfdaemonProbe | None = None

    async def snapshot(self) -> StatusSnapshot:
        settings = self._settings()
        store = self._cache.store
        cache = CacheUse(
            used=store.used,
            reserved=store.reserved,
            max_size=store.max_size,
            entries=len(store),
            disk_free=await asyncio.to_thread(store.disk_free),  # a disk may be slow
            min_free=store.min_free,
        )
        dfdaemon = None
        if settings.dfdaemon is not None:
            address = settings.dfdaemon.address
            if self._probe is None or self._probe.address != address:
                self._probe = DfdaemonProbe(address)
            dfdaemon = await self._probe.health()
        buckets = []
        for bucket in settings.buckets:
            loaded = self._credentials.get((bucket.reverse_alias, bucket.provider))
            state: Credentials = "checking" if loaded is None else _LOADED[loaded]
            buckets.append(BucketState(bucket.reverse_alias, bucket.provider, state))
        return snapshot(
            generated_at=time.time(),
            version=shim.__version__,
            ready=self._ready(),
            downloads=self._cache.in_flight(),
            recent=self._recent.snapshot(),
            cache=cache,
            dfdaemon=dfdaemon,
            buckets=buckets,
        )


_LOADED: dict[bool, Credentials] = {True: "loaded", False: "not loaded"}
