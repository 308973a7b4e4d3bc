"""The cache server in-process, against a real origin (s3rver behind a relay): single flight,
complete-or-nothing, readers that leave, pinning, and a full disk (a small tmpfs).

Each test waits for states (requests joined, bytes arrived), never for time: the relay holds
the origin's answer (``stall_after_bytes``) until the test calls ``resume()``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable
from pathlib import Path

import aiohttp
import pytest

from shim.cache.server import CACHE_STATUS_HEADER, CacheServer, Ticket
from shim.cache.store import CacheStore
from shim.cache.usage import USAGE_FILE, read_usage
from shim.dfdaemon import DragonflyOptions
from shim.identity import identify
from shim.metrics import Metrics
from shim.upstream import DfdaemonRoute
from tests.cache.conftest import SMALL_DISK
from tests.cache.origin import (
    FILTERED,
    Origin,
    body_or_error,
    get,
    run_with_cache_server,
    sample,
    until,
)

pytestmark = pytest.mark.origin

MiB = 1024 * 1024
KEY = "models/resnet.mar"


async def fetch(
    session: aiohttp.ClientSession,
    server: CacheServer,
    ticket: Ticket,
    headers: dict[str, str] | None = None,
) -> tuple[int, str, bytes | str]:
    """Status, X-Shim-Cache and body (or what cut it short) of one whole request."""
    async with await get(session, server, ticket, headers) as response:
        return response.status, response.headers[CACHE_STATUS_HEADER], await body_or_error(response)


async def concurrently(
    origin: Origin,
    metrics: Metrics,
    requests: list[Awaitable[tuple[int, str, bytes | str]]],
) -> list[tuple[int, str, bytes | str]]:
    """Run ``requests`` while the origin holds its answer, release it once all of them have
    joined the fill, and return their results."""
    origin.relay.stall_after_bytes = 0
    misses = sample(metrics, "shim_cache_misses_total")
    tasks = [asyncio.ensure_future(request) for request in requests]
    await until(
        lambda: sample(metrics, "shim_cache_misses_total") == misses + len(tasks),
        "every request joined the fill",
    )
    origin.relay.resume()
    return await asyncio.gather(*tasks)


def leftovers(root: Path) -> list[Path]:
    """Files in the store's tmp/ and objects/."""
    return [path for path in root.rglob("*") if path.is_file()]


# -- single flight ----------------------------------------------------------------------------


def test_concurrent_requests_share_one_origin_fetch(origin: Origin, tmp_path: Path) -> None:
    body = os.urandom(3 * MiB)
    origin.put(KEY, body)

    async def scenario(
        server: CacheServer, metrics: Metrics, session: aiohttp.ClientSession
    ) -> None:
        results = await concurrently(
            origin, metrics, [fetch(session, server, origin.ticket(KEY)) for _ in range(8)]
        )
        assert results == [(200, "MISS", body)] * 8
        assert origin.gets() == 1
        assert sample(metrics, "shim_origin_fetches_total") == 1
        assert await fetch(session, server, origin.ticket(KEY)) == (200, "HIT", body)
        assert origin.gets() == 1

    run_with_cache_server(CacheStore(tmp_path, 100 * MiB), scenario)


def test_hits_are_counted_per_entry_and_written_when_the_server_stops(
    origin: Origin, tmp_path: Path
) -> None:
    body = os.urandom(MiB)
    origin.put(KEY, body)
    store = CacheStore(tmp_path, 100 * MiB)
    key = origin.ticket(KEY).identity.task_id

    async def scenario(
        server: CacheServer, metrics: Metrics, session: aiohttp.ClientSession
    ) -> None:
        assert await fetch(session, server, origin.ticket(KEY)) == (200, "MISS", body)
        for _ in range(2):
            assert await fetch(session, server, origin.ticket(KEY)) == (200, "HIT", body)
        usage = store.usage.get(key)
        assert usage is not None and usage.hits == 2

    run_with_cache_server(store, scenario)
    assert read_usage(tmp_path / USAGE_FILE)[key].hits == 2


def test_an_entry_whose_file_is_gone_is_fetched_again(origin: Origin, tmp_path: Path) -> None:
    body = os.urandom(MiB)
    origin.put(KEY, body)
    store = CacheStore(tmp_path, 100 * MiB)

    async def scenario(
        server: CacheServer, metrics: Metrics, session: aiohttp.ClientSession
    ) -> None:
        assert await fetch(session, server, origin.ticket(KEY)) == (200, "MISS", body)
        data = [path for path in (tmp_path / "objects").rglob("*") if path.is_file()]
        data = [path for path in data if not path.suffix]  # not the entry's metadata
        assert len(data) == 1
        data[0].unlink()  # as when an operator clears the cache's files under it
        assert await fetch(session, server, origin.ticket(KEY)) == (200, "MISS", body)
        assert sample(metrics, "shim_origin_fetches_total") == 2
        assert await fetch(session, server, origin.ticket(KEY)) == (200, "HIT", body)

    run_with_cache_server(store, scenario)


