"""Single-flight fills: one origin fetch per object, however many clients ask at once.

A fill that is to be kept streams the origin's body into a temporary file and tells its
readers as bytes arrive, so each client streams at the origin's pace. A reader waiting far
ahead of the body's progress (a range deep into a cold object) gets a ranged origin request
of its own beside it, each byte still fetched once (``shim.cache.fetchplan``). A fill belongs
to no client: a client that goes away does not cancel it. It becomes a cache entry only when
every byte promised by Content-Length arrived and the body matches the strongest checksum the
origin offered for it (``shim.cache.integrity``); the object's last byte waits for that check,
so no client holds a complete-looking object that then fails it. A range (short of all the
object) is sent as its bytes arrive, each ranged answer checked to be of the same object (its
ETag and length): a client that reads ranges cannot wait for a whole multi-GB object to be
checked, and streamers time a silent range out within seconds.

A fill that is not kept (behind a dfdaemon, an uncacheable answer, no room on disk) streams
through memory instead: a bounded window of the body that the readers waiting for it share,
the origin held back to the slowest of them; later requests start a fetch of their own. Such
a fill ends when its readers have all left, as there is nothing to keep.

A fill whose body a dfdaemon already holds whole in a file (a local hit it hard-linked for
shim, ``shim.dfdaemon_links``) receives nothing: it checks the file, and its readers send from
that file as far as it is checked, the last byte again waiting for the verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from shim._errors import ShimError, UpstreamError
from shim.cache.fetchplan import Claim, FetchPlan
from shim.cache.integrity import (
    Checksum,
    Mismatch,
    Outcome,
    Unchecked,
    Verified,
    Verifier,
    offered,
)
from shim.cache.store import CacheStore, DiskFull, EntryMeta, Reservation
from shim.cache.verified import VerifiedBodies
from shim.freshness import FreshnessPolicy, storable
from shim.metrics import Metrics
from shim.redact import redact_error_body, redact_url
from shim.taskid import rust_task_id
from shim.upstream import Upstream, UpstreamReply

log = logging.getLogger("shim.cache")

# Bytes per read of a fill's file, for a caller that wants the bytes.
READ_SIZE = 1 << 20
# Bytes of a body already in a file checked per step, each then readable.
_FILE_CHECK_STEP = 8 << 20
# Body bytes a fill streaming through memory holds unread (plus one chunk of the origin's).
MEMORY_WINDOW = 4 << 20
# Seconds a reader waits for the body to reach it before it may get an origin request of its
# own (shim.cache.fetchplan): from a fast origin the bytes come first, and no request is cut
# short for it (what a request cut short had on its way is lost: at loopback rates, megabytes).
PATIENCE = 0.25
# Connections open to origins at once, all fills together (the pool shim.cache.server makes):
# a cold object read at many places at once (a model streamer's hundreds of ranges) gets a
# request for each, as it would reading the origin directly; aiohttp's default of 100 would
# hold the rest back.
ORIGIN_CONNECTIONS = 1024
# Ranged requests in flight beside fills' first ones, all fills together: half the pool, so
# that a fill's first request always finds a connection.
RANGED_REQUESTS = ORIGIN_CONNECTIONS // 2
# Sends of one ranged request that fails before its end (a 5xx or 429, a cut or a stall), from
# where it got to, and the pause before the second (doubled for each next): a store throttling
# many parallel reads of one object (S3's 503 SlowDown, Azure's ServerBusy) asks for just that.
RANGE_ATTEMPTS = 3
RANGE_BACKOFF = 0.5
# Times a fill whose write found the disk full evicts entries and writes again.
_DISK_FULL_RETRIES = 3
# Origin headers that describe the object itself and are kept with the entry: validators first.
KEPT_HEADERS = (
    "ETag",
    "Last-Modified",
    "Content-Type",
    "Content-Encoding",
    "Cache-Control",
    "Content-Disposition",
    "Content-Language",
    "Expires",
)
# Each store's user metadata, kept too, within bounds: an origin cannot make an entry unbounded.
METADATA_PREFIXES = ("x-amz-meta-", "x-ms-meta-", "x-goog-meta-", "x-oss-meta-", "x-obs-meta-")
MAX_METADATA_HEADERS = 64
MAX_KEPT_BYTES = 16 * 1024  # names and values of every kept header


class OriginStatus(ShimError):
    """The origin answered with a status that is no object (an error, a redirect): passed
    through, never cached, and never followed. What it repeats of the signed request (a
    redirect's Location, the key ID and string-to-sign of an S3 error) is redacted here, so
    that it reaches no client."""

    def __init__(
        self, status: int, headers: Mapping[str, str], body: bytes, signed_url: str
    ) -> None:
        super().__init__(f"origin answered {status}")
        self.status = status
        self.headers = kept_headers(headers)
        if "Location" in headers:
            self.headers["Location"] = redact_url(headers["Location"])
        self.body = redact_error_body(body, signed_url)


class TransferAborted(ShimError):
    """A reader cannot complete the body: its connection is dropped so no client sees a 200."""


class ReadersGone(ShimError):
    """Every reader of a fill streaming through memory left: nobody to send it to."""


class Fill:
    """One object being fetched. Readers wait on it; the fetch task writes to it."""

    def __init__(self, key: str, identity_url: str, temp: Path) -> None:
        self.key = key
        self.identity_url = identity_url
        # What its requests are sent with: the first's signed URL, the request signed again for
        # later ranged ones (a fill may outlive the first signature; None: the first URL), and
        # the parameters it is filtered of.
        self.signed_url = ""
        self.sign_again: Callable[[], str] | None = None
        self.filtered: Sequence[str] = ()
        self.path = temp  # where the body is written; moved into the store on commit
        # Readers pread one descriptor, so a commit (rename) or a drop (unlink) of the file
        # never gets in their way; it closes once the fill ended and its last reader left.
        self.fd: int | None = None
        # Store space held for this body until commit or failure; None: no room on disk.
        self.reservation: Reservation | None = None
        # Streaming through memory: the body from object offset _window_start on, in the chunks
        # it came in, as far as some reader still needs it, and where each reader goes on
        # (offset of its next read).
        self._window: deque[bytes] | None = None
        self._window_start = 0
        self._window_bytes = 0
        self._cursors: dict[FillReader, int] = {}
        # Written to a file: which bytes it has, and which origin request brings which.
        self.plan: FetchPlan | None = None
        # Starts an origin request for a reader waiting far ahead (set while the fill fetches).
        self._on_want: Callable[[int, int | None], None] | None = None
        self.headers_ready = asyncio.Event()
        self.size: int | None = None
        self.headers: dict[str, str] = {}
        self.headers_published = False
        self.status = 200  # or 206: one part of the object (partNumber), never kept
        self.route = "direct"
        self.task_id = key  # replaced by the dfdaemon's own, when it reports one
        # How to fetch (shim.freshness): whether an uncacheable answer is kept, the dfdaemon
        # task's tag, and the origin's answer to start from (a revalidation saw a change).
        self.policy = FreshnessPolicy()
        self.tag: str | None = None
        self.opened: UpstreamReply | None = None
        self.written = 0
        self.finished = False
        self.error: ShimError | None = None
        self.started = time.monotonic()
        self._changed = asyncio.Event()

    @classmethod
    def complete(cls, key: str, path: Path, size: int) -> Fill:
        """A fill that already ended: how a cache entry is read through the same code."""
        fill = cls(key, "", path)
        fill.open_for_readers()
        fill.size = fill.written = size
        fill.finished = True
        fill.headers_ready.set()
        return fill

    @property
    def in_memory(self) -> bool:
        return self._window is not None

    def stream_through_memory(self) -> None:
        self._window = deque()

    def reader(self) -> FillReader:
        """A reader of this fill. Take it before waiting for the headers: a fill streaming
        through memory serves only the readers it had when it started."""
        return FillReader(self)

    def open_for_readers(self) -> None:
        self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)

    def close_when_done(self) -> None:
        """Close the file once the fill ended and its last reader left: an unlinked file
        keeps its disk space for as long as a descriptor holds it."""
        ended = self.finished or self.error is not None
        if ended and not self._cursors and self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def _notify(self) -> None:
        # Swap in a fresh event so a reader's cancellation never touches the others.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def publish(self, size: int | None, headers: dict[str, str], reply: UpstreamReply) -> None:
        self.size, self.headers, self.status = size, headers, reply.status
        self.route, self.task_id = reply.route, reply.task_id or self.task_id
        self.headers_published = True
        self.headers_ready.set()

    def advance(self, count: int) -> None:
        self.written += count
        self._notify()

    def wrote(self, claim: Claim, count: int) -> None:
        """``count`` bytes written to the file at ``claim``'s position."""
        assert self.plan is not None
        self.plan.wrote(claim, count)
        self.advance(count)

    def finish(self) -> None:
        self.finished = True
        self._notify()

    def fail(self, error: ShimError) -> None:
        self.error = error
        self.headers_ready.set()
        self._notify()

    def readable_end(self, position: int, *, part: bool = False) -> int:
        """Where the bytes readers may send from ``position`` end (``position``: none yet).
        The object's last byte waits until the whole body is verified, so no client holds a
        complete-looking object that the fill then rejects; a ``part`` of it (a range) does
        not wait."""
        if self.finished:
            return max(self.written, position)
        end = self.written if self.plan is None else self.plan.have.end_from(position)
        if not part:
            end = min(end, (self.written if self.size is None else self.size) - 1)
        return max(end, position)

    async def wait_past(self, offset: int, stop: int | None = None, *, part: bool = False) -> None:
        """Return once the byte at ``offset`` is readable (for a ``part``: see readable_end),
        or the fill ended. A reader still waiting there after PATIENCE seconds (for bytes up
        to ``stop``) may get an origin request of its own."""
        impatient_at = time.monotonic() + PATIENCE
        while (
            self.readable_end(offset, part=part) <= offset
            and not self.finished
            and self.error is None
        ):
            changed = self._changed
            if self._on_want is None:
                await changed.wait()
                continue
            if time.monotonic() >= impatient_at:
                # Asked again each PATIENCE while it waits (a request may end, room come).
                self._on_want(offset, stop)
                impatient_at = time.monotonic() + PATIENCE
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(impatient_at - time.monotonic()):
                    await changed.wait()

    async def wait_changed(self) -> None:
        await self._changed.wait()

    async def wait_ended(self) -> None:
        while not self.finished and self.error is None:
            await self._changed.wait()

    async def hold(self, chunk: bytes | memoryview) -> None:
        """Add ``chunk`` to the window of a fill streaming through memory, once the slowest
        reader made room for it. Raises ReadersGone when no reader is left."""
        assert self._window is not None
        while self._cursors and self._unread() >= MEMORY_WINDOW:
            await self._changed.wait()
        if not self._cursors:
            raise ReadersGone("every reader left")
        # A copy: the upstream reads its next bytes into the buffer it came in. Readers get
        # views of it, and it is dropped whole once every one of them is past it.
        self._window.append(bytes(chunk))
        self._window_bytes += len(chunk)
        self._trim()

    def _unread(self) -> int:
        """Bytes of the window the slowest reader has still to read. (What it read of a chunk
        still counts against the window until the chunk is dropped: at most one more.)"""
        end = self._window_start + self._window_bytes
        return end - min(self._cursors.values(), default=end)

    def _trim(self) -> None:
        """Drop the window's chunks that every reader is past."""
        assert self._window is not None
        end = self._window_start + self._window_bytes
        start = min(min(self._cursors.values(), default=end), end)
        while self._window and self._window_start + len(self._window[0]) <= start:
            dropped = self._window.popleft()
            self._window_start += len(dropped)
            self._window_bytes -= len(dropped)

    def _move(self, reader: FillReader, position: int) -> None:
        """``reader`` goes on from ``position``: what it left behind may be dropped, and a
        fetch waiting for room must hear of it (else a reader skipping ahead to a range and the
        fetch waiting for it to read wait for each other for ever)."""
        self._cursors[reader] = position
        self._trim()
        self._notify()

    def _from_window(self, reader: FillReader, position: int, count: int) -> memoryview:
        """Up to ``count`` bytes from ``position``, as a view of the chunk they are in."""
        assert self._window is not None and position >= self._window_start
        offset = position - self._window_start
        for chunk in self._window:
            if offset < len(chunk):
                break
            offset -= len(chunk)
        data = memoryview(chunk)[offset : offset + count]
        self._move(reader, position + len(data))
        return data


@dataclass(frozen=True, slots=True)
class FillProgress:
    """Where one fill in flight is, for the status page."""

    task_id: str
    url: str  # redacted
    route: str  # cache, direct, dfdaemon, fallback: known once the headers came
    answered: bool  # the upstream's headers came
    received: int  # body bytes so far
    size: int | None  # bytes expected (None: unknown until the end)
    seconds: float  # since the fetch started
    rate: float  # bytes per second, on average since it started
    readers: int  # clients reading it now
    kept: bool  # written to the cache (else streamed through memory)

    @classmethod
    def of(cls, fill: Fill, now: float) -> FillProgress:
        seconds = max(now - fill.started, 0.0)
        return cls(
            task_id=fill.task_id,
            url=redact_url(fill.identity_url),
            route=fill.route,
            answered=fill.headers_published,
            received=fill.written,
            size=fill.size,
            seconds=seconds,
            rate=fill.written / seconds if seconds > 0 else 0.0,
            readers=len(fill._cursors),
            kept=fill.reservation is not None,
        )


@dataclass(frozen=True, slots=True)
class FileSpan:
    """``count`` readable bytes of a fill's file (descriptor ``fd``) from ``offset``."""

    fd: int
    offset: int
    count: int


async def read_span(span: FileSpan) -> bytes:
    """The bytes of ``span``, read from its file (in a thread: a disk may be slow)."""
    data = await asyncio.to_thread(os.pread, span.fd, span.count, span.offset)
    if len(data) != span.count:
        raise TransferAborted("the cache file is shorter than its entry")
    return data


class FillReader:
    """One client's reading of a fill, from its file or from its window in memory."""

    def __init__(self, fill: Fill) -> None:
        self.fill = fill
        fill._cursors[self] = fill._window_start

    def close(self) -> None:
        fill = self.fill
        if fill._cursors.pop(self, None) is not None and fill.in_memory:
            fill._trim()
            fill._notify()
        fill.close_when_done()

    def __enter__(self) -> FillReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def span(
        self, position: int, stop: int | None, limit: int, *, part: bool = False
    ) -> FileSpan | bytes | memoryview:
        """The next bytes from ``position`` (up to ``stop``, None: the end) once readable, at
        most ``limit`` of them; b"" at the end of the object. ``part``: they are sent as part
        of the object (a range), which never waits for the whole object's check. Where they
        are in the fill's file, for a caller that sends (or reads, ``read_span``) them from
        there, rather than the bytes themselves (which a fill streaming through memory still
        is). TransferAborted when the body cannot be completed."""
        fill = self.fill
        if fill.in_memory:
            fill._move(self, position)
        await fill.wait_past(position, stop, part=part)
        if fill.error is not None:
            raise TransferAborted(str(fill.error))
        end = fill.readable_end(position, part=part)
        if stop is not None:
            end = min(end, stop)
        if position >= end:
            if stop is None and fill.finished:
                return b""
            raise TransferAborted("the object ended before the promised length")
        count = min(limit, end - position)
        if fill.in_memory:
            return fill._from_window(self, position, count)
        assert fill.fd is not None, "a fill opens its file before any byte is readable"
        return FileSpan(fill.fd, position, count)


class FillRunner:
    """Starts at most one fill per key and runs it to the end."""

    def __init__(
        self,
        store: CacheStore,
        metrics: Metrics,
        upstream: Upstream,
        *,
        keep: bool,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._upstream = upstream
        self._keep = keep  # False: fills feed their readers, then go (a dfdaemon caches)
        self._fills: dict[str, Fill] = {}
        # Every fill running, those streaming through memory too (no longer in _fills).
        self._running: set[Fill] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._verified = VerifiedBodies()
        self._ranged = 0  # ranged requests in flight, all fills together
        # One worker keeps checksum updates in order, off the event loop (hashlib drops the
        # GIL; the CRCs take microseconds per MiB).
        self._hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shim-verify")

    def get_or_start(
        self,
        key: str,
        identity_url: str,
        signed_url: str,
        filtered: Sequence[str],
        *,
        policy: FreshnessPolicy | None = None,
        tag: str | None = None,
        opened: UpstreamReply | None = None,
        sign_again: Callable[[], str] | None = None,
    ) -> Fill:
        """The fill of ``key``, started if none runs. ``opened``: the origin's answer to a
        GET of ``signed_url`` to start from; closed when a fill already runs. ``sign_again``:
        that GET signed again (blocking), for the fill's later ranged requests."""
        fill = self._fills.get(key)
        if fill is not None and opened is not None:
            opened.close()
        if fill is None:
            fill = Fill(key, identity_url, self._store.temp_path(key))
            fill.signed_url, fill.filtered, fill.sign_again = signed_url, filtered, sign_again
            fill.policy, fill.tag, fill.opened = policy or fill.policy, tag, opened
            # The dfdaemon's task ID for that tag, until the dfdaemon reports its own.
            fill.task_id = rust_task_id(identity_url, tag=tag) if tag else key
            self._fills[key] = fill
            self._running.add(fill)
            task = asyncio.create_task(self._run(fill), name=f"fill {key[:12]}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return fill

    def in_flight(self) -> list[FillProgress]:
        """The fills running now, oldest first. Read-only."""
        now = time.monotonic()
        fills = sorted(self._running, key=lambda fill: fill.started)
        return [FillProgress.of(fill, now) for fill in fills]

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._hasher.shutdown(wait=True)

    async def _run(self, fill: Fill) -> None:
        self._metrics.origin_fetches.inc()
        started = time.monotonic()
        try:
            await self._fetch(fill)
        except ShimError as error:
            fill.fail(error)
        except asyncio.CancelledError:
            fill.fail(UpstreamError("shim is shutting down"))
            raise
        except Exception as error:
            log.exception("fill of %s failed unexpectedly", fill.identity_url)
            fill.fail(UpstreamError(f"internal error: {type(error).__name__}"))
        finally:
            self._running.discard(fill)
            if self._fills.get(fill.key) is fill:
                del self._fills[fill.key]
            if fill.reservation is not None:
                self._store.release(fill.reservation)
            if not fill.finished:
                fill.path.unlink(missing_ok=True)
            fill.close_when_done()
            if fill.finished:
                duration = time.monotonic() - started
                self._metrics.fill_duration.labels(route=fill.route).observe(duration)
            if isinstance(fill.error, ReadersGone):
                log.info("fetch of %s stopped: %s", fill.identity_url, fill.error)
            elif fill.error is not None:
                self._metrics.errors.labels(kind=_error_kind(fill.error)).inc()
                log.warning("fetch of %s failed: %s", fill.identity_url, fill.error)

    async def _fetch(self, fill: Fill) -> None:
        """Fetch into ``fill``; keep it in the store when there is room and keeping is on."""
        signed_url = fill.signed_url
        reply = fill.opened or await self._upstream.open(
            "GET", signed_url, fill.filtered, tag=fill.tag
        )
        try:
            if reply.status not in (200, 206):
                body = await reply.head_of_body()
                # The failure's X-Shim-Route and task ID say which upstream answered.
                fill.route, fill.task_id = reply.route, reply.task_id or fill.task_id
                raise OriginStatus(reply.status, reply.headers, body, signed_url)
            # A 206 to a GET without Range is one part of the object (partNumber): streamed to
            # its readers as such, never kept as the object.
            whole = reply.status == 200
            kept = kept_headers(reply.headers) if whole else part_headers(reply.headers)
            size = reply.content_length
            if reply.body_file is not None:
                fill.fd = os.dup(reply.body_file)  # readers send the body from there
            else:
                cache_control = reply.headers.get("Cache-Control")
                keepable = whole and storable(cache_control, fill.policy)
                self._find_room(fill, size, keepable=keepable)
            if fill.reservation is not None:
                assert size is not None, "a body is kept only with a known length"
                fill.plan = FetchPlan(size, split=splittable(reply, kept))
            fill.publish(size, kept, reply)
            # A part's checksums are the whole object's: nothing to check the part against.
            offer = offered(reply.headers) if whole else Unchecked("part", "a part (partNumber)")
            etag = reply.headers.get("ETag")
            version = None if etag is None or size is None else (fill.identity_url, etag, size)
            recordable = False
            if isinstance(offer, Checksum) and version is not None:
                # A version verified before is checked against shim's own digest of it.
                offer = self._verified.offer(version) or offer
                recordable = True
            # A body that is kept keeps its BLAKE3 too, for `shim cache verify`.
            kept_body = fill.reservation is not None
            verifier = Verifier(offer, fingerprint=recordable or kept_body)
            await self._copy_body(fill, reply, verifier)
        finally:
            reply.close()
        if size is not None and fill.written != size:
            raise UpstreamError(f"{reply.route} sent {fill.written} of {size} bytes")
        outcome = verifier.outcome()
        self._check(fill, reply.route, outcome)
        fingerprint = verifier.fingerprint()
        if isinstance(outcome, Verified) and fingerprint is not None and version is not None:
            self._verified.record(version, fingerprint)
        if fill.reservation is not None:
            meta = EntryMeta(
                key=fill.key,
                url=fill.identity_url,
                size=fill.written,
                etag=kept.get("ETag"),
                content_type=kept.get("Content-Type"),
                content_encoding=kept.get("Content-Encoding"),
                last_modified=kept.get("Last-Modified"),
                stored_at=time.time(),
                headers=kept,
                blake3=None if fingerprint is None else fingerprint.hex(),
            )
            self._store.commit(meta, fill.path, fill.reservation)
        fill.finish()

    def _check(self, fill: Fill, route: str, outcome: Outcome) -> None:
        """Count the body's check, say once per object what could not be checked, and fail
        the fill on a mismatch: before its last byte reaches any reader or it is kept."""
        self._metrics.integrity.labels(result=outcome.result, kind=outcome.kind).inc()
        if isinstance(outcome, Unchecked):
            log.info("%s is not verified: %s", fill.identity_url, outcome.reason)
        elif isinstance(outcome, Mismatch):
            raise UpstreamError(f"{outcome} (from the {route} route)")

    def _find_room(self, fill: Fill, size: int | None, *, keepable: bool) -> None:
        """Where the body goes: a temporary file that becomes the entry, when it is to be kept
        and fits; else memory, streaming through to the readers waiting now. A body that is
        not kept is never written to disk (behind a dfdaemon, which keeps its own copy, a
        second one would only cost the disk's bandwidth); later requests fetch it again."""
        wanted = self._keep and keepable and size is not None
        if wanted and size is not None:
            fill.reservation = self._store.reserve(size)
        if fill.reservation is not None:
            return
        fill.stream_through_memory()
        del self._fills[fill.key]  # later requests start a fetch of their own
        if wanted:
            log.warning(
                "no room on the cache's disk for %s (%s bytes): streaming it through memory, "
                "without keeping it",
                fill.identity_url,
                size,
            )

    async def _copy_body(self, fill: Fill, reply: UpstreamReply, verifier: Verifier) -> None:
        if reply.body_file is not None:
            await self._check_file(fill, reply.body_file, verifier)
        elif fill.plan is None:
            await self._stream_through_memory(fill, reply, verifier)
        else:
            await self._write_file(fill, fill.plan, reply, verifier)

    async def _stream_through_memory(
        self, fill: Fill, reply: UpstreamReply, verifier: Verifier
    ) -> None:
        loop = asyncio.get_running_loop()
        pending: asyncio.Future[None] | None = None
        received = self._metrics.received(fill.route)
        try:
            async for chunk in reply.chunks():
                await fill.hold(chunk)
                fill.advance(len(chunk))
                received.inc(len(chunk))
                if verifier.hashing:
                    if pending is not None:
                        await pending
                    pending = loop.run_in_executor(self._hasher, verifier.update, chunk)
            if pending is not None:
                await pending
        except UpstreamError as error:
            raise UpstreamError(f"{error} after {fill.written} bytes") from None
        finally:
            if pending is not None and not pending.done():
                with contextlib.suppress(Exception):
                    await pending

    async def _write_file(
        self, fill: Fill, plan: FetchPlan, reply: UpstreamReply, verifier: Verifier
    ) -> None:
        """Write the body to the fill's file, from ``reply`` and the ranged requests its
        readers call for, while checking it in order as far as it is there."""
        assert fill.reservation is not None
        fd = self._store.create_temp(fill.path)
        requests = _Requests()

        def on_want(position: int, stop: int | None) -> None:
            if requests.failed or self._ranged >= RANGED_REQUESTS:
                return
            claim = plan.for_reader(position, stop)
            if claim is not None:
                requests.start(self._fetch_claims(fill, plan, fd, claim, None))

        checking: asyncio.Task[None] | None = None
        check_fd: int | None = None
        try:
            fill.open_for_readers()
            assert fill.fd is not None
            # The check's own descriptor: a check still reading when the fill ends (cancelled)
            # never reads one closed under it, or reused. Closed after it, in its thread.
            check_fd = os.dup(fill.fd)
            fill._on_want = on_want
            requests.start(self._fetch_claims(fill, plan, fd, plan.first(), reply))
            checking = asyncio.create_task(self._check_written(fill, plan, check_fd, verifier))
            await requests.wait()
            if not plan.complete:
                raise UpstreamError(f"the fill ended with {plan.have.total} bytes of {plan.size}")
            fill._notify()  # the check may be waiting for the last bytes
            await checking
            await asyncio.to_thread(os.fsync, fd)  # durable before it becomes an entry
        finally:
            fill._on_want = None
            await requests.cancel()
            if checking is not None and not checking.done():
                checking.cancel()
                with contextlib.suppress(BaseException):
                    await checking
            if check_fd is not None:
                self._hasher.submit(os.close, check_fd)
            os.close(fd)

    async def _fetch_claims(
        self, fill: Fill, plan: FetchPlan, fd: int, claim: Claim, reply: UpstreamReply | None
    ) -> None:
        """Write ``claim``'s bytes (from ``reply``, the first request's answer, else ranged
        requests), then its successors', until the plan has none left for this request."""
        if reply is not None:  # the first request's failure is the fill's, as ever
            await self._write_claim(fill, plan, fd, claim, reply)
            next_claim = plan.next_after(claim)
        else:
            next_claim = claim
        while next_claim is not None:
            await self._fetch_range(fill, plan, fd, next_claim)
            next_claim = plan.next_after(next_claim)

    async def _fetch_range(self, fill: Fill, plan: FetchPlan, fd: int, claim: Claim) -> None:
        """``claim``'s bytes by a ranged request; one that fails before its end with a store's
        transient answer or in the body is sent again from where it got to."""
        self._ranged += 1
        try:
            for attempt in range(1, RANGE_ATTEMPTS + 1):
                try:
                    reply = await self._open_range(fill, plan, claim)
                    await self._write_claim(fill, plan, fd, claim, reply)
                    return
                except _TransientRangeError as error:
                    if attempt == RANGE_ATTEMPTS:
                        raise UpstreamError(str(error)) from None
                    self._metrics.origin_retries.labels(upstream="origin").inc()
                    log.info("%s; sending it again (%d of %d)", error, attempt + 1, RANGE_ATTEMPTS)
                    await asyncio.sleep(RANGE_BACKOFF * 2 ** (attempt - 1))
        finally:
            self._ranged -= 1

    async def _write_claim(
        self, fill: Fill, plan: FetchPlan, fd: int, claim: Claim, reply: UpstreamReply
    ) -> None:
        """Write ``reply``'s body at ``claim``'s position, up to the claim's end (a later
        request may have taken the rest). _TransientRangeError when it fails short."""
        assert fill.reservation is not None
        received = self._metrics.received(fill.route)
        try:
            async for chunk in reply.chunks():
                count = min(len(chunk), claim.end - claim.pos)
                self._write(fd, claim.pos, memoryview(chunk)[:count], fill.reservation)
                fill.wrote(claim, count)
                received.inc(count)
                if claim.pos == claim.end:
                    break
        except UpstreamError as error:
            raise _TransientRangeError(f"{error} after {fill.written} bytes") from None
        finally:
            reply.close()
        if claim.pos < claim.end:
            raise _TransientRangeError(f"{fill.route} sent {fill.written} of {plan.size} bytes")

    async def _open_range(self, fill: Fill, plan: FetchPlan, claim: Claim) -> UpstreamReply:
        """The origin's answer to a request for ``claim``'s bytes, checked to be those bytes
        of the same object: a changed object fails the fill rather than mix two versions.
        _TransientRangeError for an answer that another try may not meet."""
        self._metrics.origin_range_requests.inc()
        signed_url = fill.signed_url
        if fill.sign_again is not None:
            signed_url = await asyncio.to_thread(fill.sign_again)
        claim.asked = claim.end  # a later request may have taken the end of it since it began
        try:
            reply = await self._upstream.open(
                "GET", signed_url, fill.filtered, direct=True, headers={"Range": claim.ranged}
            )
        except UpstreamError as error:
            raise _TransientRangeError(str(error)) from None
        wanted = f"bytes {claim.pos}-{claim.asked - 1}/{plan.size}"
        answered = reply.headers.get("Content-Range")
        etag = reply.headers.get("ETag")
        if reply.status == 206 and answered == wanted and etag == fill.headers.get("ETag"):
            return reply
        reply.close()
        if reply.status == 429 or reply.status >= 500:
            raise _TransientRangeError(f"origin answered {reply.status} to a range of the object")
        if reply.status != 206:
            raise UpstreamError(f"origin answered {reply.status} to a range of the object")
        raise UpstreamError(
            f"origin answered a range of the object with other bytes (Content-Range "
            f"{(answered or '')[:80]!r}, ETag {(etag or '')[:80]!r}): it changed during the fill"
        )

    async def _check_written(
        self, fill: Fill, plan: FetchPlan, fd: int, verifier: Verifier
    ) -> None:
        """Check the body in order, reading it from the file (``fd``) as far as it is
        written."""
        if not verifier.hashing:
            return
        loop = asyncio.get_running_loop()
        checked = 0
        while not (plan.complete and checked == plan.size):
            written = plan.have.end_from(checked)
            if written == checked:
                await fill.wait_changed()
                continue
            for offset in range(checked, written, _FILE_CHECK_STEP):
                count = min(_FILE_CHECK_STEP, written - offset)
                await loop.run_in_executor(self._hasher, _check_span, verifier, fd, offset, count)
            checked = written

    async def _check_file(self, fill: Fill, fd: int, verifier: Verifier) -> None:
        """A body whole in a file already: readable as far as it is checked, the last byte
        still held until all of it is (readers send it from the file)."""
        loop = asyncio.get_running_loop()
        size = os.fstat(fd).st_size
        received = self._metrics.received(fill.route)
        for offset in range(0, size, _FILE_CHECK_STEP):
            count = min(_FILE_CHECK_STEP, size - offset)
            if verifier.hashing:
                await loop.run_in_executor(self._hasher, _check_span, verifier, fd, offset, count)
            fill.advance(count)
            received.inc(count)

    def _write(self, fd: int, offset: int, chunk: memoryview, reservation: Reservation) -> None:
        """Write all of ``chunk`` at ``offset``. When the disk is full, evict entries to make
        room for the rest of the body and write again, a few times; then DiskFull."""
        view = chunk
        retries = 0
        while view:
            try:
                written = os.pwrite(fd, view, offset)
                view, offset = view[written:], offset + written
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise
                needed = max(reservation.unwritten, len(view))
                if retries == _DISK_FULL_RETRIES or not self._store.free_disk(needed):
                    raise DiskFull(
                        f"the cache's disk is full after {reservation.written} bytes"
                    ) from None
                retries += 1
                log.warning("the cache's disk is full: evicted entries to write on")
        reservation.written += len(chunk)


def _check_span(verifier: Verifier, fd: int, offset: int, count: int) -> None:
    data = os.pread(fd, count, offset)
    if len(data) != count:
        raise UpstreamError("the body's file is shorter than its bytes")
    verifier.update(data)


def splittable(reply: UpstreamReply, kept: Mapping[str, str]) -> bool:
    """Whether the object in ``reply`` may be fetched in ranged requests beside it: from the
    origin itself (a dfdaemon answers for its own task), which says it serves ranges, of a
    known length, and with an ETag that tells each range's answer is of the same object."""
    return (
        reply.route == "direct"
        and reply.status == 200
        and reply.content_length is not None
        and reply.headers.get("Accept-Ranges", "").strip().lower() == "bytes"
        and "ETag" in kept
    )


class _TransientRangeError(UpstreamError):
    """A ranged request failed before its end in a way another try may not meet."""


class _Requests:
    """The origin requests of one fill in flight: the first to fail ends the others, and no
    more start."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._error: BaseException | None = None

    @property
    def failed(self) -> bool:
        return self._error is not None

    def start(self, request: Coroutine[None, None, None]) -> None:
        if self.failed:
            request.close()
            return
        task = asyncio.create_task(request)
        self._tasks.add(task)
        self._idle.clear()
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and self._error is None:
            self._error = task.exception()
            for other in self._tasks:
                other.cancel()
        if not self._tasks:
            self._idle.set()

    async def wait(self) -> None:
        """Return once every request ended; raise the first failure."""
        await self._idle.wait()
        if self._error is not None:
            raise self._error

    async def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _error_kind(error: ShimError) -> str:
    if isinstance(error, OriginStatus):
        return "origin_status"
    return "disk" if isinstance(error, DiskFull) else "origin"


def kept_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The origin headers that describe the object, to keep with it and pass on: the standard
    ones, then user metadata, as many as the bounds allow (the rest is dropped, and logged)."""
    wanted = [(name, headers[name]) for name in KEPT_HEADERS if name in headers]
    metadata = [item for item in headers.items() if item[0].lower().startswith(METADATA_PREFIXES)]
    kept: dict[str, str] = {}
    room = MAX_KEPT_BYTES
    for index, (name, value) in enumerate(wanted + metadata):
        if index - len(wanted) >= MAX_METADATA_HEADERS or len(name) + len(value) > room:
            continue
        kept[name] = value
        room -= len(name) + len(value)
    if len(kept) < len(wanted) + len(metadata):
        log.warning(
            "kept %d of the origin's %d object headers (at most %d metadata headers, %d bytes)",
            len(kept),
            len(wanted) + len(metadata),
            MAX_METADATA_HEADERS,
            MAX_KEPT_BYTES,
        )
    return kept


def part_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers of a 206 to a request without Range: the object's, and which part it is."""
    content_range = headers.get("Content-Range")
    if content_range is None:
        raise UpstreamError("origin answered 206 without Content-Range")
    return {**kept_headers(headers), "Content-Range": content_range}
