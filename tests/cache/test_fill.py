"""FillRunner in-process against a real origin (s3rver behind a relay): the withheld last
byte, owner-only temporary files, and fills that stream through memory when the disk has no
room (forced here with a min_free larger than any disk)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import blake3
import pytest

from shim.cache.fill import (
    MEMORY_WINDOW,
    READ_SIZE,
    FileSpan,
    Fill,
    FillProgress,
    FillReader,
    FillRunner,
    ReadersGone,
    TransferAborted,
    read_span,
)
from shim.cache.server import Ticket
from shim.cache.store import CacheStore
from shim.metrics import Metrics
from shim.upstream import Upstream
from tests.cache.origin import Origin, sample, until
from tests.support.relay import raw_response

pytestmark = pytest.mark.origin

KiB = 1024
MiB = 1024 * KiB
KEY = "models/resnet.mar"
NO_ROOM = 1 << 60  # as min_free: no disk has room for even a temporary file


def run(
    store: CacheStore,
    scenario: Callable[[FillRunner, Metrics], Awaitable[None]],
    *,
    keep: bool = True,
) -> None:
    async def main() -> None:
        metrics = Metrics()
        store.open()
        async with fill_runner(store, metrics, keep=keep) as runner:
            await scenario(runner, metrics)

    asyncio.run(main())


@contextlib.asynccontextmanager
async def fill_runner(
    store: CacheStore, metrics: Metrics, *, keep: bool
) -> AsyncIterator[FillRunner]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        upstream = Upstream(session, metrics, extra_headers={}, read_timeout=20, dfdaemon=None)
        runner = FillRunner(store, metrics, upstream, keep=keep)
        try:
            yield runner
        finally:
            await runner.close()


def start(runner: FillRunner, ticket: Ticket, sign_again: Callable[[], str] | None = None) -> Fill:
    identity = ticket.identity
    return runner.get_or_start(
        identity.task_id, identity.url, ticket.signed_url, ticket.filtered, sign_again=sign_again
    )


async def next_bytes(reader: FillReader, position: int, stop: int | None) -> bytes | memoryview:
    """The next readable bytes from ``position``, from the fill's file or its window."""
    span = await reader.span(position, stop, READ_SIZE)
    return await read_span(span) if isinstance(span, FileSpan) else span


async def read(reader: FillReader, start: int = 0, stop: int | None = None) -> bytes:
    """From ``start`` to ``stop`` (None: the end) of the fill, as its bytes become readable."""
    out = bytearray()
    while stop is None or start + len(out) < stop:
        data = await next_bytes(reader, start + len(out), stop)
        if not data:
            break
        out += data
    return bytes(out)


async def read_some(reader: FillReader, count: int) -> bytes:
    """At least the first ``count`` bytes, read as the whole body's reader."""
    out = bytearray()
    while len(out) < count:
        out += await next_bytes(reader, len(out), None)
    return bytes(out)


def files(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file()]


def test_the_last_byte_waits_until_the_body_is_verified(origin: Origin, tmp_path: Path) -> None:
    body = os.urandom(2 * MiB)
    origin.put(KEY, body)
    store = CacheStore(tmp_path, 100 * MiB)

    async def scenario(runner: FillRunner, metrics: Metrics) -> None:
        origin.relay.stall_after_bytes = await origin.head_length(KEY) + len(body) - 1
        fill = start(runner, origin.ticket(KEY))
        with fill.reader() as reader:
            while fill.written < len(body) - 1:  # every byte but the last has arrived
                await fill.wait_changed()
            assert not fill.finished
            assert fill.readable_end(0) == len(body) - 1
            # A range that ends before the object's last byte is sent whole meanwhile.
            assert await read(reader, MiB, len(body) - 1) == body[MiB:-1]
            first = await read_some(reader, len(body) - 1)
            origin.relay.resume()
            assert first + await read(reader, len(first)) == body
        assert fill.finished
        assert store.lookup(fill.key) is not None

    run(store, scenario)


