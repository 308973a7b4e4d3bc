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
import socket
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import h11

from shim._errors import UnansweredError, UpstreamError

# Body bytes per read (two such buffers per response), and head bytes per read.
_READ_SIZE = 4 << 20
_HEAD_READ_SIZE = 64 * 1024


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
    _sock: socket.socket = field(repr=False)
    _read_timeout: float = field(repr=False)
    _closed_by_peer: bool = field(default=False, repr=False)
    _framed_by_length: int | None = field(default=None, repr=False)

    async def chunks(self) -> AsyncIterator[bytes | memoryview]:
        """The body as it arrives; UpstreamError if it ends before its framing says.

        A body with a Content-Length is read straight from the socket, past h11, into two
        buffers taken in turn (no copy, no per-read framing work: a local dfdaemon sends
        GB/s): a chunk stays valid until the one after the next is asked for."""
        remaining = self._framed_by_length
        while True:
            event = await self._next_event(read=remaining is None)
            if event is h11.NEED_DATA:
                break  # h11 holds no more of the body: the rest comes from the socket
            if isinstance(event, h11.Data):
                if remaining is not None:
                    remaining -= len(event.data)
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return
        assert remaining is not None
        buffers = (memoryview(bytearray(_READ_SIZE)), memoryview(bytearray(_READ_SIZE)))
        turn = 0
        while remaining > 0:
            buffer = buffers[turn]
            turn ^= 1
            count = await self._recv_into(buffer[: min(_READ_SIZE, remaining)])
            if count == 0:
                raise UpstreamError("dfdaemon closed the connection mid-body")
            remaining -= count
            yield buffer[:count]

    async def _recv_into(self, buffer: memoryview) -> int:
        """Bytes read into ``buffer``: as many as arrive until it is full or a moment passes
        with nothing more (large reads; never waiting for more than one to start)."""
        loop = asyncio.get_running_loop()
        try:
            count = await asyncio.wait_for(
                loop.sock_recv_into(self._sock, buffer), self._read_timeout
            )
            while 0 < count < len(buffer):
                more = self._sock.recv_into(buffer[count:])  # what is already here
                if more == 0:
                    break
                count += more
        except TimeoutError:
            raise UpstreamError("dfdaemon stalled", status=504) from None
        except BlockingIOError:
            pass  # nothing more for now
        except OSError as error:
            raise UpstreamError(f"dfdaemon connection failed: {error.strerror}") from None
        return count

    async def _next_event(
        self, *, read: bool = True
    ) -> h11.Event | type[h11.PAUSED] | type[h11.NEED_DATA]:
        """h11's next event; with ``read`` False, NEED_DATA instead of reading more."""
        # Until the response head is complete (status 0), a lost connection is unanswered.
        lost = UnansweredError if self.status == 0 else UpstreamError
        while True:
            try:
                event = self._conn.next_event()
            except h11.RemoteProtocolError as error:
                if self._closed_by_peer:
                    raise lost(f"dfdaemon closed the connection: {error}") from None
                raise UpstreamError(f"dfdaemon broke the response: {error}") from None
            if event is not h11.NEED_DATA or not read:
                return event
            loop = asyncio.get_running_loop()
            try:
                data = await asyncio.wait_for(
                    loop.sock_recv(self._sock, _HEAD_READ_SIZE), self._read_timeout
                )
            except TimeoutError:
                raise UpstreamError("dfdaemon stalled", status=504) from None
            except OSError as error:
                raise lost(f"dfdaemon connection failed: {error.strerror}") from None
            self._closed_by_peer = not data
            self._conn.receive_data(data)

    def close(self) -> None:
        self._sock.close()


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
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET)
    sock.setblocking(False)
    try:
        try:
            await asyncio.wait_for(loop.sock_connect(sock, address), connect_timeout)
        except TimeoutError:
            raise UpstreamError(
                f"dfdaemon at {where} did not accept a connection in time"
            ) from None
        except OSError as error:
            raise UnansweredError(f"dfdaemon unreachable at {where}: {error}") from None
        conn = h11.Connection(h11.CLIENT)
        reply = DfdaemonReply(0, {}, None, conn, sock, read_timeout)
        request = conn.send(request_line(method, url, headers)) or b""
        try:
            await loop.sock_sendall(sock, request + (conn.send(h11.EndOfMessage()) or b""))
        except OSError as error:
            raise UnansweredError(f"dfdaemon connection failed: {error.strerror}") from None
        while True:
            event = await reply._next_event()
            if isinstance(event, h11.Response):
                break
            if not isinstance(event, h11.InformationalResponse):
                raise UnansweredError("dfdaemon closed the connection without answering")
    except BaseException:
        sock.close()
        raise
    reply.status = event.status_code
    reply.headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in event.headers}
    length = reply.headers.get("content-length")  # h11 lowercases header names
    if length and length.isascii() and length.isdigit():
        reply.content_length = int(length)
    # Transfer-Encoding frames the body when both are sent (RFC 9112 6.3): h11 reads it then,
    # and the caller still holds it to the Content-Length it announced.
    if "transfer-encoding" not in reply.headers:
        reply._framed_by_length = reply.content_length
    return reply
