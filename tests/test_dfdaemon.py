"""What shim sends a dfdaemon, and how it reads the answer."""

from __future__ import annotations

import asyncio

import h11
import pytest

from shim._errors import UnansweredError, UpstreamError
from shim.dfdaemon import (
    DragonflyOptions,
    dragonfly_headers,
    request_line,
    request_via_dfdaemon,
    task_id_from,
)
from tests.support.procs import free_port

FILTERED = ("X-Amz-Credential", "X-Amz-Signature", "sig", "se")


def test_both_filter_dialects_carry_the_whole_list_and_p2p_is_forced() -> None:
    headers = dragonfly_headers(DragonflyOptions(), FILTERED)
    assert headers == {
        "X-Dragonfly-Filter": "X-Amz-Credential&X-Amz-Signature&sig&se",
        "X-Dragonfly-Filtered-Query-Params": "X-Amz-Credential,X-Amz-Signature,sig,se",
        "X-Dragonfly-Use-P2P": "true",
    }


def test_tag_application_and_priority_are_sent_only_when_set() -> None:
    headers = dragonfly_headers(DragonflyOptions("models-v2", "torchserve", 0), FILTERED)
    assert headers["X-Dragonfly-Tag"] == "models-v2"
    assert headers["X-Dragonfly-Application"] == "torchserve"
    assert headers["X-Dragonfly-Priority"] == "0"
    assert "X-Dragonfly-Priority" not in dragonfly_headers(DragonflyOptions(), FILTERED)


def test_task_id_is_read_from_either_dialect_case_insensitively() -> None:
    assert task_id_from({"x-dragonfly-task-id": "rust"}) == "rust"
    assert task_id_from({"X-Dragonfly-Task": "go"}) == "go"
    assert task_id_from({"X-Dragonfly-Task-ID": "rust", "X-Dragonfly-Task": "go"}) == "rust"
    assert task_id_from({"X-Dragonfly-Task-ID": ""}) is None
    assert task_id_from({}) is None


def test_request_is_absolute_form_with_the_origin_host_and_the_query_untouched() -> None:
    url = "https://bucket.s3.us-east-1.amazonaws.com/a%20b?X-Amz-Signature=ab%2Fcd&x=1"
    conn = h11.Connection(h11.CLIENT)
    wire = conn.send(request_line("GET", url, {"X-Dragonfly-Use-P2P": "true"})) or b""
    head = wire.decode()
    assert head.startswith(f"GET {url} HTTP/1.1\r\n")
    assert "\r\nHost: bucket.s3.us-east-1.amazonaws.com\r\n" in head
    assert "\r\nX-Dragonfly-Use-P2P: true\r\n" in head
    assert "\r\nConnection: close\r\n" in head


def test_a_refused_connection_is_unanswered_so_the_request_may_be_sent_again() -> None:
    request = request_via_dfdaemon(
        ("127.0.0.1", free_port()), "GET", "http://h/k", {}, connect_timeout=5, read_timeout=5
    )
    with pytest.raises(UnansweredError, match="dfdaemon unreachable"):
        asyncio.run(request)


def read_through_dfdaemon(answer: list[bytes]) -> bytes | str:
    """The body shim reads from a peer that writes ``answer`` piece by piece (a pause between
    pieces, so the head and the body's start arrive together and the rest in reads of their
    own), or the error that cut it short."""

    async def main() -> bytes | str:
        async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            for piece in answer:
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0.01)
            writer.close()

        server = await asyncio.start_server(peer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            reply = await request_via_dfdaemon(
                ("127.0.0.1", port), "GET", "http://h/k", {}, connect_timeout=5, read_timeout=5
            )
            body = bytearray()
            try:
                async for chunk in reply.chunks():
                    body += chunk
            except UpstreamError as error:
                return str(error)
            finally:
                reply.close()
            return bytes(body)

    return asyncio.run(main())


def test_a_body_with_a_length_is_read_whole_past_h11() -> None:
    body = bytes(range(256)) * 40_000  # 10 MB: more than one read buffer
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
    pieces = [head + body[:1000], body[1000:3_000_000], body[3_000_000:]]
    assert read_through_dfdaemon(pieces) == body


def test_a_chunked_body_is_read_through_h11() -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert read_through_dfdaemon([head + b"5\r\nhello\r\n", b"6\r\n world\r\n0\r\n\r\n"]) == (
        b"hello world"
    )


def test_a_body_shorter_than_its_length_is_an_error() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"
    assert read_through_dfdaemon([head + b"x" * 10, b"y" * 40]) == (
        "dfdaemon closed the connection mid-body"
    )
