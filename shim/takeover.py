"""Sending an answer on the client's own connection, instead of through mitmproxy's relay.

mitmproxy moves a body through its protocol layers 64 KiB at a time, and over TLS through
pyOpenSSL's memory BIO: a few hundred MB/s at best, a fraction of what a local dfdaemon or a TLS
file server delivers. So the addon writes the answer to an object itself, in its ``request``
hook, while mitmproxy waits for that hook: the head, then the body straight from the fill's (or
the entry's) file, read in large blocks into two buffers taken in turn (the next read, in a
thread, while the current one is sent) and written as they are on plain HTTP, or, over TLS, in
slices of a few hundred KiB encrypted by the connection's own pyOpenSSL object (the one that
did the handshake, so records and keys stay in step). Not ``sendfile``: measured on loopback,
where model servers beside shim read it, it moved 1.2-1.4 GB/s against 2.2-2.4 GB/s for
reads and writes of 4 MiB. mitmproxy's HTTP/1 state machine cannot be
told that a response it did not send is complete, so the answer says ``Connection: close`` and
the connection ends with it.

Only the writing is done here; what to answer is ``shim.cache.server``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import weakref
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any

from mitmproxy import connection, http
from mitmproxy.net.http import http1
from OpenSSL import SSL

from shim.cache.fill import FileSpan

# Plaintext per encryption: small enough that it and its records stay in the CPU's cache
# (measured: 256 KiB slices encrypt at twice the speed of 1 MiB ones).
TLS_SLICE = 256 * 1024
# Bytes read from a file per thread hop: over TLS, then encrypted slice by slice; on plain HTTP,
# then written whole (large writes: loopback moves GB/s).
_TLS_READ_SIZE = 1 << 20
_PLAIN_READ_SIZE = 4 << 20
# Bytes of a file a caller hands to ``send_file`` at once, at most.
SPAN_SIZE = 64 << 20


def response_head(status: int, headers: Mapping[str, str], *, chunked: bool) -> bytes:
    """The HTTP/1.1 head of an answer sent here: ``Connection: close``, as the connection ends
    with it, and chunked framing when the length is unknown."""
    response = http.Response.make(status, b"", dict(headers))
    del response.headers["Content-Length"]
    if "Content-Length" in headers:
        response.headers["Content-Length"] = headers["Content-Length"]
    elif chunked:
        response.headers["Transfer-Encoding"] = "chunked"
    response.headers["Connection"] = "close"
    head: bytes = http1.assemble_response_head(response)  # type: ignore[no-untyped-call]
    return head


class ClientConnection:
    """A client connection mitmproxy accepted, written to directly."""

    def __init__(
        self,
        writer: asyncio.StreamWriter,
        tls: SSL.Connection | None,
        keep_alive: Callable[[], None],
    ) -> None:
        self._writer = writer
        self._tls = tls
        # mitmproxy closes a connection it saw no activity on for a while; this is activity.
        self._keep_alive = keep_alive

    def _check_open(self) -> None:
        if self._writer.is_closing():
            raise ConnectionResetError("the client connection was closed")

    async def send(self, data: bytes | memoryview) -> None:
        self._check_open()
        if self._tls is None:
            self._writer.write(data)
        else:
            view = memoryview(data)
            for start in range(0, len(view), TLS_SLICE):
                self._encrypt(view[start : start + TLS_SLICE])
        self._keep_alive()
        await self._writer.drain()

    async def send_file(self, span: FileSpan) -> None:
        """``span``'s bytes, from its file."""
        if self._tls is not None:
            async with contextlib.aclosing(_file_views(span, _TLS_READ_SIZE)) as views:
                async for view in views:
                    await self.send(view)  # encrypted at once: the view is free again
            return
        transport = self._writer.transport
        low, high = transport.get_write_buffer_limits()
        # The transport keeps what the socket did not take as a view of the buffer, which
        # is read into again two blocks later: drain() now waits until it was all sent.
        transport.set_write_buffer_limits(high=0)
        try:
            async with contextlib.aclosing(_file_views(span, _PLAIN_READ_SIZE)) as views:
                async for view in views:
                    await self.send(view)
        finally:
            if not transport.is_closing():
                transport.set_write_buffer_limits(high=high, low=low)

    async def finish(self) -> None:
        """End TLS cleanly (close_notify) and flush: the answer is complete."""
        if self._tls is not None:
            with contextlib.suppress(SSL.Error):  # the peer's side is gone: nothing to tell
                self._tls.shutdown()
            self._flush_tls()
        await self._writer.drain()

    def _encrypt(self, plaintext: memoryview) -> None:
        assert self._tls is not None
        self._tls.sendall(plaintext)
        self._flush_tls()

    def _flush_tls(self) -> None:
        assert self._tls is not None
        while True:
            try:
                ciphertext = self._tls.bio_read(TLS_SLICE + 65536)
            except SSL.WantReadError:
                return
            self._writer.write(ciphertext)


async def _file_views(span: FileSpan, size: int) -> AsyncGenerator[memoryview, None]:
    """``span``'s bytes in blocks of up to ``size``, read into two buffers taken in turn, the
    next block while the caller sends the current one: a view is valid until the caller asks
    for the next."""
    buffers = (memoryview(bytearray(size)), memoryview(bytearray(size)))
    offset, end = span.offset, span.offset + span.count

    def read(turn: int) -> asyncio.Future[memoryview]:
        view = buffers[turn][: min(size, end - offset)]
        return asyncio.ensure_future(asyncio.to_thread(_read_into, span.fd, view, offset))

    turn = 0
    pending = read(turn) if offset < end else None
    try:
        while pending is not None:
            view = await pending
            offset += len(view)
            turn ^= 1
            pending = read(turn) if offset < end else None
            yield view
    finally:
        if pending is not None:  # the caller stopped: the read is not to outlive the buffers
            with contextlib.suppress(Exception):
                await pending


def _read_into(fd: int, view: memoryview, offset: int) -> memoryview:
    if os.preadv(fd, [view], offset) != len(view):
        raise OSError("the file is shorter than its entry")
    return view


class ClientConnections:
    """Finds the connection a flow came on, as mitmproxy holds it. Lives with the addon, which
    hands it each client's TLS object once the handshake is done."""

    def __init__(self) -> None:
        self._tls: weakref.WeakKeyDictionary[connection.Client, SSL.Connection] = (
            weakref.WeakKeyDictionary()
        )

    def tls_established(self, client: connection.Client, tls: SSL.Connection) -> None:
        self._tls[client] = tls

    def of(self, flow: http.HTTPFlow, proxyserver: Any) -> ClientConnection | None:
        """The flow's client connection, or None when it cannot be written to directly: an
        HTTP/1.0 client (no chunked framing), a connection that is gone or not TCP, or a
        mitmproxy whose internals are not what this module knows."""
        client = flow.client_conn
        if flow.request.http_version != "HTTP/1.1":
            return None
        tls = self._tls.get(client)
        if client.tls_established and tls is None:
            return None
        handler = getattr(proxyserver, "connections", {}).get(client.id)
        io = getattr(handler, "transports", {}).get(client)
        writer = getattr(io, "writer", None)
        watchdog = getattr(handler, "timeout_watchdog", None)
        if not isinstance(writer, asyncio.StreamWriter) or writer.is_closing():
            return None
        keep_alive = getattr(watchdog, "register_activity", None)
        if keep_alive is None:
            return None
        return ClientConnection(writer, tls if client.tls_established else None, keep_alive)
