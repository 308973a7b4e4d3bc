"""Warming one object in-process, against a real origin (s3rver behind a relay): what a
prefetch reports when the object is kept, and when it streams through without being kept."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from shim.cache.server import CacheServer
from shim.cache.store import CacheStore
from shim.metrics import Metrics
from shim.prefetch.warm import NOT_KEPT, warm
from tests.cache.conftest import origin, s3rver  # noqa: F401  (fixtures)
from tests.cache.origin import Origin, run_with_cache_server

pytestmark = pytest.mark.origin

KEY = "models/resnet.mar"


def test_an_object_that_fits_is_warm_and_one_over_max_size_is_reported_not_kept(
    origin: Origin,  # noqa: F811
    tmp_path: Path,
) -> None:
    origin.put("small.bin", b"s" * 1000)
    origin.put(KEY, b"x" * 5000)
    parts: list[int] = []

    async def scenario(server: CacheServer, _: Metrics, __: aiohttp.ClientSession) -> None:
        kept = await warm(server, origin.ticket("small.bin"), parts.append)
        assert (kept.status, kept.cache, kept.size, kept.error) == (200, "MISS", 1000, None)
        assert sum(parts) == 1000
        # Over max_size: the fill gets no reservation, the body streams through, nothing stays.
        too_big = await warm(server, origin.ticket(KEY))
        assert (too_big.status, too_big.size, too_big.error) == (200, None, NOT_KEPT)
        assert server.store.lookup(origin.ticket(KEY).identity.task_id) is None

    run_with_cache_server(CacheStore(tmp_path / "cache", max_size=4000), scenario)
