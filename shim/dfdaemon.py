"""Talking to a Dragonfly dfdaemon's proxy: what to send (pure) and one request over plain HTTP
in absolute form (``GET https://bucket/key?sig HTTP/1.1``), which both the Go and the Rust
dfdaemon accept and fetch over TLS themselves. Not CONNECT: the Go dfdaemon then tunnels
blindly (no P2P) and the Rust one intercepts with its own certificate.

HTTP/1.1 framing is h11's; this module only moves bytes, so a body cut short after the
headers is an error here, never a short success. It sends exactly one request and follows no
redirect: a 3xx is the reply, for the caller to pass on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import urlsplit

import h11

from shim._errors import UnansweredError, UpstreamError

_READ_SIZE = 1 << 20


@dataclass(frozen=True, slots=True)
class DragonflyOptions:
    tag: str = ""
    application: str = ""
    priority: int | None = None


def dragonfly_headers(options: DragonflyOptions, filtered: Sequence[str]) -> dict[str, str]:
    """Request headers for a dfdaemon: both filter dialects with the full list (the Rust header
    replaces its default list, which lacks e.g. Azure's SAS parameters), P2P forced on."""
    headers = {
        "X-Dragonfly-Filter": "&".join(filtered),  # Go dfdaemon
        "X-Dragonfly-Filtered-Query-Params": ",".join(filtered),  # Rust dfdaemon
        "X-Dragonfly-Use-P2P": "true",
    }
    if options.tag:
        headers["X-Dragonfly-Tag"] = options.tag
    if options.application:
        headers["X-Dragonfly-Application"] = options.application
    if options.priority is not None:
        headers["X-Dragonfly-Priority"] = str(options.priority)
    return headers


def task_id_from(headers: Mapping[str, str]) -> str | None:
    """The task ID a dfdaemon reports: Rust ``X-Dragonfly-Task-ID``, Go ``X-Dragonfly-Task``."""
    lowered = {name.lower(): value for name, value in headers.items()}
    return lowered.get("x-dragonfly-task-id") or lowered.get("x-dragonfly-task") or None


def request_line(method: str, url: str, headers: Mapping[str, str]) -> h11.Request:
    """The absolute-form request for ``url``, with the Host header the origin expects."""
    host = urlsplit(url).netloc
    return h11.Request(
        method=method,
        target=url.encode("ascii"),
        headers=[("Host", host), *headers.items(), ("Connection", "close")],
    )


@dataclass
class DfdaemonReply:
    status: int
    headers: dict[str, str]
    content_length: int | None
    _conn: h11.Connection = field(repr=False)
    _reader: asyncio.StreamReader = field(repr=False)
    _writer: asyncio.StreamWriter = field(repr=False)
    _read_timeout: float = field(repr=False)
    _closed_by_peer: bool = field(default=False, repr=False)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; UpstreamError if it ends before its framing says."""
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return

    async def _next_event(self) -> h11.Event | type[h11.PAUSED]:
        # Until the response head is complete (status 0), a lost connection is unanswered.
        lost = UnansweredError if self.status == 0 else UpstreamError
        while True:
            try:
                event = self._conn.next_event()
            except h11.RemoteProtocolError as error:
                if self._closed_by_peer:
                    raise lost(f"dfdaemon closed the connection: {error}") from None
                raise UpstreamError(f"dfdaemon broke the response: {error}") from None
            if event is not h11.NEED_DATA:
                return cast("h11.Event | type[h11.PAUSED]", event)
            try:
                data = await asyncio.wait_for(self._reader.read(_READ_SIZE), self._read_timeout)
            except TimeoutError:
                raise UpstreamError("dfdaemon stalled", status=504) from None
            except OSError as error:
                raise lost(f"dfdaemon connection failed: {error.strerror}") from None
            self._closed_by_peer = not data
            self._conn.receive_data(data)

    def close(self) -> None:
        self._writer.close()


async def request_via_dfdaemon(
    address: tuple[str, int],
    method: str,
    url: str,
    headers: Mapping[str, str],
    *,
    connect_timeout: float,
    read_timeout: float,
) -> DfdaemonReply:
    """Send one request through the dfdaemon at ``address``; return once its headers arrived.

    Raises UpstreamError when the dfdaemon cannot be reached or fails before its response
    headers: nothing has reached the client then, so the caller may still fall back. That
    error is an UnansweredError when the connection was refused, reset or closed: the request
    may be sent again.
    """
    where = f"{address[0]}:{address[1]}"
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(*address), connect_timeout)
    except TimeoutError:
        raise UpstreamError(f"dfdaemon at {where} did not accept a connection in time") from None
    except OSError as error:
        raise UnansweredError(f"dfdaemon unreachable at {where}: {error}") from None
    conn = h11.Connection(h11.CLIENT)
    reply = DfdaemonReply(0, {}, None, conn, reader, writer, read_timeout)
    try:
        writer.write(conn.send(request_line(method, url, headers)) or b"")
        writer.write(conn.send(h11.EndOfMessage()) or b"")
        try:
            await writer.drain()
        except OSError as error:
            raise UnansweredError(f"dfdaemon connection failed: {error.strerror}") from None
        while True:
            event = await reply._next_event()
            if isinstance(event, h11.Response):
                break
            if not isinstance(event, h11.InformationalResponse):
                raise UnansweredError("dfdaemon closed the connection without answering")
    except BaseException:
        writer.close()
        raise
    reply.status = event.status_code
    reply.headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in event.headers}
    length = reply.headers.get("content-length")  # h11 lowercases header names
    reply.content_length = int(length) if length and length.isascii() and length.isdigit() else None
    return reply