def test_a_kept_body_keeps_its_blake3_for_cache_verify(origin: Origin, tmp_path: Path) -> None:
    body = os.urandom(MiB)
    origin.put(KEY, body)
    store = CacheStore(tmp_path, 100 * MiB)

    async def scenario(runner: FillRunner, metrics: Metrics) -> None:
        fill = start(runner, origin.ticket(KEY))
        await fill.wait_ended()
        meta = store.lookup(fill.key)
        assert meta is not None and meta.blake3 == blake3.blake3(body).hexdigest()

    run(store, scenario)


def test_a_fill_that_is_not_kept_streams_through_memory_and_writes_nothing(
    origin: Origin, tmp_path: Path
) -> None:
    """Behind a dfdaemon (keep off) a body is never written to disk: the readers waiting for
    it share a window in memory; a later request fetches it again."""
    body = os.urandom(2 * MiB)
    origin.put(KEY, body)
    store = CacheStore(tmp_path, 100 * MiB)

    async def scenario(runner: FillRunner, metrics: Metrics) -> None:
        origin.relay.stall_after_bytes = await origin.head_length(KEY) + MiB
        fill = start(runner, origin.ticket(KEY))
        with fill.reader() as first, fill.reader() as second:
            await fill.wait_past(0)
            assert fill.in_memory and fill.reservation is None
            assert files(tmp_path) == []
            origin.relay.resume()
            assert list(await asyncio.gather(read(first), read(second))) == [body, body]
        assert files(tmp_path) == []
        assert len(store) == 0
        again = start(runner, origin.ticket(KEY))
        assert again is not fill
        with again.reader() as reader:
            assert await read(reader) == body
        assert sample(metrics, "shim_origin_fetches_total") == 2

    run(store, scenario, keep=False)


def test_without_room_on_disk_readers_share_a_bounded_window(
    origin: Origin, tmp_path: Path
) -> None:
    body = os.urandom(3 * MEMORY_WINDOW)
    origin.put(KEY, body)
    store = CacheStore(tmp_path, 100 * MiB, min_free=NO_ROOM)

    async def scenario(runner: FillRunner, metrics: Metrics) -> None:
        fill = start(runner, origin.ticket(KEY))
        with fill.reader() as fast, fill.reader() as idle:
            await fill.headers_ready.wait()
            assert fill.in_memory
            ahead = await read_some(fast, MEMORY_WINDOW - 1)
            # The origin waits for the idle reader: the window is at most full plus a chunk.
            assert fill.written <= MEMORY_WINDOW + MiB
            assert files(tmp_path) == []
            idle_body, fast_rest = await asyncio.gather(read(idle), read(fast, len(ahead)))
        assert idle_body == ahead + fast_rest == body
        assert len(store) == 0
        assert files(tmp_path) == []

    run(store, scenario)


def test_a_range_ahead_of_a_full_window_is_served(origin: Origin, tmp_path: Path) -> None:
    """A range reader that has not read yet holds the window at its start; the fetch fills the
    window and waits. Moving on to the range's start must wake the fetch, or both wait for
    each other for ever (a range of a local dfdaemon hit hung so)."""
    body = os.urandom(3 * MEMORY_WINDOW)
    origin.put(KEY, body)
    store = CacheStore(tmp_path, 100 * MiB)
    start_at = MEMORY_WINDOW + MiB + 7  # beyond the first full window
    stop = start_at + 1000

    async def scenario(runner: FillRunner, metrics: Metrics) -> None:
        fill = start(runner, origin.ticket(KEY))
        with fill.reader() as reader:
            await fill.headers_ready.wait()
            assert fill.in_memory
            while fill.written < MEMORY_WINDOW:  # the fetch stops once the window is full
                await fill.wait_past(fill.written)
            parked = fill.written
            await asyncio.sleep(0.5)  # time for the fetch to come to its wait for room
            assert fill.written == parked
            assert await asyncio.wait_for(read(reader, start_at, stop), 20) == body[start_at:stop]

    run(store, scenario, keep=False)


