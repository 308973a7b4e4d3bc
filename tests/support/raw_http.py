"""Requests to a proxy exactly as written, for what ordinary clients will not send: a request
line and Host header that disagree, credentials on a CONNECT, a body streamed for as long as the
proxy keeps reading. Replies are parsed by http.client, so what a test sees is what a client
would."""

from __future__ import annotations

import http.client
import io
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.http import Reply


def send_raw(port: int, head: bytes, body: bytes = b"", *, timeout: float = 10.0) -> Reply:
    """Send ``head`` (a whole request head, CRLFs included) and ``body`` to 127.0.0.1:``port``
    and read one reply. A connection closed before a reply raises ConnectionError."""
    method = head.split(b" ", 1)[0].decode("ascii")
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head + body)
        return read_reply(sock, method)


def read_reply(sock: socket.socket | ssl.SSLSocket, method: str = "GET") -> Reply:
    response = http.client.HTTPResponse(sock, method=method)
    try:
        response.begin()
        return Reply(response.status, response.headers, response.read())
    finally:
        response.close()


@dataclass
class Streamed:
    """The reply to a request whose body was still being sent when the reply came."""

    reply: Reply
    seconds: float  # from the first byte sent to the whole reply read
    sent_before_reply: int  # body bytes the client had sent when the reply was read


def stream_upload(
    port: int, head: bytes, size: int, *, chunk: int = 1 << 20, timeout: float = 30.0
) -> Streamed:
    """Send ``head`` then a ``size``-byte body from another thread, and read the reply while
    the body is still going: a proxy that answers early is seen answering early. The sender
    stops as soon as the connection is closed or the reply has arrived."""
    sent = 0
    done = threading.Event()
    block = b"\0" * chunk
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:

        def send_body() -> None:
            nonlocal sent
            try:
                while sent < size and not done.is_set():
                    piece = block[: min(chunk, size - sent)]
                    sock.sendall(piece)
                    sent += len(piece)
            except OSError:
                pass  # the proxy closed the connection: it will not read the rest

        start = time.monotonic()
        sock.sendall(head)
        sender = threading.Thread(target=send_body, daemon=True)
        sender.start()
        try:
            reply = read_reply(sock, head.split(b" ", 1)[0].decode("ascii"))
            seconds, sent_before_reply = time.monotonic() - start, sent
        finally:
            done.set()
            # Unblocks a sendall() the proxy no longer reads from.
            sock.shutdown(socket.SHUT_RDWR)
            sender.join(timeout)
    return Streamed(reply, seconds, sent_before_reply)


@dataclass
class TunnelReply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


@contextmanager
def tunnel(
    proxy_port: int,
    authority: str,
    *,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> Iterator[tuple[TunnelReply, socket.socket]]:
    """Send ``CONNECT authority`` and yield the proxy's answer with the connection, open, for
    TLS or anything else to follow."""
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=timeout) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        # Byte by byte up to the blank line: nothing of what follows may be buffered away.
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            byte = sock.recv(1)
            if not byte:
                raise ConnectionError(f"proxy closed the connection after {head!r}")
            head += byte
        status_line, _, rest = head.partition(b"\r\n")
        status = int(status_line.split(b" ", 2)[1])
        parsed = http.client.parse_headers(io.BytesIO(rest))
        body = b""
        if status != 200:
            length = int(parsed.get("Content-Length", "0"))
            while len(body) < length:
                data = sock.recv(length - len(body))
                if not data:
                    break
                body += data
        yield TunnelReply(status, parsed, body), sock


def tls_client(
    sock: socket.socket, server_name: str, ca_cert: Path | None
) -> tuple[ssl.SSLSocket, bytes]:
    """TLS over ``sock`` trusting only ``ca_cert`` (or nothing verified when None); returns the
    TLS socket and the DER certificate the other end presented."""
    context = ssl.create_default_context(cafile=str(ca_cert) if ca_cert else None)
    if ca_cert is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    tls = context.wrap_socket(sock, server_hostname=server_name)
    certificate = tls.getpeercert(binary_form=True)
    assert certificate is not None
    return tls, certificate
