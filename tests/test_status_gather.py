"""Gathering the status page's snapshot from a real cache server and store, the recent requests,
the credential check's results and the configured dfdaemon."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import shim
from shim.cache.server import CacheServer
from shim.cache.store import CacheStore, EntryMeta
from shim.config import Settings, settings_from_mapping
from shim.metrics import Metrics
from shim.requestlog import RecentRequests, RequestRecord
from shim.status_gather import StatusGatherer
from tests.support.procs import free_port

KEY = "c" * 64
CREDENTIALS = {"source": "static", "access_key_id": "AKIDGATHERTEST", "secret_access_key": "k"}


def settings(tmp_path: Path, dfdaemon_port: int) -> Settings:
    buckets = [
        {"provider": "s3", "bucket": name, "credentials": CREDENTIALS}
        for name in ("models", "keyless", "pending")
    ]
    raw: dict[str, Any] = {
        "cache": {"dir": str(tmp_path / "cache"), "max_size": "1MiB", "min_free": "1KiB"},
        "dfdaemon": f"http://127.0.0.1:{dfdaemon_port}",
        "buckets": buckets,
    }
    return settings_from_mapping(raw, env={})


def add_entry(store: CacheStore, size: int) -> None:
    """An entry committed as a fill commits one."""
    reservation = store.reserve(size)
    assert reservation is not None
    temp = store.temp_path(KEY)
    fd = store.create_temp(temp)
    os.write(fd, b"x" * size)
    os.close(fd)
    reservation.written = size
    store.commit(EntryMeta(key=KEY, url="https://h/k", size=size), temp, reservation)


def record(url: str, status: int) -> RequestRecord:
    return RequestRecord(1.0, "GET", url, "models", status, "MISS", "direct", KEY, 10, 0.1)


def test_the_snapshot_of_a_running_shim(tmp_path: Path) -> None:
    port = free_port()  # nothing listens: the dfdaemon is down
    current = settings(tmp_path, port)
    recent = RecentRequests()
    recent.add(record("http://h/models/first", 200))
    recent.add(record("http://h/models/second", 404))
    credentials = {("models", "s3"): True, ("keyless", "s3"): False}

    async def main() -> None:
        store = CacheStore(current.cache.dir, current.cache.max_size, min_free=1024)
        cache = CacheServer(
            store, Metrics(), extra_headers={}, origin_timeout=5, dfdaemon=None, keep=True
        )
        await cache.start()
        try:
            add_entry(store, 1000)
            held = store.reserve(500)
            gatherer = StatusGatherer(lambda: current, cache, recent, credentials, lambda: False)
            status = await gatherer.snapshot()
            assert held is not None
            store.release(held)
        finally:
            await cache.stop()
        assert (status.version, status.ready, status.downloads) == (shim.__version__, False, ())
        assert [r.url for r in status.recent] == ["http://h/models/second", "http://h/models/first"]
        assert (status.cache.used, status.cache.reserved, status.cache.entries) == (1000, 500, 1)
        assert (status.cache.max_size, status.cache.min_free) == (1024 * 1024, 1024)
        assert status.cache.disk_free > 0
        assert [(b.alias, b.credentials) for b in status.buckets] == [
            ("models", "loaded"),
            ("keyless", "not loaded"),
            ("pending", "checking"),
        ]
        assert status.dfdaemon is not None
        assert (status.dfdaemon.address, status.dfdaemon.reachable) == (f"127.0.0.1:{port}", False)

    asyncio.run(main())


def test_the_dfdaemon_probed_is_the_one_configured_now(tmp_path: Path) -> None:
    """A new config (a reload) with another dfdaemon, or none, is what the page shows."""
    ports = free_port(), free_port()
    first, second = settings(tmp_path, ports[0]), settings(tmp_path, ports[1])
    current = [first]

    async def main() -> None:
        store = CacheStore(first.cache.dir, first.cache.max_size)
        cache = CacheServer(
            store, Metrics(), extra_headers={}, origin_timeout=5, dfdaemon=None, keep=True
        )
        await cache.start()
        try:
            gatherer = StatusGatherer(lambda: current[0], cache, RecentRequests(), {}, lambda: True)
            shown = []
            for settings_now in (first, second, second.model_copy(update={"dfdaemon": None})):
                current[0] = settings_now
                dfdaemon = (await gatherer.snapshot()).dfdaemon
                shown.append(dfdaemon.address if dfdaemon else None)
        finally:
            await cache.stop()
        assert shown == [f"127.0.0.1:{ports[0]}", f"127.0.0.1:{ports[1]}", None]

    asyncio.run(main())