# -- complete or nothing ----------------------------------------------------------------------


def test_a_flipped_byte_fails_every_reader_and_leaves_nothing(
    origin: Origin, tmp_path: Path
) -> None:
    body = os.urandom(3 * MiB)
    origin.put(KEY, body)

    async def scenario(
        server: CacheServer, metrics: Metrics, session: aiohttp.ClientSession
    ) -> None:
        origin.relay.corrupt_at_byte = await origin.head_length(KEY) + len(body) // 2
        requests = [fetch(session, server, origin.ticket(KEY)) for _ in range(3)]
        # A range of all of it is the whole object: its last byte waits for the check too.
        whole_range = fetch(session, server, origin.ticket(KEY), {"Range": "bytes=0-"})
        results = await concurrently(origin, metrics, [*requests, whole_range])
        for status, _, got in results:
            assert status in (200, 206)  # the headers went out before the body was known bad
            assert isinstance(got, str), "a reader got a whole, corrupted body"
            assert "ClientPayloadError" in got
        assert len(server.store) == 0
        assert leftovers(tmp_path) == []
        assert sample(metrics, "shim_errors_total", kind="origin") == 1

        origin.relay.corrupt_at_byte = None
        assert await fetch(session, server, origin.ticket(KEY)) == (200, "MISS", body)
        assert await fetch(session, server, origin.ticket(KEY)) == (200, "HIT", body)

    run_with_cache_server(CacheStore(tmp_path, 100 * MiB), scenario)


def test_a_version_verified_before_is_checked_against_shims_digest_of_it(
    origin: Origin, tmp_path: Path
) -> None:
    """Its second copy is checked with BLAKE3 instead of the ETag's MD5, as strictly: a copy
    with a flipped byte still fails, and nothing of it is kept."""
    body = os.urandom(3 * MiB)
    origin.put(KEY, body)

    async def scenario(
        server: CacheServer, metrics: Metrics, session: aiohttp.ClientSession
    ) -> None:
        def checks(kind: str, result: str) -> float:
            return sample(metrics, "shim_integrity_total", kind=kind, result=result)

        ticket = origin.ticket(KEY)
        assert await fetch(session, server, ticket) == (200, "MISS", body)
        assert checks("md5", "verified") == 1
        assert server.store.remove(ticket.identity.task_id)  # fetched again next time
        assert await fetch(session, server, origin.ticket(KEY)) == (200, "MISS", body)
        assert (checks("md5", "verified"), checks("blake3", "verified")) == (1, 1)

        assert server.store.remove(ticket.identity.task_id)
        # Offsets count per connection: both fetches came on one, which the next reuses.
        assert origin.relay.connections == 1
        relayed = origin.relay.bytes_down
        origin.relay.corrupt_at_byte = relayed + await origin.head_length(KEY) + len(body) // 2
        status, _, got = await fetch(session, server, origin.ticket(KEY))
        assert status == 200 and isinstance(got, str), "a reader got a corrupted body"
        assert checks("blake3", "mismatch") == 1
        assert len(server.store) == 0

    run_with_cache_server(CacheStore(tmp_path, 100 * MiB), scenario)


def test_a_body_cut_short_fails_every_reader_and_leaves_nothing(
    origin: Origin, tmp_path: Path
) -> None:
    body = os.urandom(3 * MiB)
    origin.put(KEY, body)

    async def scenario(
        server: CacheServer, metrics: Metrics, session: aiohttp.ClientSession
    ) -> None:
        origin.relay.cut_after_bytes = await origin.head_length(KEY) + len(body) // 2
        results = await concurrently(
            origin, metrics, [fetch(session, server, origin.ticket(KEY)) for _ in range(4)]
        )
        for status, _, got in results:
            assert status == 200
            assert isinstance(got, str)
            assert "ClientPayloadError" in got
        assert len(server.store) == 0
        assert leftovers(tmp_path) == []

    run_with_cache_server(CacheStore(tmp_path, 100 * MiB), scenario)


def _chunked_short_of_its_length(head: bytes) -> bytes:
    """A 200 that promises 1000 bytes in Content-Length but frames 500 with chunked
    encoding, which a lenient HTTP/1.1 parser (h11, under the dfdaemon route) ends cleanly."""
    return (
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n1f4\r\n" + b"x" * 500 + b"\r\n0\r\n\r\n"
    )


