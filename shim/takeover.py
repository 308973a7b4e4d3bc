"""Sending an answer on the client's own connection, instead of through mitmproxy's relay.

mitmproxy moves a body through its protocol layers 64 KiB at a time, and over TLS through
pyOpenSSL's memory BIO: a few hundred MB/s at best, a fraction of what a local dfdaemon or a TLS
file server delivers. So the addon writes the answer to an object itself, in its ``request``
hook, while mitmproxy waits for that hook: the head, then the body straight from the fill's (or
the entry's) file, with ``sendfile`` on plain HTTP (no copy through Python) and, over TLS, in
slices of a few hundred KiB encrypted by the connection's own pyOpenSSL object (the one that
did the handshake, so records and keys stay in step). mitmproxy's HTTP/1 state machine cannot be
told that a response it did not send is complete, so the answer says ``Connection: close`` and
the connection ends with it.

Only the writing is done here; what to answer is ``shim.cache.server``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from mitmproxy import connection, http
from mitmproxy.net.http import http1
from OpenSSL import SSL

from shim.cache.fill import FileSpan

# Plaintext per encryption: small enough that it and its records stay in the CPU's cache
# (measured: 256 KiB slices encrypt at twice the speed of 1 MiB ones).
TLS_SLICE = 256 * 1024
# Bytes read from the file per thread hop on TLS, and sent per sendfile call on plain HTTP.
_READ_SIZE = 1 << 20
SENDFILE_SIZE = 64 << 20


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
        """``span``'s bytes, from its file: by sendfile on plain HTTP."""
        if self._tls is not None:
            await self._send_file_encrypted(span)
            return
        loop = asyncio.get_running_loop()
        # A file object over the fill's descriptor, which stays the fill's to close.
        with io.FileIO(span.fd, closefd=False) as file:
            offset, end = span.offset, span.offset + span.count
            while offset < end:
                count = min(SENDFILE_SIZE, end - offset)
                self._check_open()
                sent = await loop.sendfile(self._writer.transport, file, offset, count)
                if sent != count:
                    raise ConnectionError("the client connection closed mid-body")
                offset += count
                self._keep_alive()

    async def _send_file_encrypted(self, span: FileSpan) -> None:
        buffer = bytearray(_READ_SIZE)
        offset, end = span.offset, span.offset + span.count
        while offset < end:
            wanted = min(_READ_SIZE, end - offset)
            view = memoryview(buffer)[:wanted]
            got = await asyncio.to_thread(os.preadv, span.fd, [view], offset)
            if got != wanted:
                raise OSError("the cache file is shorter than its entry")
            await self.send(view)
            offset += got

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
