"""Bounded request heads, against the real ``shim run``: a 200 MB header gets 431 without
growing shim, a head sent one byte a second gets 408 after ``request_head_timeout``, on every
listener (explicit proxy, CONNECT tunnel with TLS, reverse, transparent), and the proxy goes
on serving. Also: Range positions past int()'s digit limit, end to end."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.support.http import Reply, direct, via_proxy
from tests.support.netns import NetnsHost, make_test_host, require_netns
from tests.support.procs import free_port
from tests.support.servers import REPO_ROOT, S3Server, put_object, s3_client
from tests.support.shim_process import ShimProcess, s3_bucket_config, start_shim

pytestmark = pytest.mark.slow

BUCKET = "limits"
KEY = "model.mar"
BODY = os.urandom(100_000)
HEAD_TIMEOUT = 2.0
HEADER_BYTES = 200 * 1024 * 1024
MEMORY_BUDGET_KB = 50 * 1024
TRANSPARENT_HOST = "limits.example.test"


# -- a client that sends heads as no well-behaved client does ------------------------------------


def poll(sock: socket.socket, timeout: float) -> bytes | None:
    """The next data the server sent within ``timeout`` seconds (b"" at its end), or None.
    Over TLS, only application data counts (not session tickets, which make a socket
    readable too)."""
    sock.settimeout(timeout)
    try:
        return sock.recv(65536)
    except (BlockingIOError, ssl.SSLWantReadError, TimeoutError):
        return None
    except ConnectionError:
        return b""


def read_answer(sock: socket.socket) -> bytes:
    """What the server sent until it closed (or went quiet for 10 s)."""
    answer = b""
    while chunk := poll(sock, 10.0):
        answer += chunk
    return answer


def status_of(answer: bytes) -> int | None:
    line = answer.split(b"\r\n", 1)[0].split()
    return int(line[1]) if len(line) > 1 and line[0].startswith(b"HTTP/") else None


def send(sock: socket.socket, data: bytes) -> None:
    sock.settimeout(30)
    sock.sendall(data)


def send_huge_head(sock: socket.socket, request_line: bytes, total: int) -> tuple[int, bytes]:
    """Stream a header of ``total`` bytes in 64 KiB writes until the server answers; end the
    head if it never does. Returns (header bytes sent, the answer)."""
    filler = b"a" * 65536
    sent = 0
    answer = None
    try:
        send(sock, request_line + b"X-Huge: ")
        while sent < total and (answer := poll(sock, 0.0)) is None:
            send(sock, filler)
            sent += len(filler)
        if answer is None:
            send(sock, b"\r\n\r\n")
    except OSError:
        pass  # the server closed: its answer may still be there to read
    return sent, (answer or b"") + read_answer(sock)


def trickle_head(sock: socket.socket, head: bytes) -> tuple[float, bytes]:
    """Send ``head`` one byte a second until the server answers. Returns (seconds from the
    first byte to the answer, the answer)."""
    started = time.monotonic()
    answer = None
    try:
        for byte in head:
            send(sock, bytes([byte]))
            if (answer := poll(sock, 1.0)) is not None:
                break
        else:
            answer = poll(sock, 10.0)
    except OSError:
        pass
    elapsed = time.monotonic() - started
    return elapsed, (answer or b"") + read_answer(sock)


def peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/PID/status")


def run_in_namespace(mode: str, port: int) -> None:
    """Entry point in the transparent test's namespace: one check, its result as JSON."""
    with socket.create_connection((TRANSPARENT_HOST, port), timeout=30) as sock:
        line = f"GET /{KEY} HTTP/1.1\r\nHost: {TRANSPARENT_HOST}\r\n".encode()
        if mode == "huge":
            sent, answer = send_huge_head(sock, line, HEADER_BYTES)
            print(json.dumps({"sent": sent, "status": status_of(answer)}))
        else:
            elapsed, answer = trickle_head(sock, line + b"\r\n")
            print(json.dumps({"elapsed": elapsed, "status": status_of(answer)}))


# -- the listeners --------------------------------------------------------------------------------