def test_a_body_shorter_than_its_content_length_is_never_kept(
    origin: Origin, tmp_path: Path
) -> None:
    """Both HTTP clients refuse a body that ends before Content-Length on their own, except
    h11 when Transfer-Encoding frames it: the fill's own length check is the guard then."""
    origin.relay.answer = _chunked_short_of_its_length
    dfdaemon = DfdaemonRoute(
        origin.relay.address, DragonflyOptions(), fallback=False, connect_timeout=5
    )

    async def scenario(
        server: CacheServer, metrics: Metrics, session: aiohttp.ClientSession
    ) -> None:
        for _ in range(2):
            status, cache, got = await fetch(session, server, origin.ticket(KEY))
            assert (status, cache) == (200, "MISS")
            assert isinstance(got, str)
            assert "ClientPayloadError" in got
        assert len(server.store) == 0
        assert leftovers(tmp_path) == []

    run_with_cache_server(CacheStore(tmp_path, 100 * MiB), scenario, dfdaemon=dfdaemon)


def test_an_origin_error_says_which_upstream_answered(origin: Origin, tmp_path: Path) -> None:
    """A failure carries the route of the upstream that answered it, as a success does. (A URL
    naming a version goes to the dfdaemon with no direct check of the origin first; this one's
    versionId is not signed, so the origin refuses it.)"""
    dfdaemon = DfdaemonRoute(
        origin.relay.address, DragonflyOptions(), fallback=False, connect_timeout=5
    )
    signed = origin.ticket(KEY).signed_url + "&versionId=v1"
    ticket = Ticket("GET", signed, identify(signed, FILTERED), FILTERED)

    async def scenario(
        server: CacheServer, metrics: Metrics, session: aiohttp.ClientSession
    ) -> None:
        response = await get(session, server, ticket)
        assert response.status == 403
        assert response.headers["X-Shim-Route"] == "dfdaemon"
        assert response.headers["X-Shim-Error"] == "origin_status"

    run_with_cache_server(CacheStore(tmp_path, 100 * MiB), scenario, dfdaemon=dfdaemon)


# -- readers ------------------------------------------------------------------------------------