def test_without_room_on_disk_the_fetch_stops_when_every_reader_left(
    origin: Origin, tmp_path: Path
) -> None:
    body = os.urandom(3 * MEMORY_WINDOW)
    origin.put(KEY, body)
    store = CacheStore(tmp_path, 100 * MiB, min_free=NO_ROOM)

    async def scenario(runner: FillRunner, metrics: Metrics) -> None:
        fill = start(runner, origin.ticket(KEY))
        with fill.reader() as reader:
            await fill.headers_ready.wait()
            assert fill.in_memory
            assert (await read_some(reader, MiB))[:MiB] == body[:MiB]
        await fill.wait_past(len(body))  # returns once the fill ended
        assert isinstance(fill.error, ReadersGone)
        assert fill.written < len(body)
        assert sample(metrics, "shim_errors_total", kind="origin") == 0

    run(store, scenario)


def test_without_room_on_disk_a_later_request_fetches_on_its_own(
    origin: Origin, tmp_path: Path
) -> None:
    body = os.urandom(2 * MiB)
    origin.put(KEY, body)
    store = CacheStore(tmp_path, 100 * MiB, min_free=NO_ROOM)

    async def scenario(runner: FillRunner, metrics: Metrics) -> None:
        fill = start(runner, origin.ticket(KEY))
        with fill.reader() as first:
            await fill.headers_ready.wait()
            assert fill.in_memory
            later = start(runner, origin.ticket(KEY))
            assert later is not fill
            with later.reader() as second:
                assert list(await asyncio.gather(read(first), read(second))) == [body, body]
        assert sample(metrics, "shim_origin_fetches_total") == 2
        assert len(store) == 0

    run(store, scenario)


