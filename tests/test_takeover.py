"""Answers written on the client's connection: the head they carry, and when a flow's
connection can be written to directly (else the cache server relays the answer)."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from mitmproxy.test import tflow

from shim.cache.fill import FileSpan
from shim.takeover import BufferBudget, ClientConnection, ClientConnections, response_head


def test_the_head_closes_the_connection_and_keeps_the_length() -> None:
    head = response_head(206, {"Content-Length": "10", "ETag": '"e"'}, chunked=False)
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 206 Partial Content"
    assert {"Content-Length: 10", 'ETag: "e"', "Connection: close"} <= set(lines)
    assert "Transfer-Encoding: chunked" not in lines and head.endswith(b"\r\n\r\n")


def test_a_body_of_unknown_length_is_chunked() -> None:
    lines = response_head(200, {}, chunked=True).decode().split("\r\n")
    assert "Transfer-Encoding: chunked" in lines
    assert not any(line.startswith("Content-Length") for line in lines)


@dataclass
class Watchdog:
    activity: int = 0

    def register_activity(self) -> None:
        self.activity += 1


@dataclass
class Io:
    writer: Any


@dataclass
class Handler:
    transports: dict[Any, Io]
    timeout_watchdog: Watchdog = field(default_factory=Watchdog)


@dataclass
class Proxyserver:
    connections: dict[str, Handler]


@pytest.fixture
def pair() -> Iterator[tuple[asyncio.AbstractEventLoop, asyncio.StreamWriter, socket.socket]]:
    """An event loop, a writer on one end of a connected pair, and the other end."""
    loop = asyncio.new_event_loop()
    ours, theirs = socket.socketpair()

    async def open_writer() -> asyncio.StreamWriter:
        return (await asyncio.open_connection(sock=ours))[1]

    try:
        yield loop, loop.run_until_complete(open_writer()), theirs
    finally:
        theirs.close()
        loop.close()


@pytest.fixture
def writer(
    pair: tuple[asyncio.AbstractEventLoop, asyncio.StreamWriter, socket.socket],
) -> asyncio.StreamWriter:
    return pair[1]


@pytest.mark.parametrize("large_sends", [1, 0])
def test_a_file_span_reaches_a_slow_reader_byte_for_byte(
    pair: tuple[asyncio.AbstractEventLoop, asyncio.StreamWriter, socket.socket],
    tmp_path: Path,
    large_sends: int,
) -> None:
    """Several blocks through two reused buffers (or, with no large send free, by sendfile),
    from an offset off a block boundary, to a reader slower than the file: every byte
    arrives once, in order."""
    loop, writer, theirs = pair
    body = os.urandom(19 << 20)
    path = tmp_path / "body"
    path.write_bytes(body)
    received = bytearray()

    def read_slowly() -> None:
        while chunk := theirs.recv(7000):  # the socket frees room a little at a time
            received.extend(chunk)

    reader = threading.Thread(target=read_slowly)
    reader.start()
    watchdog = Watchdog()
    budget = BufferBudget(large_sends)
    client = ClientConnection(writer, None, watchdog.register_activity, budget)
    fd = os.open(path, os.O_RDONLY)
    try:
        offset = 12345  # not on a block boundary

        async def send() -> None:
            await client.send_file(FileSpan(fd, offset, len(body) - offset))
            writer.close()
            await writer.wait_closed()

        loop.run_until_complete(send())
        reader.join(timeout=30)
    finally:
        os.close(fd)
    assert bytes(received) == body[offset:]
    assert watchdog.activity >= 1
    with budget.take() as large:
        assert large is bool(large_sends)  # the send gave its share back


def test_a_buffer_budget_bounds_the_large_sends_at_once() -> None:
    budget = BufferBudget(2)
    with budget.take() as first, budget.take() as second, budget.take() as third:
        assert (first, second, third) == (True, True, False)
    with pytest.raises(ConnectionError), budget.take():
        raise ConnectionError  # a send that failed gives its share back too
    with budget.take() as first, budget.take() as second:
        assert first and second


def test_a_plain_http_1_1_connection_mitmproxy_holds_can_be_written_to(
    writer: asyncio.StreamWriter,
) -> None:
    flow = tflow.tflow()
    flow.client_conn.timestamp_tls_setup = None  # plain HTTP
    server = Proxyserver({flow.client_conn.id: Handler({flow.client_conn: Io(writer)})})
    assert ClientConnections().of(flow, server) is not None


def test_what_cannot_be_written_to_directly(writer: asyncio.StreamWriter) -> None:
    connections = ClientConnections()
    flow = tflow.tflow()  # over TLS, but the TLS object was never handed over
    server = Proxyserver({flow.client_conn.id: Handler({flow.client_conn: Io(writer)})})
    assert connections.of(flow, server) is None
    flow.client_conn.timestamp_tls_setup = None
    for version in ("HTTP/1.0", "HTTP/2.0"):
        flow.request.http_version = version
        assert connections.of(flow, server) is None
    flow.request.http_version = "HTTP/1.1"
    assert connections.of(flow, Proxyserver({})) is None  # a connection that is gone
    assert connections.of(flow, object()) is None  # a mitmproxy this module does not know
    not_a_stream = Proxyserver({flow.client_conn.id: Handler({flow.client_conn: Io(object())})})
    assert connections.of(flow, not_a_stream) is None  # e.g. a WireGuard or local-mode stream
    writer.close()
    assert connections.of(flow, server) is None