def test_a_reader_that_leaves_does_not_cancel_the_fill(origin: Origin, tmp_path: Path) -> None:
    body = os.urandom(3 * MiB)
    origin.put(KEY, body)
    store = CacheStore(tmp_path, 100 * MiB)

    async def scenario(
        server: CacheServer, metrics: Metrics, session: aiohttp.ClientSession
    ) -> None:
        origin.relay.stall_after_bytes = await origin.head_length(KEY) + MiB
        response = await get(session, server, origin.ticket(KEY))
        assert (await response.content.readexactly(MiB // 2)) == body[: MiB // 2]
        response.close()  # the only reader goes away mid-body
        origin.relay.resume()
        await until(lambda: store.lookup(server_key(origin)) is not None, "the entry is kept")
        assert await fetch(session, server, origin.ticket(KEY)) == (200, "HIT", body)
        assert sample(metrics, "shim_origin_fetches_total") == 1

    run_with_cache_server(store, scenario)


def server_key(origin: Origin) -> str:
    return origin.ticket(KEY).identity.task_id


def test_an_entry_being_read_is_never_evicted(origin: Origin, tmp_path: Path) -> None:
    """A holds the store's room while a client reads it slowly; B, which needs A's room,
    is served without being kept until A's reader is done."""
    a_body, b_body = os.urandom(16 * MiB), os.urandom(8 * MiB)
    origin.put("a.mar", a_body)
    origin.put("b.mar", b_body)
    store = CacheStore(tmp_path, 20 * MiB)
    a_key = origin.ticket("a.mar").identity.task_id
    b_key = origin.ticket("b.mar").identity.task_id

    async def scenario(
        server: CacheServer, metrics: Metrics, session: aiohttp.ClientSession
    ) -> None:
        assert await fetch(session, server, origin.ticket("a.mar")) == (200, "MISS", a_body)
        sent_before = sample(metrics, "shim_response_bytes_total")
        slow = await get(session, server, origin.ticket("a.mar"))  # reads nothing for now
        assert slow.headers[CACHE_STATUS_HEADER] == "HIT"

        assert await fetch(session, server, origin.ticket("b.mar")) == (200, "MISS", b_body)
        sent_to_slow = sample(metrics, "shim_response_bytes_total") - sent_before - len(b_body)
        assert sent_to_slow < len(a_body), "the slow reader was not held mid-body"
        assert store.lookup(a_key) is not None
        assert store.lookup(b_key) is None  # no room: served, not kept

        assert await slow.read() == a_body
        slow.close()
        assert await fetch(session, server, origin.ticket("b.mar")) == (200, "MISS", b_body)
        assert store.lookup(b_key) is not None  # A was no longer read: it made room
        assert store.lookup(a_key) is None

    run_with_cache_server(store, scenario)


# -- a full disk --------------------------------------------------------------------------------


def test_an_object_larger_than_the_disk_streams_to_every_waiting_reader(
    origin: Origin, small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    body = os.urandom(SMALL_DISK + 4 * MiB)
    origin.put(KEY, body)
    store = CacheStore(small_disk, 1024 * MiB, min_free=MiB)

    async def scenario(
        server: CacheServer, metrics: Metrics, session: aiohttp.ClientSession
    ) -> None:
        assert any("cache.max_size (1.0 GiB) is more than" in m for m in caplog.messages)
        results = await concurrently(
            origin, metrics, [fetch(session, server, origin.ticket(KEY)) for _ in range(3)]
        )
        assert results == [(200, "MISS", body)] * 3
        assert origin.gets() == 1
        assert len(store) == 0
        assert leftovers(small_disk) == []
        # A later request starts a fetch of its own.
        assert await fetch(session, server, origin.ticket(KEY)) == (200, "MISS", body)
        assert sample(metrics, "shim_origin_fetches_total") == 2

    with caplog.at_level(logging.WARNING, logger="shim.cache"):
        run_with_cache_server(store, scenario)


def test_a_cap_larger_than_the_disk_keeps_what_fits_and_evicts_for_the_rest(
    origin: Origin, small_disk: Path
) -> None:
    bodies = {f"{n}.mar": os.urandom(5 * MiB // 2) for n in range(4)}
    for key, body in bodies.items():
        origin.put(key, body)
    store = CacheStore(small_disk, 1024 * MiB, min_free=MiB)

    async def scenario(
        server: CacheServer, metrics: Metrics, session: aiohttp.ClientSession
    ) -> None:
        for key, body in bodies.items():
            assert await fetch(session, server, origin.ticket(key)) == (200, "MISS", body)
            assert store.lookup(origin.ticket(key).identity.task_id) is not None
            assert store.disk_free() >= MiB
        assert len(store) == 2  # two fit beside min_free; older ones made room
        for key in list(bodies)[-2:]:
            assert await fetch(session, server, origin.ticket(key)) == (200, "HIT", bodies[key])

    run_with_cache_server(store, scenario)


def _fill_the_disk(path: Path, store: CacheStore) -> None:
    path.write_bytes(b"\0" * store.disk_free())
    assert store.disk_free() == 0


def test_a_disk_filled_under_a_fill_evicts_entries_and_the_fill_goes_on(
    origin: Origin, small_disk: Path
) -> None:
    old, new = os.urandom(4 * MiB), os.urandom(3 * MiB)
    origin.put("old.mar", old)
    origin.put(KEY, new)

    async def keep_old(
        server: CacheServer, metrics: Metrics, session: aiohttp.ClientSession
    ) -> None:
        assert await fetch(session, server, origin.ticket("old.mar")) == (200, "MISS", old)

    run_with_cache_server(CacheStore(small_disk, 1024 * MiB), keep_old)
    # A fresh cache server: the relay's offsets count from a connection's start, and the
    # first one's origin connection could be reused.
    store = CacheStore(small_disk, 1024 * MiB)

    async def scenario(
        server: CacheServer, metrics: Metrics, session: aiohttp.ClientSession
    ) -> None:
        assert store.lookup(origin.ticket("old.mar").identity.task_id) is not None
        origin.relay.stall_after_bytes = await origin.head_length(KEY) + MiB
        async with await get(session, server, origin.ticket(KEY)) as response:
            _fill_the_disk(small_disk / "ballast", store)  # something else takes the disk
            origin.relay.resume()
            assert await body_or_error(response) == new
        assert store.lookup(server_key(origin)) is not None
        assert store.lookup(origin.ticket("old.mar").identity.task_id) is None

    run_with_cache_server(store, scenario)


def test_a_full_disk_with_nothing_to_evict_fails_the_transfer_and_keeps_nothing(
    origin: Origin, small_disk: Path
) -> None:
    body = os.urandom(3 * MiB)
    origin.put(KEY, body)
    store = CacheStore(small_disk / "cache", 1024 * MiB)

    async def scenario(
        server: CacheServer, metrics: Metrics, session: aiohttp.ClientSession
    ) -> None:
        origin.relay.stall_after_bytes = await origin.head_length(KEY) + MiB
        ballast = small_disk / "ballast"
        async with await get(session, server, origin.ticket(KEY)) as response:
            assert response.status == 200
            _fill_the_disk(ballast, store)
            origin.relay.resume()
            got = await body_or_error(response)
        assert isinstance(got, str)
        assert "ClientPayloadError" in got
        assert len(store) == 0
        assert leftovers(small_disk / "cache") == []
        assert sample(metrics, "shim_errors_total", kind="disk") == 1

        ballast.unlink()  # room again: the next request is served and kept
        assert await fetch(session, server, origin.ticket(KEY)) == (200, "MISS", body)
        assert await fetch(session, server, origin.ticket(KEY)) == (200, "HIT", body)

    run_with_cache_server(store, scenario)
