"""Graceful shutdown: what counts as a transfer in flight, and the drain itself in-process, with
mitmproxy in front of a real S3 server slowed by the relay."""

from __future__ import annotations

import asyncio
import http.client
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from mitmproxy import options
from mitmproxy.test import tflow
from mitmproxy.tools.dump import DumpMaster

from shim.config import Settings
from shim.lifecycle import TUNNEL_IDLE_SECONDS, ConnectionActivity, GracefulShutdown, in_flight
from tests.support.procs import free_port
from tests.support.relay import Relay
from tests.support.servers import S3Server, put_object, s3_client, start_s3rver

pytestmark = pytest.mark.origin

MIB = 1024 * 1024
BUCKET = "lifecycle"


def activity(
    exchanges: int = 0, tunnels: int = 0, idle_seconds: float = 60.0, unsent_bytes: int = 0
) -> ConnectionActivity:
    return ConnectionActivity(exchanges, tunnels, idle_seconds, unsent_bytes)


@pytest.mark.parametrize(
    ("state", "busy"),
    [
        (activity(), False),  # an idle keep-alive connection
        (activity(exchanges=1), True),  # waiting for, or streaming, a response
        (activity(exchanges=2, idle_seconds=600), True),  # a slow origin is still a transfer
        (activity(unsent_bytes=1), True),  # a response queued whole, not sent yet (mapped hit)
        (activity(tunnels=1, idle_seconds=0.0), True),  # bytes moving through a tunnel
        (activity(tunnels=1, idle_seconds=TUNNEL_IDLE_SECONDS), False),  # a quiet tunnel
        (activity(tunnels=1, idle_seconds=600, unsent_bytes=10), True),
    ],
)
def test_in_flight(state: ConnectionActivity, busy: bool) -> None:
    assert in_flight(state) is busy


@dataclass
class FakeService:
    """The two attributes GracefulShutdown reads and writes on the shim addon."""

    settings: Settings | None
    ready: bool = True


def test_responses_while_draining_close_their_http1_connection() -> None:
    shutdown = GracefulShutdown(FakeService(Settings()))
    before = tflow.tflow(resp=True)
    shutdown.responseheaders(before)
    assert "Connection" not in before.response.headers  # type: ignore[union-attr]

    shutdown.draining = True
    http1, http2, upgrade = (tflow.tflow(resp=True) for _ in range(3))
    http2.request.http_version = "HTTP/2.0"
    assert upgrade.response is not None
    upgrade.response.status_code = 101
    upgrade.response.headers["Connection"] = "Upgrade"
    for flow in (http1, http2, upgrade):
        shutdown.responseheaders(flow)
    assert http1.response is not None and http1.response.headers["Connection"] == "close"
    assert http2.response is not None and "Connection" not in http2.response.headers
    assert upgrade.response.headers["Connection"] == "Upgrade"


# -- the drain, in-process ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[S3Server, bytes]]:
    body = os.urandom(8 * MIB)
    with start_s3rver(tmp_path_factory.mktemp("s3rver")) as server:
        put_object(s3_client(server), BUCKET, "slow.bin", body)
        yield server, body


@pytest.fixture
def slow_url(origin: tuple[S3Server, bytes]) -> Iterator[str]:
    """A presigned URL of the 8 MiB object, through a relay sending 4 MB/s (about 2 s)."""
    server, _ = origin
    with Relay(server.host, server.port, rate_limit_bytes_per_s=4e6) as relay:
        client = s3_client(server, endpoint_url=relay.endpoint)
        yield client.generate_presigned_url(
            "get_object", Params={"Bucket": BUCKET, "Key": "slow.bin"}
        )


@dataclass
class Drained:
    body: bytes | Exception
    ready_after_stop: bool
    refused_after_stop: bool
    idle_closed: bool
    run_seconds_after_body: float


def drain(url: str, grace: float) -> Drained:
    """Start mitmproxy with GracefulShutdown only (the request passes through to the relay),
    download ``url`` plus hold one idle keep-alive connection, stop mid-transfer."""
    port = free_port()

    async def scenario() -> Drained:
        opts = options.Options()
        master = DumpMaster(opts, with_termlog=False, with_dumper=False)
        service = FakeService(Settings(shutdown_grace=grace))
        shutdown = GracefulShutdown(service)
        master.addons.add(shutdown)  # type: ignore[no-untyped-call]
        opts.update(mode=[f"regular@127.0.0.1:{port}"])  # type: ignore[no-untyped-call]
        run = asyncio.create_task(master.run())
        idle = await asyncio.to_thread(_connect_when_listening, port)
        # mitmproxy buffers a body it does not stream: the download is in flight until the
        # relay has sent all of it, then goes out in one piece.
        download = asyncio.create_task(asyncio.to_thread(_download, port, url))
        await asyncio.sleep(0.5)
        shutdown.stop("test")
        ready_after_stop = service.ready
        refused = await asyncio.to_thread(_refused, port)
        idle_closed = await asyncio.to_thread(_closed_by_peer, idle)
        body: bytes | Exception
        try:
            body = await download
        except (http.client.HTTPException, ConnectionError) as error:
            body = error
        body_done = time.monotonic()
        await asyncio.wait_for(run, 30)
        return Drained(body, ready_after_stop, refused, idle_closed, time.monotonic() - body_done)

    return asyncio.run(scenario())


def _connect_when_listening(port: int) -> socket.socket:
    deadline = time.monotonic() + 10
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=5)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _download(port: int, url: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", url)
        return conn.getresponse().read()
    finally:
        conn.close()


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def _closed_by_peer(sock: socket.socket) -> bool:
    with sock:
        sock.settimeout(5)
        try:
            return sock.recv(1) == b""
        except TimeoutError:
            return False


@pytest.mark.origin
def test_stop_lets_the_transfer_finish_and_closes_idle_connections(
    slow_url: str, origin: tuple[S3Server, bytes]
) -> None:
    _, body = origin
    result = drain(slow_url, grace=25)
    assert result.body == body
    assert result.ready_after_stop is False
    assert result.refused_after_stop
    assert result.idle_closed
    # Over once the download is: the idle connection did not hold it for the grace period.
    assert result.run_seconds_after_body < 3


@pytest.mark.origin
def test_stop_cuts_what_outlasts_the_grace(slow_url: str) -> None:
    started = time.monotonic()
    result = drain(slow_url, grace=0.3)
    # Buffered by mitmproxy and cut before it was complete: the client got no response at all.
    assert isinstance(result.body, http.client.RemoteDisconnected | ConnectionError)
    assert result.idle_closed
    assert time.monotonic() - started < 1.5 + 3
