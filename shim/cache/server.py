"""The cache's answers: ``CacheServer.respond`` looks an object up, joins or starts the
single-flight fill, and plans the answer, honouring one Range and the conditional headers (the
same answers on a hit and on a miss, where the origin's headers decide as they arrive); its
body streams from the file or the fill as bytes arrive. The addon calls it in-process; the
loopback server here answers what the proxy relays instead (``cache.zero_copy_hits: false``,
a connection the addon cannot write to, refusals of requests with a body). It listens on
loopback only and serves only requests that carry a single-use ticket the proxy adds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from cachetools import TTLCache

from shim._errors import ShimError, UpstreamError
from shim.cache.conditional import (
    Preconditions,
    Validators,
    Verdict,
    evaluate,
    not_modified_headers,
    range_applies,
)
from shim.cache.fill import (
    ORIGIN_CONNECTIONS,
    READ_SIZE,
    FileSpan,
    Fill,
    FillProgress,
    FillReader,
    FillRunner,
    OriginStatus,
    TransferAborted,
    kept_headers,
    part_headers,
    read_span,
)
from shim.cache.revalidate import Revalidator
from shim.cache.store import CacheStore, EntryMeta
from shim.cache.upkeep import Upkeep
from shim.decide import Refuse
from shim.freshness import DEFAULT_POLICY, FreshnessPolicy
from shim.identity import TaskIdentity
from shim.metrics import Metrics
from shim.ranges import ByteRange, Unsatisfiable, parse_range
from shim.upstream import DfdaemonRoute, Upstream

log = logging.getLogger("shim.cache")

TICKET_HEADER = "X-Shim-Ticket"
CACHE_STATUS_HEADER = "X-Shim-Cache"
TASK_ID_HEADER = "X-Shim-Task-Id"
ROUTE_HEADER = "X-Shim-Route"  # cache, direct, dfdaemon, or fallback
ERROR_HEADER = "X-Shim-Error"
REFUSAL_PATH = "/refused"


def shim_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The X-Shim-* headers of ``headers``, whatever the case of their names."""
    return {name: value for name, value in headers.items() if name.lower().startswith("x-shim-")}


@dataclass(frozen=True, slots=True)
class Ticket:
    """What the proxy wants fetched. Only an unguessable id crosses the loopback hop, so no
    signed URL ever sits in a flow that mitmproxy might print."""

    method: str
    signed_url: str
    identity: TaskIdentity
    filtered: tuple[str, ...]  # the signature parameters, for the dfdaemon's filter headers
    policy: FreshnessPolicy = DEFAULT_POLICY  # the bucket's (shim.freshness)
    # The same request signed again (blocking; a URL fit to hand out, from the signer's cache
    # or new): for the ranged requests a fill sends long after the first (shim.cache.fill).
    sign_again: Callable[[], str] | None = None


def object_headers(
    kept: Mapping[str, str | None], size: int | None, byte_range: ByteRange | None
) -> dict[str, str]:
    """Response headers for the whole object (``byte_range`` None) or one range of it."""
    headers = {name: value for name, value in kept.items() if value}
    if size is not None:
        headers["Accept-Ranges"] = "bytes"
        headers["Content-Length"] = str(byte_range.length if byte_range else size)
        if byte_range is not None:
            headers["Content-Range"] = byte_range.content_range(size)
    return headers


def hit_headers(meta: EntryMeta, now: float) -> dict[str, str]:
    """The cache headers of a hit: its Age, the whole seconds since the origin sent or last
    confirmed the entry (RFC 9111 section 5.1)."""
    age = max(int(now - (meta.validated_at or meta.stored_at)), 0)
    return {
        CACHE_STATUS_HEADER: "HIT",
        TASK_ID_HEADER: meta.key,
        ROUTE_HEADER: "cache",
        "Age": str(age),
    }


def entry_kept(meta: EntryMeta) -> dict[str, str]:
    """The headers an entry serves; an entry stored before headers were kept has four."""
    if meta.headers:
        return dict(meta.headers)
    kept = {
        "ETag": meta.etag,
        "Last-Modified": meta.last_modified,
        "Content-Type": meta.content_type,
        "Content-Encoding": meta.content_encoding,
    }
    return {name: value for name, value in kept.items() if value}