@dataclass
class Listener:
    """How a client reaches one listener: a connected socket and the request target to use."""

    connect: Callable[[], socket.socket]
    target: str
    fetch: Callable[[], Reply]  # a normal request for the object


@pytest.fixture(scope="module")
def origin(s3rver: S3Server) -> S3Server:
    put_object(s3_client(s3rver), BUCKET, KEY, BODY)
    return s3rver


@pytest.fixture(scope="module")
def reverse_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def shim(
    origin: S3Server, reverse_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ShimProcess]:
    config = {
        "reverse": f"127.0.0.1:{reverse_port}",
        "buckets": [s3_bucket_config(BUCKET, origin.endpoint)],
        "limits": {"request_head_timeout": HEAD_TIMEOUT},
    }
    with start_shim(tmp_path_factory.mktemp("shim"), config) as process:
        yield process


def listener(kind: str, shim: ShimProcess, origin: S3Server, reverse_port: int) -> Listener:
    url = f"{origin.endpoint}/{BUCKET}/{KEY}"
    path = f"/{BUCKET}/{KEY}"

    def plain(port: int) -> Callable[[], socket.socket]:
        return lambda: socket.create_connection(("127.0.0.1", port), timeout=30)

    def tunnel() -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", shim.proxy_port), timeout=30)
        authority = f"{origin.host}:{origin.port}"
        sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        context = ssl.create_default_context(cafile=str(shim.ca_cert))
        context.set_alpn_protocols(["h2", "http/1.1"])
        tls = context.wrap_socket(sock, server_hostname=origin.host)
        # HTTP/2 is off: its heads would not be timed.
        assert tls.selected_alpn_protocol() == "http/1.1"
        return tls

    if kind == "regular":
        return Listener(plain(shim.proxy_port), url, lambda: via_proxy(shim.proxy_port, url))
    if kind == "connect":
        https = url.replace("http://", "https://")
        return Listener(
            tunnel, path, lambda: via_proxy(shim.proxy_port, https, ca_cert=shim.ca_cert)
        )
    reverse_url = f"http://127.0.0.1:{reverse_port}/{BUCKET}/{quote(KEY)}"
    return Listener(plain(reverse_port), path, lambda: direct(reverse_url))


LISTENERS = ["regular", "connect", "reverse"]


@pytest.mark.parametrize("kind", LISTENERS)
def test_a_200_mb_header_gets_431_without_growing_shim(
    kind: str, shim: ShimProcess, origin: S3Server, reverse_port: int
) -> None:
    via = listener(kind, shim, origin, reverse_port)
    peak_before = peak_rss_kb(shim.pid)
    with via.connect() as sock:
        sent, answer = send_huge_head(sock, f"GET {via.target} HTTP/1.1\r\n".encode(), HEADER_BYTES)
    assert status_of(answer) == 431, answer[:200]
    assert sent < HEADER_BYTES
    assert peak_rss_kb(shim.pid) - peak_before < MEMORY_BUDGET_KB
    reply = via.fetch()
    assert (reply.status, reply.body) == (200, BODY)


@pytest.mark.parametrize("kind", LISTENERS)
def test_a_head_sent_one_byte_a_second_gets_408_after_the_timeout(
    kind: str, shim: ShimProcess, origin: S3Server, reverse_port: int
) -> None:
    via = listener(kind, shim, origin, reverse_port)
    with via.connect() as sock:
        authority = f"{origin.host}:{origin.port}"
        head = f"GET {via.target} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode()
        elapsed, answer = trickle_head(sock, head)
    assert status_of(answer) == 408, answer[:200]
    assert HEAD_TIMEOUT - 0.1 < elapsed < HEAD_TIMEOUT + 1.5
    reply = via.fetch()
    assert (reply.status, reply.body) == (200, BODY)


def test_a_slow_head_sent_in_time_is_served(shim: ShimProcess, origin: S3Server) -> None:
    # In three pieces over 1.5 s: slow, but within the timeout.
    authority = f"{origin.host}:{origin.port}"
    head = (
        f"GET http://{authority}/{BUCKET}/{KEY} HTTP/1.1\r\n"
        f"Host: {authority}\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", shim.proxy_port), timeout=30) as sock:
        step = len(head) // 3 + 1
        for offset in range(0, len(head), step):
            send(sock, head[offset : offset + step].encode())
            time.sleep(0.5)
        answer = read_answer(sock)
    assert status_of(answer) == 200
    assert answer.endswith(BODY)


