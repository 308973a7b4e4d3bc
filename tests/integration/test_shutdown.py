"""SIGTERM with downloads in flight: the real ``shim run`` drains them, or cuts them when the grace
period runs out, and exits 0 either way, without a traceback."""

from __future__ import annotations

import concurrent.futures
import http.client
import os
import signal
import socket
import ssl
import time
import urllib.error
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.support.procs import direct_opener
from tests.support.relay import RelayFactory
from tests.support.servers import S3Server, put_object, s3_client
from tests.support.shim_process import ShimProcess, s3_bucket_config, start_shim

pytestmark = pytest.mark.slow

BUCKET = "shutdown"
MIB = 1024 * 1024
# Read before the signal: the response is streaming by then.
FIRST_BYTES = MIB


@pytest.fixture(scope="module")
def objects(s3rver: S3Server) -> dict[str, bytes]:
    client = s3_client(s3rver)
    bodies = {
        "slow.bin": os.urandom(12 * MIB),
        "hit.bin": os.urandom(32 * MIB),
        "small.bin": os.urandom(1000),
    }
    for key, body in bodies.items():
        put_object(client, BUCKET, key, body)
    return bodies


def proxy_connection(
    proxy_port: int, url: str, ca_cert: Path | None = None
) -> tuple[http.client.HTTPConnection, str]:
    """A connection through the proxy for ``url`` (CONNECT then TLS for https), and the request
    target to send on it."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        context = ssl.create_default_context(cafile=str(ca_cert) if ca_cert else None)
        conn = http.client.HTTPSConnection("127.0.0.1", proxy_port, timeout=60, context=context)
        conn.set_tunnel(parts.hostname or "", parts.port)
        return conn, f"{parts.path}?{parts.query}" if parts.query else parts.path
    return http.client.HTTPConnection("127.0.0.1", proxy_port, timeout=60), url


class Download:
    """One GET through the proxy, read in two steps so a test can act in between."""

    def __init__(
        self,
        proxy_port: int,
        url: str,
        *,
        ca_cert: Path | None = None,
        receive_buffer: int | None = None,
    ) -> None:
        self.conn, target = proxy_connection(proxy_port, url, ca_cert)
        if receive_buffer is not None:
            sock = socket.socket()
            # Set before connecting, so that the window the kernel offers stays small.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            sock.settimeout(60)
            sock.connect(("127.0.0.1", proxy_port))
            self.conn.sock = sock
        self.conn.request("GET", target)
        self.response = self.conn.getresponse()
        self.first = self.response.read(FIRST_BYTES)

    def rest(self, *, pace_bytes_per_s: float | None = None) -> bytes:
        """The rest of the body; raises if it ends short of Content-Length."""
        if pace_bytes_per_s is None:
            return self.first + self.response.read()
        chunks = [self.first]
        while chunk := self.response.read(MIB // 4):
            chunks.append(chunk)
            time.sleep(len(chunk) / pace_bytes_per_s)
        if self.response.length:
            raise http.client.IncompleteRead(b"".join(chunks), self.response.length)
        return b"".join(chunks)

    def close(self) -> None:
        self.conn.close()


def object_url(endpoint: str, key: str) -> str:
    return f"{endpoint}/{BUCKET}/{key}"


def sigterm(shim: ShimProcess) -> float:
    os.kill(shim.pid, signal.SIGTERM)
    return time.monotonic()


def wait_exit(shim: ShimProcess, timeout: float) -> tuple[int, float, str]:
    """(exit code, when it exited, its output); the test fails if it outlives ``timeout``."""
    code = shim.process.wait(timeout)
    exited = time.monotonic()
    output = shim.output()
    shim.stop()
    return code, exited, output


def until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def healthz_status(shim: ShimProcess) -> int:
    try:
        with direct_opener.open(f"{shim.admin}/healthz", timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_sigterm_lets_a_download_in_flight_finish_and_closes_idle_connections(
    scheme: str,
    tmp_path: Path,
    s3rver: S3Server,
    objects: dict[str, bytes],
    relay_factory: RelayFactory,
) -> None:
    body = objects["slow.bin"]
    # 12 MiB at 3 MB/s: about 4 s, well inside the default 25 s grace.
    relay = relay_factory(s3rver.host, s3rver.port, rate_limit_bytes_per_s=3e6)
    shim = start_shim(tmp_path, {"buckets": [s3_bucket_config(BUCKET, relay.endpoint)]})
    endpoint = relay.endpoint.replace("http://", f"{scheme}://")
    with shim, concurrent.futures.ThreadPoolExecutor(1) as reader:
        # A keep-alive connection that served one request and then sits idle.
        idle, target = proxy_connection(
            shim.proxy_port, object_url(endpoint, "small.bin"), shim.ca_cert
        )
        idle.request("GET", target)
        assert idle.getresponse().read() == objects["small.bin"]
        download = Download(shim.proxy_port, object_url(endpoint, "slow.bin"), ca_cert=shim.ca_cert)
        assert download.response.status == 200
        assert download.response.getheader("X-Shim-Cache") == "MISS"
        signalled = sigterm(shim)
        rest = reader.submit(download.rest)

        # Draining: no new connections, /healthz says 503, the idle connection is closed.
        assert until(lambda: refuses_connections(shim.proxy_port))
        assert until(lambda: healthz_status(shim) == 503)
        assert idle.sock is not None
        idle.sock.settimeout(5)
        assert idle.sock.recv(1) == b""
        assert not rest.done(), "the download should still be running while shim drains"

        received = rest.result(timeout=60)
        finished = time.monotonic()
        code, exited, output = wait_exit(shim, timeout=30)
        download.close()
        idle.close()

    assert received == body
    assert code == 0
    assert "Traceback" not in output
    assert "every transfer in flight finished" in output
    # Exits once the download is done: the idle connection did not hold it for the grace.
    assert exited - finished < 5, output
    assert exited - signalled < 20, output


def test_grace_shorter_than_the_transfer_cuts_it_and_keeps_nothing(
    tmp_path: Path, s3rver: S3Server, objects: dict[str, bytes], relay_factory: RelayFactory
) -> None:
    body = objects["slow.bin"]
    # 12 MiB at 2 MB/s: 6 s, against a grace of 1 s.
    relay = relay_factory(s3rver.host, s3rver.port, rate_limit_bytes_per_s=2e6)
    config = {"shutdown_grace": 1, "buckets": [s3_bucket_config(BUCKET, relay.endpoint)]}
    url = object_url(relay.endpoint, "slow.bin")
    shim = start_shim(tmp_path, config)
    with shim:
        download = Download(shim.proxy_port, url)
        assert download.response.status == 200
        assert download.response.getheader("Content-Length") == str(len(body))
        signalled = sigterm(shim)
        with pytest.raises((http.client.IncompleteRead, ConnectionError)) as cut:
            download.rest()
        code, exited, output = wait_exit(shim, timeout=30)
        download.close()

    # A short body, never a complete-looking one: what did arrive is the object's start.
    partial = download.first + (
        cut.value.partial if isinstance(cut.value, http.client.IncompleteRead) else b""
    )
    assert len(partial) < len(body)
    assert body.startswith(partial)
    assert code == 0
    assert "Traceback" not in output
    assert "the 1s grace ran out; cutting 1 transfer(s) in flight" in output
    assert exited - signalled < 6, output

    # Nothing of the cut fill became an entry: a new start fetches the object again, whole.
    relay.rate_limit_bytes_per_s = None
    with start_shim(tmp_path, config) as again:
        reply = Download(again.proxy_port, url)
        assert (reply.response.status, reply.response.getheader("X-Shim-Cache")) == (200, "MISS")
        assert reply.rest() == body
        reply.close()


def test_a_zero_copy_hit_to_a_slow_reader_is_sent_whole(
    tmp_path: Path, s3rver: S3Server, objects: dict[str, bytes]
) -> None:
    body = objects["hit.bin"]
    url = object_url(s3rver.endpoint, "hit.bin")
    shim = start_shim(tmp_path, {"buckets": [s3_bucket_config(BUCKET, s3rver.endpoint)]})
    with shim:
        fill = Download(shim.proxy_port, url)
        assert fill.rest() == body
        fill.close()
        # A hit from the memory map: mitmproxy queues the whole body at once, so most of it is
        # still in shim's send buffer when the signal comes.
        hit = Download(shim.proxy_port, url, receive_buffer=64 * 1024)
        assert hit.response.getheader("X-Shim-Cache") == "HIT"
        sigterm(shim)
        assert until(lambda: refuses_connections(shim.proxy_port))
        received = hit.rest(pace_bytes_per_s=10 * MIB)
        code, _, output = wait_exit(shim, timeout=30)
        hit.close()

    assert received == body
    assert code == 0
    assert "Traceback" not in output


def test_a_second_sigterm_cuts_at_once(
    tmp_path: Path, s3rver: S3Server, objects: dict[str, bytes], relay_factory: RelayFactory
) -> None:
    relay = relay_factory(s3rver.host, s3rver.port, rate_limit_bytes_per_s=1e6)
    shim = start_shim(tmp_path, {"buckets": [s3_bucket_config(BUCKET, relay.endpoint)]})
    with shim:
        download = Download(shim.proxy_port, object_url(relay.endpoint, "slow.bin"))
        sigterm(shim)
        assert until(lambda: refuses_connections(shim.proxy_port))
        again = sigterm(shim)
        with pytest.raises((http.client.IncompleteRead, ConnectionError)):
            download.rest()
        code, exited, output = wait_exit(shim, timeout=30)
        download.close()

    assert code == 0
    assert "Traceback" not in output
    assert "a second signal; cutting 1 transfer(s) in flight" in output
    assert exited - again < 5, output