@dataclass(frozen=True, slots=True)
class Answer:
    """What a request for an object gets: a status, its headers, and the bytes that follow
    (all of them for a 200, ``byte_range`` for a 206, none otherwise)."""

    status: int
    headers: dict[str, str]
    byte_range: ByteRange | None = None

    @property
    def sends_object(self) -> bool:
        return self.status in (200, 206)


PRECONDITION_FAILED_BODY = b"shim: precondition failed\n"


def plan_answer(
    method: str,
    conditions: Preconditions,
    kept: Mapping[str, str],
    size: int | None,
    *,
    seen_at: float,
    part: bool = False,
) -> Answer:
    """The answer for an object with ``kept`` headers and ``size`` bytes (None: unknown), the
    same on a hit and on a miss: its preconditions first, then one Range. ``seen_at``: when
    its headers came from the origin. ``part``: one part of it (partNumber), which the origin
    framed as a 206 with its Content-Range and which no Range applies to."""
    validators = Validators(kept.get("ETag"), kept.get("Last-Modified"), seen_at)
    verdict = evaluate(method, conditions, validators)
    if verdict is Verdict.NOT_MODIFIED:
        return Answer(304, not_modified_headers(kept))
    if verdict is Verdict.PRECONDITION_FAILED:
        return Answer(412, {"Content-Type": "text/plain"})
    byte_range = None
    if method == "GET" and size is not None and not part and range_applies(conditions, validators):
        try:
            byte_range = parse_range(conditions.range, size)
        except Unsatisfiable:
            return Answer(416, {"Content-Range": f"bytes */{size}"})
    status = 206 if byte_range or part else 200
    return Answer(status, object_headers(kept, size, byte_range), byte_range)


@dataclass
class BodyStream:
    """The object bytes an answer sends: ``start`` to ``stop`` (None: to the end of a body of
    unknown length) of a fill, read through ``reader``; a ``part`` of the object (a range)
    or all of it. Whoever sends it closes it, which ends the reading and unpins the entry."""

    reader: FillReader
    start: int
    stop: int | None
    on_close: Callable[[], None]
    part: bool = False

    @property
    def length(self) -> int | None:
        return None if self.stop is None else self.stop - self.start

    async def spans(self, limit: int) -> AsyncGenerator[FileSpan | bytes | memoryview, None]:
        """The body in order, in spans of at most ``limit`` bytes: where they are in the fill's
        file, for a sender that sends them from there, or the bytes (see FillReader.span).
        TransferAborted when the body cannot be completed."""
        position = self.start
        while self.stop is None or position < self.stop:
            span = await self.reader.span(position, self.stop, limit, part=self.part)
            count = span.count if isinstance(span, FileSpan) else len(span)
            if count == 0:
                return
            yield span
            position += count

    async def chunks(self) -> AsyncGenerator[bytes | memoryview, None]:
        """The body's bytes in order, those of file spans read."""
        async with contextlib.aclosing(self.spans(READ_SIZE)) as spans:
            async for span in spans:
                yield await read_span(span) if isinstance(span, FileSpan) else span

    async def read_all(self) -> bytes:
        """The whole body, for a small one: TransferAborted when it cannot be completed."""
        body = bytearray()
        async with contextlib.aclosing(self.chunks()) as chunks:
            async for chunk in chunks:
                body += chunk
        return bytes(body)

    def close(self) -> None:
        self.reader.close()
        self.on_close()


@dataclass
class Reply:
    """A whole answer to one request for an object, whatever carries it to the client: its
    status and headers, then ``body`` or, for object bytes, ``stream``."""

    status: int
    headers: dict[str, str]
    body: bytes = b""
    stream: BodyStream | None = None


def error_reply(status: int, kind: str, message: str) -> Reply:
    return Reply(
        status, {"Content-Type": "text/plain", ERROR_HEADER: kind}, f"shim: {message}\n".encode()
    )


def error_response(status: int, kind: str, message: str) -> web.Response:
    return web.Response(status=status, text=f"shim: {message}\n", headers={ERROR_HEADER: kind})