# -- transparent, from a namespace whose port-80 traffic is redirected to shim -------------------


@pytest.fixture
def transparent(tmp_path: Path, origin: S3Server) -> Iterator[tuple[ShimProcess, NetnsHost]]:
    require_netns()
    with make_test_host() as host:
        port = free_port()
        bucket = {**s3_bucket_config(BUCKET, origin.endpoint), "hosts": [TRANSPARENT_HOST]}
        config = {
            "transparent": f"{host.gateway}:{port}",
            "clients": [f"{host.address}/32"],
            "buckets": [bucket],
            "limits": {"request_head_timeout": HEAD_TIMEOUT},
        }
        with start_shim(tmp_path / "shim", config) as process:
            host.redirect(80, port)
            host.resolve({TRANSPARENT_HOST: host.gateway})
            yield process, host


def in_namespace(host: NetnsHost, mode: str) -> dict[str, float]:
    code = f"from tests.integration import test_limits; test_limits.run_in_namespace({mode!r}, 80)"
    result = subprocess.run(
        [*host.exec_prefix(), sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        check=True,
    )
    outcome: dict[str, float] = json.loads(result.stdout)
    return outcome


def test_transparent_listener_bounds_heads_too(
    transparent: tuple[ShimProcess, NetnsHost], tmp_path: Path
) -> None:
    shim, host = transparent
    peak_before = peak_rss_kb(shim.pid)
    huge = in_namespace(host, "huge")
    assert (huge["status"], huge["sent"] < HEADER_BYTES) == (431, True)
    assert peak_rss_kb(shim.pid) - peak_before < MEMORY_BUDGET_KB
    # The first byte arrives alone: without the HTTP layer forced, mitmproxy would forward
    # the connection as raw TCP, past every bound.
    slow = in_namespace(host, "slow")
    assert slow["status"] == 408
    assert HEAD_TIMEOUT - 0.1 < slow["elapsed"] < HEAD_TIMEOUT + 1.5
    out = tmp_path / "body"
    url = f"http://{TRANSPARENT_HOST}/{KEY}"  # a bucket's own host: the key is the path
    result = subprocess.run(
        [*host.exec_prefix(), "curl", "-sS", "-o", str(out), "-w", "%{http_code}", url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.stdout, out.read_bytes()) == ("200", BODY)


# -- Range positions longer than int() reads ----------------------------------------------------


@pytest.mark.parametrize("https", [False, True], ids=["http", "https"])
def test_overlong_range_positions_get_416_or_the_object_on_miss_and_hit(
    https: bool, tmp_path: Path, origin: S3Server
) -> None:
    huge = "9" * 5000
    size = len(BODY)
    cases = {  # Range -> (status, Content-Range), each on its own object: a miss, then a hit
        f"bytes=0-{huge}": (206, f"bytes 0-{size - 1}/{size}"),
        f"bytes=-{huge}": (206, f"bytes 0-{size - 1}/{size}"),
        f"bytes={huge}-": (416, f"bytes */{size}"),
    }
    client = s3_client(origin)
    for index in range(len(cases)):
        put_object(client, BUCKET, f"range-{https}-{index}.mar", BODY)
    config = {"buckets": [s3_bucket_config(BUCKET, origin.endpoint)]}
    with start_shim(tmp_path, config) as shim:
        for index, (header, (status, content_range)) in enumerate(cases.items()):
            url = f"{origin.endpoint}/{BUCKET}/range-{https}-{index}.mar"
            if https:
                url = url.replace("http://", "https://")
            for cache in ("MISS", "HIT"):
                reply = via_proxy(
                    shim.proxy_port,
                    url,
                    headers={"Range": header},
                    ca_cert=shim.ca_cert if https else None,
                )
                assert (reply.status, reply.headers["Content-Range"]) == (status, content_range)
                assert reply.body == (BODY if status == 206 else b"")
                if status == 206:
                    assert reply.headers["X-Shim-Cache"] == cache
