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
reads and writes of 4 MiB. But the buffers cost memory per answer, so only a few answers at
once get them (``BufferBudget``); the others go by ``sendfile``, or over TLS 64 KiB at a
time. mitmproxy's HTTP/1 state machine cannot be told that a response it did not send is
complete, so the answer says ``Connection: close`` and the connection ends with it.

Only the writing is done here; what to answer is ``shim.cache.server``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import weakref
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
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
# Answers sending files through those (two each) at once. Beyond them, so that many concurrent
# large answers hold a bounded amount of memory, plain HTTP goes by sendfile (no buffer, but
# 1.2-1.4 GB/s on loopback here) and TLS reads 64 KiB at a time.
LARGE_BUFFER_SENDS = 8
_SMALL_READ_SIZE = 64 * 1024
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


class BufferBudget:
    """How many answers may send files through large buffers at once, across connections."""

    def __init__(self, sends: int = LARGE_BUFFER_SENDS) -> None:
        self._free = sends

    @contextlib.contextmanager
    def take(self) -> Iterator[bool]:
        """True while the caller holds one of the sends; False when none was free."""
        taken = self._free > 0
        self._free -= taken
        try:
            yield taken
        finally:
            self._free += taken


class ClientConnection:
    """A client connection mitmproxy accepted, written to directly."""

    def __init__(
        self,
        writer: asyncio.StreamWriter,
        tls: SSL.Connection | None,
        keep_alive: Callable[[], None],
        budget: BufferBudget,
    ) -> None:
        self._writer = writer
        self._tls = tls
        # mitmproxy closes a connection it saw no activity on for a while; this is activity.
        self._keep_alive = keep_alive
        self._budget = budget

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
        with self._budget.take() as large:
            if self._tls is not None:
                await self._send_views(span, _TLS_READ_SIZE if large else _SMALL_READ_SIZE)
            elif large:
                await self._send_views_plain(span)
            else:
                await self._sendfile(span)

    async def _send_views(self, span: FileSpan, size: int) -> None:
        async with contextlib.aclosing(_file_views(span, size)) as views:
            async for view in views:
                await self.send(view)

    async def _send_views_plain(self, span: FileSpan) -> None:
        transport = self._writer.transport
        low, high = transport.get_write_buffer_limits()
        # The transport keeps what the socket did not take as a view of the buffer, which is
        # read into again once the next block is handed out: drain() now waits until all of
        # it was sent. (Over TLS the transport holds ciphertext, never the buffer.)
        transport.set_write_buffer_limits(high=0)
        try:
            await self._send_views(span, _PLAIN_READ_SIZE)
        finally:
            if not transport.is_closing():
                transport.set_write_buffer_limits(high=high, low=low)

    async def _sendfile(self, span: FileSpan) -> None:
        loop = asyncio.get_running_loop()
        # A file object over the fill's descriptor, which stays the fill's to close.
        with io.FileIO(span.fd, closefd=False) as file:
            self._check_open()
            sent = await loop.sendfile(self._writer.transport, file, span.offset, span.count)
            if sent != span.count:
                raise ConnectionError("the client connection closed mid-body")
            self._keep_alive()

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
    # No larger than the span: a miss sends a growing file in many small spans.
    size = min(size, span.count)
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
        self._budget = BufferBudget()

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
        tls = tls if client.tls_established else None
        return ClientConnection(writer, tls, keep_alive, self._budget)