class CacheServer:
    def __init__(
        self,
        store: CacheStore,
        metrics: Metrics,
        *,
        extra_headers: Mapping[str, str],
        origin_timeout: float,
        dfdaemon: DfdaemonRoute | None,
        keep: bool,
    ) -> None:
        self.store = store
        # Unclaimed tickets (a client that went away) expire instead of piling up.
        self._tickets: TTLCache[str, Ticket | Refuse] = TTLCache(maxsize=65536, ttl=300)
        self._metrics = metrics
        self._extra_headers = extra_headers
        self._origin_timeout = origin_timeout
        self._dfdaemon = dfdaemon
        self._keep = keep
        self._runner: web.AppRunner | None = None
        self._fills: FillRunner | None = None
        self._revalidator: Revalidator | None = None
        self._upstream: Upstream | None = None
        self._session: aiohttp.ClientSession | None = None
        self._upkeep = Upkeep(store, self._update_gauges)
        self.address: tuple[str, int] = ("127.0.0.1", 0)

    @property
    def keeps_copies(self) -> bool:
        """Whether fills keep the objects in ``store`` (else the dfdaemon keeps them)."""
        return self._keep

    async def start(self) -> None:
        self.store.open()
        self._session = aiohttp.ClientSession(
            auto_decompress=False,
            connector=aiohttp.TCPConnector(limit=ORIGIN_CONNECTIONS),
            timeout=aiohttp.ClientTimeout(
                total=None, connect=30, sock_connect=30, sock_read=self._origin_timeout
            ),
        )
        self._upstream = Upstream(
            self._session,
            self._metrics,
            extra_headers=self._extra_headers,
            read_timeout=self._origin_timeout,
            dfdaemon=self._dfdaemon,
        )
        self._fills = FillRunner(self.store, self._metrics, self._upstream, keep=self._keep)
        self._revalidator = Revalidator(
            self.store,
            self._fills,
            self._upstream,
            self._metrics,
            dragonfly_tag=self._dfdaemon.options.tag if self._dfdaemon else None,
        )
        app = web.Application()
        app.on_response_prepare.append(_drop_server_header)
        app.router.add_get("/", self._handle)
        app.router.add_route("*", REFUSAL_PATH, self._refuse)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        self.address = server.sockets[0].getsockname()[:2]
        self._update_gauges()
        self._upkeep.start()

    async def stop(self) -> None:
        if self._revalidator is not None:
            await self._revalidator.close()
        if self._fills is not None:
            await self._fills.close()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()
        await self._upkeep.stop()  # last: it writes the usage of everything served

    def reconfigure(
        self, *, extra_headers: Mapping[str, str], dfdaemon: DfdaemonRoute | None
    ) -> None:
        """Origin headers and dfdaemon route for the fetches that start from now on (a config
        reload; shim.reload refuses the dfdaemon changes that need a restart)."""
        self._extra_headers, self._dfdaemon = extra_headers, dfdaemon
        if self._upstream is not None:
            self._upstream.reconfigure(extra_headers=extra_headers, dfdaemon=dfdaemon)

    def _update_gauges(self) -> None:
        self._metrics.cache_bytes.set(self.store.used)
        self._metrics.cache_entries.set(len(self.store))

    def remove(self, key: str) -> bool:
        """Remove entry ``key`` (an operator asked); False if it was absent."""
        removed = self.store.remove(key)
        self._update_gauges()
        return removed

    def in_flight(self) -> list[FillProgress]:
        """The fills running now, oldest first (for the status page). Read-only."""
        return self._fills.in_flight() if self._fills is not None else []

    def issue_ticket(self, ticket: Ticket | Refuse) -> str:
        ticket_id = secrets.token_urlsafe(24)
        self._tickets[ticket_id] = ticket
        return ticket_id

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        """A request the proxy relays here (``cache.zero_copy_hits: false``, or a client
        connection it cannot answer on directly), by ticket."""
        ticket = self._tickets.pop(request.headers.get(TICKET_HEADER, ""), None)
        if not isinstance(ticket, Ticket) or ticket.method != request.method:
            return error_response(403, "forbidden", "this port serves the shim proxy only")
        conditions = Preconditions.of(lambda name: request.headers.getall(name, []))
        reply = await self.respond(ticket, conditions)
        if reply.stream is None:
            return await _send_reply(request, reply)
        with contextlib.closing(reply.stream):
            return await self._stream(request, reply)

    async def respond(self, ticket: Ticket, conditions: Preconditions) -> Reply:
        """The answer to ``ticket`` with ``conditions``: from the cache, checked with the
        origin when due, or from the single-flight fill, joined or started. Its stream, if
        any, is the caller's to send and close."""
        key = ticket.identity.task_id
        meta = self.store.lookup(key)
        assert self._revalidator is not None
        if meta is not None and self._revalidator.due(meta, ticket):
            checked = await self._revalidator.check_entry(meta, ticket)
            if isinstance(checked, OriginStatus):
                return _failure_reply(checked, key, "direct")
            meta = checked
        if meta is not None:
            try:
                reply = self._entry_reply(ticket.method, conditions, meta)
            except FileNotFoundError:
                # Gone from the disk since it was stored (an operator cleared the cache):
                # no entry any more, and fetched again.
                log.warning("cache entry %s is missing its file: fetching it again", key)
                self.store.remove(key)
            else:
                self._metrics.cache_hits.inc()
                self.store.record_hit(key)
                return reply
        if ticket.method == "HEAD":
            return await self._head_origin(conditions, ticket)
        self._metrics.cache_misses.inc()
        assert self._fills is not None
        tag = await self._revalidator.task_tag(ticket)
        if isinstance(tag, OriginStatus):
            return _failure_reply(tag, key, "direct")
        fill = self._fills.get_or_start(
            key,
            ticket.identity.url,
            ticket.signed_url,
            ticket.filtered,
            policy=ticket.policy,
            tag=tag,
            sign_again=ticket.sign_again,
        )
        reader = fill.reader()
        try:
            return await self._fill_reply(ticket.method, conditions, reader)
        except BaseException:
            reader.close()
            raise

    async def _refuse(self, request: web.Request) -> web.StreamResponse:
        """Answer a refused request that carries a body, without reading a byte of it: the
        proxy cannot answer such a request itself without holding its body in memory."""
        refusal = self._tickets.pop(request.headers.get(TICKET_HEADER, ""), None)
        if not isinstance(refusal, Refuse):
            return error_response(403, "forbidden", "this port serves the shim proxy only")
        response = error_response(refusal.status, refusal.kind, refusal.message)
        if refusal.body is not None:
            response = web.Response(status=refusal.status, body=refusal.body)
        response.headers.update(dict(refusal.headers))
        response.force_close()
        return response

    async def _head_origin(self, conditions: Preconditions, ticket: Ticket) -> Reply:
        """A HEAD for an object not in the cache: ask the origin; fill nothing."""
        assert self._upstream is not None
        key = ticket.identity.task_id
        try:
            reply = await self._upstream.open("HEAD", ticket.signed_url, ticket.filtered)
        except UpstreamError as error:
            return _failure_reply(error, key, "direct")
        reply.close()
        cache = miss_headers(key, reply.route)
        try:
            if reply.status in (200, 206):  # 206: one part of the object (partNumber)
                part = reply.status == 206
                kept = part_headers(reply.headers) if part else kept_headers(reply.headers)
                answer = plan_answer(
                    "HEAD", conditions, kept, reply.content_length, seen_at=time.time(), part=part
                )
                return _answer_reply("HEAD", answer, cache)
            headers = OriginStatus(reply.status, reply.headers, b"", ticket.signed_url).headers
        except UpstreamError as error:
            return _failure_reply(error, key, reply.route)
        if reply.content_length is not None:
            headers["Content-Length"] = str(reply.content_length)
        headers.update(cache)
        headers[ERROR_HEADER] = "origin_status"
        return Reply(reply.status, headers)

    def _entry_reply(self, method: str, conditions: Preconditions, meta: EntryMeta) -> Reply:
        answer = plan_answer(
            method, conditions, entry_kept(meta), meta.size, seen_at=meta.stored_at
        )
        cache = hit_headers(meta, time.time())
        if method == "HEAD" or not answer.sends_object:
            return _answer_reply(method, answer, cache)
        fill = Fill.complete(meta.key, self.store.data_path(meta.key), meta.size)
        return self._object_reply(answer, cache, fill.reader())

    async def _fill_reply(
        self, method: str, conditions: Preconditions, reader: FillReader
    ) -> Reply:
        """Answer from a fill, as its origin's headers decide; whatever the answer, the fill
        goes on (it belongs to no client) and becomes the entry."""
        fill = reader.fill
        await fill.headers_ready.wait()
        if fill.error is not None and not fill.headers_published:
            reader.close()
            return _failure_reply(fill.error, fill.task_id, fill.route)
        answer = plan_answer(
            method,
            conditions,
            fill.headers,
            fill.size,
            seen_at=time.time(),
            part=fill.status == 206,
        )
        cache = miss_headers(fill.task_id, fill.route)
        if not answer.sends_object:
            reader.close()
            return _answer_reply(method, answer, cache)
        return self._object_reply(answer, cache, reader)

    def _object_reply(self, answer: Answer, cache: Mapping[str, str], reader: FillReader) -> Reply:
        """An answer that sends the fill's bytes: ``answer.byte_range`` of it, else all."""
        fill = reader.fill
        byte_range = answer.byte_range
        start = byte_range.start if byte_range else 0
        stop = byte_range.end + 1 if byte_range else fill.size
        self.store.pin(fill.key)

        def finished() -> None:
            self.store.unpin(fill.key)
            self._update_gauges()

        # A range of all of it (bytes=0-) is the whole object: its last byte waits for the check.
        part = byte_range is not None and (start, stop) != (0, fill.size)
        stream = BodyStream(reader, start, stop, finished, part=part)
        return Reply(answer.status, {**answer.headers, **cache}, stream=stream)

    async def _stream(self, request: web.Request, reply: Reply) -> web.StreamResponse:
        """Send ``reply``'s stream as its bytes arrive."""
        assert reply.stream is not None
        response = web.StreamResponse(status=reply.status, headers=reply.headers)
        try:
            await response.prepare(request)
            async with contextlib.aclosing(reply.stream.chunks()) as chunks:
                async for data in chunks:
                    await response.write(data)
                    self._metrics.response_bytes.inc(len(data))
            await response.write_eof()
        except TransferAborted as error:
            self.count_aborted(error)
            # Drop the connection: with Content-Length sent, the client sees a short body.
            if request.transport is not None:
                request.transport.abort()
        except ConnectionError:
            self._metrics.errors.labels(kind="client").inc()
        return response

    def count_aborted(self, error: TransferAborted) -> None:
        log.warning("aborting a response mid-body: %s", error)
        self._metrics.errors.labels(kind="truncated").inc()