def test_a_fill_in_flight_holds_the_disk_it_has_still_to_write(
    origin: Origin, tmp_path: Path
) -> None:
    body = os.urandom(2 * MiB)
    origin.put(KEY, body)
    store = CacheStore(tmp_path, 100 * MiB)

    async def scenario(runner: FillRunner, metrics: Metrics) -> None:
        origin.relay.stall_after_bytes = await origin.head_length(KEY) + MiB
        fill = start(runner, origin.ticket(KEY))
        with fill.reader() as reader:
            async with asyncio.timeout(20):
                await fill.wait_past(MiB // 2)  # half a MiB arrived, in several chunks
            reservation = fill.reservation
            assert reservation is not None
            assert MiB // 2 < fill.written < 2 * MiB
            assert (reservation.size, reservation.written) == (2 * MiB, fill.written)
            assert store.reserved == 2 * MiB
            # The descriptor readers share is not inherited by any process shim starts.
            assert fill.fd is not None
            assert fcntl.fcntl(fill.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
            origin.relay.resume()
            assert await read(reader) == body
        assert store.reserved == 0  # the reservation became the entry
        assert store.used == 2 * MiB

    run(store, scenario)


def test_without_room_on_disk_the_slowest_reader_leaving_lets_the_others_go_on(
    origin: Origin, tmp_path: Path
) -> None:
    body = os.urandom(3 * MEMORY_WINDOW)
    origin.put(KEY, body)
    store = CacheStore(tmp_path, 100 * MiB, min_free=NO_ROOM)

    async def scenario(runner: FillRunner, metrics: Metrics) -> None:
        fill = start(runner, origin.ticket(KEY))
        with fill.reader() as fast:
            idle = fill.reader()
            await fill.headers_ready.wait()
            assert fill.in_memory
            ahead = await read_some(fast, MEMORY_WINDOW - 1)  # the window is full: idle holds it
            idle.close()  # the slowest reader goes: the window moves on without it
            async with asyncio.timeout(20):
                assert ahead + await read(fast, len(ahead)) == body
        assert fill.finished

    run(store, scenario)


def test_chunks_as_large_as_the_window_stream_through_memory(tmp_path: Path) -> None:
    """A dfdaemon sends 4 MiB at a time, the window's size: the reader is never past the
    chunk it reads before the next one arrives (its last byte waits), so a window that
    counted whole chunks would wait for room forever."""
    chunks = [os.urandom(MEMORY_WINDOW) for _ in range(3)]

    async def main() -> bytes:
        fill = Fill("k" * 64, "http://bucket/k", tmp_path / "unused")
        fill.stream_through_memory()
        with fill.reader() as reader:

            async def fetch() -> None:
                for chunk in chunks:
                    await fill.hold(chunk)
                    fill.advance(len(chunk))
                fill.finish()

            feeding = asyncio.create_task(fetch())
            body = bytearray()
            async with asyncio.timeout(10):
                while data := await next_bytes(reader, len(body), None):
                    body += data
                await feeding
        return bytes(body)

    assert asyncio.run(main()) == b"".join(chunks)


@pytest.mark.parametrize("min_free", [0, NO_ROOM], ids=["kept", "through memory"])
def test_in_flight_shows_each_running_fill_and_how_far_it_is(
    origin: Origin, tmp_path: Path, min_free: int
) -> None:
    """For the status page: kept or streaming through memory (which a later request does not
    join), a fill is listed from its start to its end."""
    body = os.urandom(2 * MiB)
    origin.put(KEY, body)
    store = CacheStore(tmp_path, 100 * MiB, min_free=min_free)

    async def scenario(runner: FillRunner, metrics: Metrics) -> None:
        origin.relay.stall_after_bytes = await origin.head_length(KEY) + MiB
        ticket = origin.ticket(KEY)
        fill = start(runner, ticket)
        with fill.reader():
            await until(lambda: fill.written == MiB, "a MiB arrived")
            (progress,) = runner.in_flight()
            assert progress.url == ticket.identity.url
            assert "Signature" not in progress.url and "Credential" not in progress.url
            assert (progress.task_id, progress.route, progress.answered) == (
                ticket.identity.task_id,
                "direct",
                True,
            )
            assert (progress.received, progress.size, progress.readers) == (MiB, 2 * MiB, 1)
            assert progress.kept is (min_free == 0)
            assert progress.seconds > 0 and progress.rate == MiB / progress.seconds
            origin.relay.resume()
            await fill.wait_ended()
        assert runner.in_flight() == []

    run(store, scenario)


def test_a_fills_progress_never_shows_a_signature(tmp_path: Path) -> None:
    # A parameter the bucket's filter list missed still carries no secret onto the page.
    fill = Fill(KEY, "https://h/b/k?x=1&X-Goog-Signature=c2VjcmV0&Signature=s", tmp_path / "t")
    progress = FillProgress.of(fill, fill.started + 2)
    assert progress.url == "https://h/b/k?x=1&X-Goog-Signature=REDACTED&Signature=REDACTED"
    assert (progress.seconds, progress.rate, progress.answered) == (2, 0, False)


@contextlib.asynccontextmanager
async def stalled_at_a_mib(
    origin: Origin, runner: FillRunner, sign_again: Callable[[], str] | None = None
) -> AsyncIterator[tuple[Fill, FillReader, FillReader]]:
    """A fill of KEY whose every origin answer (the whole object's, the ranged ones) stalls
    after its first MiB until ``resume()``, and two readers of it (one for all of it, one for
    a range), once that MiB arrived. The relay's counters start with the fill."""
    origin.relay.stall_after_bytes = await origin.head_length(KEY) + MiB
    origin.relay.reset_counters()
    fill = start(runner, origin.ticket(KEY), sign_again)
    with fill.reader() as whole, fill.reader() as ranged:
        while fill.written < MiB:
            await fill.wait_changed()
        yield fill, whole, ranged


def test_a_range_far_ahead_of_the_fill_gets_a_request_of_its_own(
    origin: Origin, tmp_path: Path
) -> None:
    """A reader deep into a cold object is not held until the body gets there: a ranged
    request of its own brings its bytes while the first request is stalled, and the origin
    still sends each byte once; the whole is checked and kept."""
    body = os.urandom(8 * MiB)
    origin.put(KEY, body)
    store = CacheStore(tmp_path, 100 * MiB)
    wanted = (4 * MiB, 4 * MiB + MiB // 2)

    async def scenario(runner: FillRunner, metrics: Metrics) -> None:
        signatures = []

        def sign_again() -> str:  # ranged requests are signed anew, not with the first URL
            signatures.append(origin.ticket(KEY).signed_url)
            return signatures[-1]

        async with stalled_at_a_mib(origin, runner, sign_again) as (fill, whole, ranged):
            assert await read(ranged, *wanted) == body[slice(*wanted)]
            assert not fill.finished and fill.written < 3 * MiB
            # At an origin's pace (not loopback's), so that the first request, cut short where
            # the ranged one began, had little more than that on its way.
            origin.relay.rate_limit_bytes_per_s = 32 * MiB
            origin.relay.resume()
            assert await read(whole) == body
        ranges = [head for head in origin.relay.request_heads if b"Range:" in head]
        assert any(f"bytes={wanted[0]}-{wanted[1] - 1}".encode() in head for head in ranges)
        heads = 2 * KiB * len(origin.relay.request_heads)
        assert len(body) <= origin.relay.bytes_down <= len(body) + heads + MiB // 2
        meta = store.lookup(fill.key)
        assert meta is not None and meta.blake3 == blake3.blake3(body).hexdigest()
        assert sample(metrics, "shim_integrity_total", result="verified", kind="md5") == 1
        assert sample(metrics, "shim_origin_fetches_total") == 1
        # (The relay sees the first request of each connection only: a kept-alive one is reused.)
        assert sample(metrics, "shim_origin_range_requests_total") >= len(ranges) >= 1
        assert len(signatures) == sample(metrics, "shim_origin_range_requests_total")

    run(store, scenario)


def test_an_object_that_changes_during_a_fill_fails_it(origin: Origin, tmp_path: Path) -> None:
    """A ranged request answered with another version's bytes (another ETag) fails the fill:
    two versions are never mixed into one body, nothing is kept."""
    body = os.urandom(8 * MiB)
    origin.put(KEY, body)
    store = CacheStore(tmp_path, 100 * MiB)

    async def scenario(runner: FillRunner, metrics: Metrics) -> None:
        async with stalled_at_a_mib(origin, runner) as (_, whole, ranged):
            await asyncio.to_thread(origin.put, KEY, os.urandom(8 * MiB))
            with pytest.raises(TransferAborted, match="changed during the fill"):
                await read(ranged, 6 * MiB, 7 * MiB)
            origin.relay.resume()
            with pytest.raises(TransferAborted):
                await read(whole)
        assert len(store) == 0
        assert sample(metrics, "shim_errors_total", kind="origin") == 1

    run(store, scenario)


def test_a_range_the_store_answers_503_is_sent_again(origin: Origin, tmp_path: Path) -> None:
    """A store throttling parallel reads (S3's 503 SlowDown) fails one ranged request: it is
    sent again after a pause, and the fill goes on."""
    body = os.urandom(8 * MiB)
    origin.put(KEY, body)
    store = CacheStore(tmp_path, 100 * MiB)
    wanted = (4 * MiB, 4 * MiB + MiB // 2)

    def slow_down_once(head: bytes) -> bytes:
        origin.relay.answer = None  # the next connection reaches the store again
        return raw_response(503, {"Content-Type": "application/xml"}, b"<Error>SlowDown</Error>")

    async def scenario(runner: FillRunner, metrics: Metrics) -> None:
        async with stalled_at_a_mib(origin, runner) as (fill, whole, ranged):
            origin.relay.answer = slow_down_once
            assert await read(ranged, *wanted) == body[slice(*wanted)]
            origin.relay.resume()
            assert await read(whole) == body
        asked = f"Range: bytes={wanted[0]}-{wanted[1] - 1}".encode()
        assert sum(asked in head for head in origin.relay.request_heads) == 2
        assert sample(metrics, "shim_origin_retries_total", upstream="origin") == 1
        assert store.lookup(fill.key) is not None

    run(store, scenario)