async def _send_reply(request: web.Request, reply: Reply) -> web.StreamResponse:
    """A reply without a stream: headers alone for a HEAD or a 304 (Content-Length kept, as
    the object's), else its body."""
    if request.method == "HEAD" or reply.status == 304:
        response = web.StreamResponse(status=reply.status, headers=reply.headers)
        await response.prepare(request)
        await response.write_eof()
        return response
    return web.Response(status=reply.status, body=reply.body, headers=reply.headers)


def _answer_reply(method: str, answer: Answer, cache: Mapping[str, str]) -> Reply:
    """An answer with no object bytes: any answer to a HEAD, a 304, 412 or 416 to a GET."""
    headers = {**answer.headers, **cache}
    body = PRECONDITION_FAILED_BODY if answer.status == 412 and method != "HEAD" else b""
    return Reply(answer.status, headers, body)


async def _drop_server_header(request: web.Request, response: web.StreamResponse) -> None:
    # aiohttp's own name and version: no business of the client's, and absent from the
    # answers the proxy sends itself, which would then differ from every other answer.
    response.headers.popall("Server", None)


def miss_headers(task_id: str, route: str) -> dict[str, str]:
    return {CACHE_STATUS_HEADER: "MISS", TASK_ID_HEADER: task_id, ROUTE_HEADER: route}


def _failure_reply(error: ShimError, key: str, route: str) -> Reply:
    cache = miss_headers(key, route)
    if isinstance(error, OriginStatus):
        # The origin's own status, headers and body, so the client sees the real failure;
        # OriginStatus has redacted what they repeat of the signature.
        headers = {k: v for k, v in error.headers.items() if k != "Content-Encoding"}
        headers.update({ERROR_HEADER: "origin_status", **cache})
        return Reply(error.status, headers, error.body)
    status = error.status if isinstance(error, UpstreamError) else 502
    reply = error_reply(status, "origin", str(error))
    reply.headers.update(cache)
    return reply
