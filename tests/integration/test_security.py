"""Issue 7's security rules, each end to end through the real ``shim run`` process.

Every configured bucket's endpoint is a relay in front of the strict s3rver (``origin``), and
every host that is no bucket's is another relay to it (``bystander``): their counters prove
that a refused request never reached anything. The strict s3rver answers 403 AccessDenied to
anything unsigned, so a 200 proves shim signed, and an AccessDenied proves a request passed
through unsigned.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import ipaddress
import json
import os
import re
import ssl
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tests.support.http import Reply, via_proxy
from tests.support.procs import direct_opener, free_port
from tests.support.raw_http import read_reply, send_raw, stream_upload, tls_client, tunnel
from tests.support.relay import Relay, RelayFactory, request_target
from tests.support.servers import (
    S3Server,
    ServerStartError,
    put_object,
    s3_client,
    start_s3rver,
)
from tests.support.shim_process import ShimProcess, s3_bucket_config, start_shim
from tests.support.tls import Pki, make_pki

pytestmark = pytest.mark.slow

# One bucket per test that uses the module's guarded shim: the s3rver is the session's.
DOTS, CONNECT, METHODS, HOST, PARTS = (
    "sec-dots",
    "sec-connect",
    "sec-methods",
    "sec-host",
    "sec-parts",
)
GUARDED_BUCKETS = (DOTS, CONNECT, METHODS, HOST, PARTS)


# -- servers the tests share -------------------------------------------------------------------


@pytest.fixture(scope="module")
def origin(s3rver: S3Server) -> Iterator[Relay]:
    """What every configured bucket's endpoint names: the relay in front of s3rver."""
    with Relay(s3rver.host, s3rver.port) as relay:
        yield relay


@pytest.fixture(scope="module")
def bystander(s3rver: S3Server) -> Iterator[Relay]:
    """A host no bucket names (another relay to s3rver): what pass-through policy guards."""
    with Relay(s3rver.host, s3rver.port) as relay:
        yield relay


@pytest.fixture(autouse=True)
def _counters_from_zero(origin: Relay, bystander: Relay) -> None:
    origin.reset_counters()
    bystander.reset_counters()


@pytest.fixture(scope="module")
def reverse_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def guarded(
    origin: Relay, reverse_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ShimProcess]:
    """Default policy (passthrough: none), explicit proxy and reverse listener."""
    config = {
        "reverse": f"127.0.0.1:{reverse_port}",
        "buckets": [s3_bucket_config(bucket, origin.endpoint) for bucket in GUARDED_BUCKETS],
    }
    with start_shim(tmp_path_factory.mktemp("guarded"), config) as shim:
        yield shim


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_host(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A host that is no bucket's and speaks TLS with a certificate of its own."""
    with start_s3rver(
        tmp_path_factory.mktemp("tls-host"), tls=(pki.server_cert, pki.server_key)
    ) as server:
        yield server


@pytest.fixture(scope="module")
def allowing(
    origin: Relay,
    bystander: Relay,
    tls_host: S3Server,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ShimProcess]:
    """passthrough: an allow-list naming the bystander and the TLS host, with their ports."""
    config = {
        "passthrough": [f"127.0.0.1:{bystander.address[1]}", f"127.0.0.1:{tls_host.port}"],
        "buckets": [s3_bucket_config("sec-allowing", origin.endpoint)],
    }
    with start_shim(tmp_path_factory.mktemp("allowing"), config) as shim:
        yield shim


# -- helpers -----------------------------------------------------------------------------------


def authority(relay: Relay) -> str:
    host, port = relay.address
    return f"{host}:{port}"


def assert_never_asked(*relays: Relay) -> None:
    for relay in relays:
        assert (relay.connections, relay.bytes_up, relay.request_heads) == (0, 0, [])


def assert_refused(reply: Reply, status: int, kind: str) -> None:
    assert reply.status == status, reply.body[:300]
    assert reply.headers["X-Shim-Error"] == kind
    assert reply.body.startswith(b"shim: ")
    assert "X-Shim-Cache" not in reply.headers


def request_head(
    method: str, target: str, headers: dict[str, str] | None = None, *, host: str | None = None
) -> bytes:
    """A request head as written; Host defaults to an absolute-form target's authority."""
    if host is None and "://" in target:
        host = target.split("/")[2]
    lines = [f"{method} {target} HTTP/1.1"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join([*lines, "Connection: close"]) + "\r\n\r\n").encode("latin-1")


def https_request(
    shim: ShimProcess,
    target_authority: str,
    head: bytes,
    body: bytes = b"",
    *,
    connect_headers: dict[str, str] | None = None,
) -> Reply:
    """CONNECT to ``target_authority``, TLS trusting shim's CA, then one request."""
    with tunnel(shim.proxy_port, target_authority, headers=connect_headers) as (answer, sock):
        assert answer.status == 200, answer
        tls, _ = tls_client(sock, target_authority.rsplit(":", 1)[0], shim.ca_cert)
        tls.sendall(head + body)
        return read_reply(tls, head.split(b" ", 1)[0].decode())


def peak_rss(pid: int) -> int:
    """VmHWM of ``pid`` in bytes: the most memory it ever held resident."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


def loopback_names_in_hosts_file() -> list[str]:
    """Names other than localhost that /etc/hosts maps to a loopback address."""
    names = []
    for line in Path("/etc/hosts").read_text().splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        try:
            loopback = ipaddress.ip_address(fields[0]).is_loopback
        except ValueError:
            continue
        if loopback:
            names += [name for name in fields[1:] if name.lower() != "localhost"]
    return names


# -- 1. dot segments -----------------------------------------------------------------------------

DOT_PATHS = [
    "models/x/../../prod/resnet.mar",
    "../other/secret.txt",
    "models/./resnet.mar",
    "models/x/%2e%2e/%2e%2e/prod/resnet.mar",
    "models/.%2E/secret.txt",
    "models/%2E./secret.txt",
    "models/%2e/resnet.mar",
]


# Keys with dots that are names, not dot segments: each is fetched as written, never resolved.
# The stored key, then how a client writes it in a URL.
LITERAL_KEYS = {
    "a..b/c": "a..b/c",
    "x/...": "x/...",
    "x/%2e%2e/y": "x/%252e%252e/y",  # an encoded dot segment, encoded again: a plain name
    "x\\..\\..\\prod/r.mar": "x\\..\\..\\prod/r.mar",  # no separators in a key
}


@pytest.mark.parametrize("listener", ["http", "https", "reverse"])
def test_dot_segments_are_refused_and_never_reach_the_origin(
    guarded: ShimProcess, s3rver: S3Server, origin: Relay, reverse_port: int, listener: str
) -> None:
    # The same bytes for every listener: the first one's fetch is the others' cache entry.
    bodies = {key: hashlib.sha256(key.encode()).digest() * 300 for key in LITERAL_KEYS}
    for key, body in bodies.items():
        put_object(s3_client(s3rver), DOTS, key, body)
    origin.reset_counters()

    def get(path: str) -> Reply:
        if listener == "reverse":
            return send_raw(reverse_port, request_head("GET", f"/{DOTS}/{path}", host="shim"))
        if listener == "https":
            head = request_head("GET", f"/{DOTS}/{path}", host=authority(origin))
            return https_request(guarded, authority(origin), head)
        return send_raw(guarded.proxy_port, request_head("GET", f"{origin.endpoint}/{DOTS}/{path}"))

    for path in DOT_PATHS:
        reply = get(path)
        assert_refused(reply, 400, "request")
        assert b"'..' path segment" in reply.body, path
    assert_never_asked(origin)
    for key, written in LITERAL_KEYS.items():
        served = get(written)
        assert (served.status, served.body) == (200, bodies[key]), key
    # What the origin was asked for (first request of each connection) is a key as named.
    asked = {f"/{DOTS}/{quote(key, safe='/~')}" for key in LITERAL_KEYS}
    for head in origin.request_heads:
        assert request_target(head).partition("?")[0] in asked


# -- 2. pass-through policy ----------------------------------------------------------------------


def test_passthrough_none_refuses_other_hosts_and_buckets_without_connecting(
    guarded: ShimProcess, origin: Relay, bystander: Relay
) -> None:
    url = f"{bystander.endpoint}/some-bucket/key"
    assert_refused(via_proxy(guarded.proxy_port, url), 403, "passthrough")
    upload = send_raw(
        guarded.proxy_port,
        request_head("POST", url, {"Content-Length": "65536"}),
        os.urandom(65536),
    )
    assert_refused(upload, 403, "passthrough")
    # A bucket nobody configured, on a configured bucket's own endpoint.
    other = via_proxy(guarded.proxy_port, f"{origin.endpoint}/sec-not-configured/key")
    assert_refused(other, 403, "passthrough")
    with tunnel(guarded.proxy_port, authority(bystander)) as (answer, _):
        assert answer.status == 403
        assert answer.headers["X-Shim-Error"] == "passthrough"
    assert_never_asked(origin, bystander)


def test_allow_list_passes_unsigned_reads_and_uploads_through(
    allowing: ShimProcess, s3rver: S3Server, bystander: Relay, origin: Relay
) -> None:
    put_object(s3_client(s3rver), "sec-passthrough", "model.mar", b"private")
    url = f"{bystander.endpoint}/sec-passthrough/model.mar"
    read = via_proxy(allowing.proxy_port, url)
    # s3rver's own answer to an unsigned request: it reached the origin, and unsigned.
    assert read.status == 403
    assert b"<Code>AccessDenied</Code>" in read.body
    assert "X-Shim-Error" not in read.headers
    body = os.urandom(64 * 1024)
    # Signed by the client itself, so s3rver reads the whole body before it answers: shim
    # neither signs nor strips it, and streams every byte through.
    presigned = s3_client(s3rver, endpoint_url=bystander.endpoint).generate_presigned_url(
        "put_object", Params={"Bucket": "sec-passthrough", "Key": "upload.bin"}
    )
    upload = send_raw(
        allowing.proxy_port,
        request_head("PUT", presigned, {"Content-Length": str(len(body))}),
        body,
    )
    assert upload.status == 200, upload.body
    assert "X-Shim-Error" not in upload.headers
    heads = bystander.request_heads
    assert [request_target(head).split("?")[0] for head in heads] == [
        "/sec-passthrough/model.mar",
        "/sec-passthrough/upload.bin",
    ]
    assert heads[1].startswith(b"PUT ")
    # The read went unsigned; the upload carries the client's own signature, untouched.
    assert b"X-Amz-" not in heads[0] and b"Authorization" not in heads[0]
    assert request_target(heads[1]) == presigned.removeprefix(bystander.endpoint)
    put_head = heads[1][: heads[1].index(b"\r\n\r\n") + 4]
    assert bystander.bytes_up == len(heads[0]) + len(put_head) + len(body)
    stored = s3_client(s3rver).get_object(Bucket="sec-passthrough", Key="upload.bin")
    assert stored["Body"].read() == body
    # The same host on a port the list does not name, and a host it does not name at all.
    for other in (
        f"http://127.0.0.1:{free_port()}/x",
        f"http://127.0.0.2:{bystander.address[1]}/x",
    ):
        assert_refused(via_proxy(allowing.proxy_port, other), 403, "passthrough")
    assert origin.connections == 0


def test_a_large_pass_through_upload_is_streamed_not_held(
    allowing: ShimProcess, s3rver: S3Server, bystander: Relay
) -> None:
    size = 128 * 1024 * 1024
    client = s3_client(s3rver, endpoint_url=bystander.endpoint)
    put_object(client, "sec-passthrough", "seed", b"")
    # Signed by the client itself: shim passes it through as it is, and s3rver reads it whole.
    url = client.generate_presigned_url(
        "put_object", Params={"Bucket": "sec-passthrough", "Key": "upload.bin"}
    )
    bystander.reset_counters()
    before = peak_rss(allowing.pid)
    upload = stream_upload(
        allowing.proxy_port, request_head("PUT", url, {"Content-Length": str(size)}), size
    )
    grown = peak_rss(allowing.pid) - before
    assert upload.reply.status == 200, upload.reply.body[:300]
    zeros = hashlib.md5(usedforsecurity=False)
    for _ in range(size // (1 << 20)):
        zeros.update(bytes(1 << 20))
    assert upload.reply.headers["ETag"] == f'"{zeros.hexdigest()}"'
    assert grown < 32 * 1024 * 1024, f"peak RSS grew by {grown / 2**20:.0f} MiB"
    assert bystander.connections == 1
    client.delete_object(Bucket="sec-passthrough", Key="upload.bin")


def test_passthrough_all_still_refuses_loopback_and_link_local(
    tmp_path: Path, origin: Relay, bystander: Relay
) -> None:
    config = {"passthrough": "all", "buckets": [s3_bucket_config("sec-all", origin.endpoint)]}
    port = bystander.address[1]
    # Refused by what the request names, before any lookup.
    literal = [
        f"127.0.0.1:{port}",
        f"127.0.0.2:{port}",
        f"[::1]:{port}",
        f"[::ffff:127.0.0.1]:{port}",
        f"0.0.0.0:{port}",
        f"localhost:{port}",
        f"LocalHost:{port}",
        "169.254.169.254:80",
        "[fe80::1]:80",
    ]
    # Names that only say where they go once resolved: refused at the connection gate.
    resolved = [f"127.1:{port}", f"2130706433:{port}"]
    resolved += [f"{name}:{port}" for name in loopback_names_in_hosts_file()]
    with start_shim(tmp_path, config) as shim:
        for target in literal:
            start = time.monotonic()
            assert_refused(
                via_proxy(shim.proxy_port, f"http://{target}/x", timeout=10), 403, "passthrough"
            )
            with tunnel(shim.proxy_port, target) as (answer, _):
                assert (answer.status, answer.headers["X-Shim-Error"]) == (403, "passthrough")
            assert time.monotonic() - start < 5, target
        for target in resolved:
            start = time.monotonic()
            reply = via_proxy(shim.proxy_port, f"http://{target}/x", timeout=10)
            assert reply.status == 502, (target, reply.body[:300])
            assert b"shim: " in reply.body and b"loopback or link-local" in reply.body
            # A CONNECT is answered before the name is resolved; the gate then cuts the
            # tunnel at its first byte, and the client's handshake fails at once.
            with tunnel(shim.proxy_port, target) as (answer, sock):
                if answer.status == 200:
                    with pytest.raises((ssl.SSLError, ConnectionError)):
                        tls_client(sock, target.rsplit(":", 1)[0], None)
                else:
                    assert answer.status == 403
            assert time.monotonic() - start < 5, target
        output = shim.output()
    assert_never_asked(bystander, origin)
    assert re.search(r"server connect (127\.|169\.254\.|\[?::1|\[?fe80)", output) is None


# -- 3. CONNECT ----------------------------------------------------------------------------------


def test_connect_intercepts_bucket_hosts_only(
    guarded: ShimProcess, s3rver: S3Server, origin: Relay, bystander: Relay
) -> None:
    body = os.urandom(50_000)
    put_object(s3_client(s3rver), CONNECT, "model.mar", body)
    origin.reset_counters()
    shim_ca = x509.load_pem_x509_certificate(guarded.ca_cert.read_bytes())
    with tunnel(guarded.proxy_port, authority(origin)) as (answer, sock):
        assert answer.status == 200
        # Verified against shim's CA alone: shim terminated TLS, the origin speaks none.
        tls, der = tls_client(sock, "127.0.0.1", guarded.ca_cert)
        assert x509.load_der_x509_certificate(der).issuer == shim_ca.subject
        tls.sendall(request_head("GET", f"/{CONNECT}/model.mar", host=authority(origin)))
        reply = read_reply(tls)
    assert (reply.status, reply.body, reply.headers["X-Shim-Cache"]) == (200, body, "MISS")
    with tunnel(guarded.proxy_port, authority(bystander)) as (answer, _):
        assert (answer.status, answer.headers["X-Shim-Error"]) == (403, "passthrough")
    assert_never_asked(bystander)


def test_connect_to_an_allowed_host_is_a_blind_tunnel(
    allowing: ShimProcess, tls_host: S3Server, pki: Pki
) -> None:
    target = f"127.0.0.1:{tls_host.port}"
    with tunnel(allowing.proxy_port, target) as (answer, sock):
        assert answer.status == 200
        # The origin's own certificate, verified against the origin's CA: not intercepted.
        tls, der = tls_client(sock, "127.0.0.1", pki.ca_cert)
        own = x509.load_pem_x509_certificate(pki.server_cert.read_bytes())
        assert der == own.public_bytes(Encoding.DER)
        tls.sendall(request_head("GET", "/sec-tunnel/model.mar", host=target))
        reply = read_reply(tls)
    assert reply.status == 403
    assert b"<Code>AccessDenied</Code>" in reply.body  # unsigned: shim never saw the request
    assert "X-Shim-Error" not in reply.headers
    # Without the origin's CA the client cannot be fooled into trusting shim's.
    with (
        tunnel(allowing.proxy_port, target) as (_, sock),
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        tls_client(sock, "127.0.0.1", allowing.ca_cert)


# -- 4. proxy authentication -----------------------------------------------------------------------

PROXY_USER, PROXY_PASSWORD = "model-server", "pa:ss w0rd-7f3a"


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Proxy-Authorization": f"Basic {token}"}


@pytest.fixture(scope="module")
def authenticating(
    origin: Relay, bystander: Relay, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ShimProcess]:
    config = {
        "proxy_auth": {"username": PROXY_USER, "password": PROXY_PASSWORD},
        "passthrough": [f"127.0.0.1:{bystander.address[1]}"],
        "buckets": [s3_bucket_config("sec-auth", origin.endpoint)],
    }
    with start_shim(tmp_path_factory.mktemp("auth"), config) as shim:
        yield shim


@pytest.mark.parametrize(
    "credentials",
    [
        {},
        basic(PROXY_USER, "wrong"),
        basic("someone", PROXY_PASSWORD),
        {"Proxy-Authorization": "Basic !!"},
    ],
    ids=["none", "wrong-password", "wrong-user", "malformed"],
)
def test_proxy_auth_answers_407_without_valid_credentials(
    authenticating: ShimProcess, origin: Relay, bystander: Relay, credentials: dict[str, str]
) -> None:
    for url in (f"{origin.endpoint}/sec-auth/model.mar", f"{bystander.endpoint}/x"):
        reply = send_raw(authenticating.proxy_port, request_head("GET", url, credentials))
        assert reply.status == 407
        assert reply.headers["Proxy-Authenticate"].startswith("Basic")
    with tunnel(authenticating.proxy_port, authority(origin), headers=credentials) as (answer, _):
        assert answer.status == 407
        assert answer.headers["Proxy-Authenticate"].startswith("Basic")
    assert_never_asked(origin, bystander)


def test_proxy_auth_admits_valid_credentials_and_never_forwards_them(
    authenticating: ShimProcess, s3rver: S3Server, origin: Relay, bystander: Relay
) -> None:
    body = os.urandom(30_000)
    put_object(s3_client(s3rver), "sec-auth", "model.mar", body)
    origin.reset_counters()
    credentials = basic(PROXY_USER, PROXY_PASSWORD)
    url = f"{origin.endpoint}/sec-auth/model.mar"
    plain = send_raw(authenticating.proxy_port, request_head("GET", url, credentials))
    assert (plain.status, plain.body, plain.headers["X-Shim-Cache"]) == (200, body, "MISS")
    # Credentials admit the request that carries them, not the rest of its connection.
    connection = http.client.HTTPConnection("127.0.0.1", authenticating.proxy_port, timeout=10)
    try:
        connection.request("GET", url, headers=credentials)
        with connection.getresponse() as first:
            assert (first.status, first.read()) == (200, body)
        connection.request("GET", url)
        with connection.getresponse() as second:
            assert second.status == 407
    finally:
        connection.close()
    tunnelled = https_request(
        authenticating,
        authority(origin),
        request_head("GET", "/sec-auth/model.mar", host=authority(origin)),
        connect_headers=credentials,
    )
    assert (tunnelled.status, tunnelled.body) == (200, body)
    passed = send_raw(
        authenticating.proxy_port,
        request_head("GET", f"{bystander.endpoint}/sec-auth/x", credentials),
    )
    assert passed.status == 403 and b"AccessDenied" in passed.body  # reached s3rver, unsigned
    (head,) = bystander.request_heads
    secret = credentials["Proxy-Authorization"].split()[1].encode()
    assert b"proxy-authorization" not in head.lower() and secret not in head
    for head in origin.request_heads:
        assert b"proxy-authorization" not in head.lower() and secret not in head
    output = authenticating.output()
    assert PROXY_PASSWORD not in output and secret.decode() not in output


# -- 5. client networks --------------------------------------------------------------------------


def test_clients_outside_the_allowed_networks_are_cut(
    tmp_path: Path, s3rver: S3Server, origin: Relay
) -> None:
    body = os.urandom(20_000)
    put_object(s3_client(s3rver), "sec-clients", "model.mar", body)
    origin.reset_counters()
    url = f"{origin.endpoint}/sec-clients/model.mar"
    bucket = s3_bucket_config("sec-clients", origin.endpoint)
    with start_shim(tmp_path / "ten", {"clients": ["10.0.0.0/8"], "buckets": [bucket]}) as shim:
        with pytest.raises(ConnectionError):
            send_raw(shim.proxy_port, request_head("GET", url))
        assert shim.metrics()['shim_errors_total{kind="client_refused"}'] == 1
    assert_never_asked(origin)
    with start_shim(tmp_path / "lo", {"clients": ["127.0.0.0/8"], "buckets": [bucket]}) as shim:
        reply = send_raw(shim.proxy_port, request_head("GET", url))
        assert (reply.status, reply.body) == (200, body)


@pytest.mark.parametrize("listener", ["listen", "reverse", "transparent"])
def test_an_exposed_listener_without_a_guard_refuses_to_start(
    tmp_path: Path, origin: Relay, listener: str
) -> None:
    address = f"0.0.0.0:{free_port()}"
    config = {listener: address, "buckets": [s3_bucket_config("sec-exposed", origin.endpoint)]}
    with pytest.raises(ServerStartError) as raised:
        start_shim(tmp_path, config, timeout=20)
    message = str(raised.value)
    assert "Traceback" not in message
    # "shim exited with 2:" and then what shim printed: one line.
    printed = [line for line in message.splitlines()[1:] if line.strip()]
    assert len(printed) == 1, message
    assert address in printed[0] and "'clients'" in printed[0]


# -- 6. methods and bodies on configured buckets -------------------------------------------------


def test_writes_to_a_configured_bucket_are_refused_before_the_origin(
    guarded: ShimProcess, origin: Relay
) -> None:
    url = f"{origin.endpoint}/{METHODS}/model.mar"
    body = os.urandom(100_000)
    for method, payload in (("PUT", body), ("POST", body), ("DELETE", b""), ("PATCH", body)):
        headers = {"Content-Length": str(len(payload))} if payload else {}
        reply = send_raw(guarded.proxy_port, request_head(method, url, headers), payload)
        assert_refused(reply, 403, "method")
    tls_put = https_request(
        guarded,
        authority(origin),
        request_head(
            "PUT",
            f"/{METHODS}/model.mar",
            {"Content-Length": str(len(body))},
            host=authority(origin),
        ),
        body,
    )
    assert_refused(tls_put, 403, "method")
    assert_never_asked(origin)


def test_a_large_upload_is_refused_at_once_without_buffering(
    guarded: ShimProcess, origin: Relay
) -> None:
    size = 200 * 1024 * 1024
    url = f"{origin.endpoint}/{METHODS}/huge.mar"
    before = peak_rss(guarded.pid)
    upload = stream_upload(
        guarded.proxy_port, request_head("PUT", url, {"Content-Length": str(size)}), size
    )
    grown = peak_rss(guarded.pid) - before
    assert_refused(upload.reply, 403, "method")
    # Answered while the body was still on its way, not after reading it.
    assert upload.sent_before_reply < size
    assert upload.seconds < 10
    assert grown < 32 * 1024 * 1024, f"peak RSS grew by {grown / 2**20:.0f} MiB"
    assert_never_asked(origin)


def test_a_read_with_a_body_is_refused(guarded: ShimProcess, origin: Relay) -> None:
    url = f"{origin.endpoint}/{METHODS}/model.mar"
    for method in ("GET", "HEAD"):
        with_length = send_raw(
            guarded.proxy_port, request_head(method, url, {"Content-Length": "5"}), b"hello"
        )
        assert with_length.status == 400
        assert with_length.headers["X-Shim-Error"] == "request"
        chunked = send_raw(
            guarded.proxy_port,
            request_head(method, url, {"Transfer-Encoding": "chunked"}),
            b"5\r\nhello\r\n0\r\n\r\n",
        )
        assert chunked.status == 400
        assert chunked.headers["X-Shim-Error"] == "request"
    assert_never_asked(origin)


def test_the_reverse_listener_refuses_uploads_before_any_byte_moves(
    guarded: ShimProcess, origin: Relay, reverse_port: int
) -> None:
    size = 50 * 1024 * 1024
    before = peak_rss(guarded.pid)
    upload = stream_upload(
        reverse_port,
        request_head("PUT", f"/{METHODS}/new.mar", {"Content-Length": str(size)}, host="shim"),
        size,
    )
    grown = peak_rss(guarded.pid) - before
    assert_refused(upload.reply, 405, "method")
    assert upload.reply.headers["Allow"] == "GET, HEAD"
    assert upload.sent_before_reply < size
    assert upload.seconds < 10
    assert grown < 32 * 1024 * 1024, f"peak RSS grew by {grown / 2**20:.0f} MiB"
    post = send_raw(
        reverse_port,
        request_head("POST", f"/{METHODS}/new.mar", {"Content-Length": "5"}, host="shim"),
        b"hello",
    )
    assert_refused(post, 405, "method")
    assert_never_asked(origin)


# -- 7. Host header ------------------------------------------------------------------------------


def test_a_host_header_naming_another_host_is_refused(
    guarded: ShimProcess, allowing: ShimProcess, origin: Relay, bystander: Relay
) -> None:
    cases = [
        # A bucket in the request line, somewhere else in Host.
        (guarded, f"{origin.endpoint}/{HOST}/model.mar", authority(bystander)),
        (guarded, f"{origin.endpoint}/{HOST}/model.mar", "169.254.169.254"),
        # An allowed host in the request line, a refused one (or a bucket) in Host.
        (allowing, f"{bystander.endpoint}/x", "169.254.169.254"),
        (allowing, f"{bystander.endpoint}/x", f"127.0.0.1:{free_port()}"),
        (allowing, f"{bystander.endpoint}/x", authority(origin)),
        # Same host, other port.
        (allowing, f"{bystander.endpoint}/x", "127.0.0.1"),
    ]
    for shim, url, host in cases:
        reply = send_raw(shim.proxy_port, request_head("GET", url, host=host))
        assert_refused(reply, 400, "request")
        assert b"Host header" in reply.body
    assert_never_asked(origin, bystander)


# -- 8. query parameters -------------------------------------------------------------------------


def test_part_numbers_are_signed_and_malformed_ones_refused(
    guarded: ShimProcess, s3rver: S3Server, origin: Relay
) -> None:
    client = s3_client(s3rver)
    body = os.urandom(40_000)
    put_object(client, PARTS, "model.mar", body)
    direct = client.get_object(Bucket=PARTS, Key="model.mar", PartNumber=1)
    expected = direct["Body"].read()
    origin.reset_counters()
    # The relay records a connection's first request: a connection shim kept alive from an
    # earlier test is dropped, so that the request comes on a new one.
    origin.drop_reused = True
    try:
        part = via_proxy(guarded.proxy_port, f"{origin.endpoint}/{PARTS}/model.mar?partNumber=1")
    finally:
        origin.drop_reused = False
    assert "X-Shim-Error" not in part.headers, part.body[:300]
    assert (part.status, part.body) == (direct["ResponseMetadata"]["HTTPStatusCode"], expected)
    (head,) = origin.request_heads
    assert "partNumber=1" in request_target(head) and "X-Amz-Signature=" in request_target(head)
    origin.reset_counters()
    for query in (
        "partNumber=0",
        "partNumber=abc",
        "partNumber=10001",
        "partNumber=",
        "versionId=a&versionId=b",
    ):
        reply = via_proxy(guarded.proxy_port, f"{origin.endpoint}/{PARTS}/model.mar?{query}")
        assert_refused(reply, 400, "request")
    assert_never_asked(origin)


# -- 9. nothing secret in logs, metrics, error bodies or files -----------------------------------

SCAN_ACCESS_KEY = "AKIASHIMSCANTEST7Q3Z"
SCAN_SECRET = "shimScanSecret/9x+Qw7LmZr2Vt4Yb8Nc6Hd1Kp3Jf5Gs0"
WRONG_SECRET = "shimWrongSecret/4Tk8Wq2Zx6Cv9Bn1Mr7Pl3Hj5Gd0Fs"


_SIGNATURE_VALUE = re.compile(r"X-Amz-(?:Signature|Credential)=([^&\s]+)")
_HEX64 = re.compile(r"(?<![0-9a-fA-F])[0-9a-fA-F]{64}(?![0-9a-fA-F])")


def signature_values_in(text: str) -> set[str]:
    """The X-Amz-Signature and X-Amz-Credential values ``text`` holds, as written."""
    return set(_SIGNATURE_VALUE.findall(text))


def signature_values(relay: Relay) -> set[str]:
    """The signature and credential values shim sent in the requests the relay carried."""
    return {
        value
        for head in relay.request_heads
        for value in signature_values_in(head.decode("latin-1"))
    }


def sign_every_way(
    shim: ShimProcess, endpoint: str, stale: str, body: bytes, route: str
) -> list[Reply]:
    """Requests down every path that signs: a miss, hits (mapped and through TLS), a client's
    own stale signature, an origin 404 and 403, a 400 naming the URL. Returns the replies."""
    url = f"{endpoint}/sec-scan/model.mar"
    miss = via_proxy(shim.proxy_port, url)
    assert (miss.status, miss.body, miss.headers["X-Shim-Route"]) == (200, body, route)
    replies = [miss]
    if route == "direct":
        hit = via_proxy(shim.proxy_port, url)
        https = via_proxy(shim.proxy_port, url.replace("http://", "https://"), ca_cert=shim.ca_cert)
        assert [(r.body, r.headers["X-Shim-Cache"]) for r in (hit, https)] == [(body, "HIT")] * 2
        replies += [hit, https]
    resigned = via_proxy(shim.proxy_port, stale)  # shim drops the client's own signature
    assert (resigned.status, resigned.body) == (200, body)
    missing = via_proxy(shim.proxy_port, f"{endpoint}/sec-scan/absent.mar")
    assert missing.status == 404
    denied = via_proxy(shim.proxy_port, f"{endpoint}/sec-scan-wrong/model.mar")
    assert (denied.status, b"SignatureDoesNotMatch" in denied.body) == (403, True)
    refused = via_proxy(shim.proxy_port, f"{stale}&acl")
    assert refused.status == 400
    return [*replies, resigned, missing, denied, refused]


def test_no_secret_or_signature_in_output_metrics_bodies_or_files(
    tmp_path: Path, relay_factory: RelayFactory
) -> None:
    with start_s3rver(
        tmp_path / "origin", extra_key_pairs={SCAN_ACCESS_KEY: SCAN_SECRET}
    ) as server:
        client = s3_client(server, access_key=SCAN_ACCESS_KEY, secret_key=SCAN_SECRET)
        body = os.urandom(100_000)
        put_object(client, "sec-scan", "model.mar", body)
        put_object(client, "sec-scan-wrong", "model.mar", body)
        relay = relay_factory(server.host, server.port)
        stale = client.generate_presigned_url(
            "get_object", Params={"Bucket": "sec-scan", "Key": "model.mar"}, ExpiresIn=60
        ).replace(server.endpoint, relay.endpoint)
        buckets = [
            s3_bucket_config("sec-scan", relay.endpoint, SCAN_ACCESS_KEY, SCAN_SECRET),
            s3_bucket_config("sec-scan-wrong", relay.endpoint, SCAN_ACCESS_KEY, WRONG_SECRET),
        ]
        scanned: list[str] = []
        replies: list[Reply] = []
        for route, extra in (
            ("direct", {}),
            # A dfdaemon at a closed port: every fetch is a fallback. Its log is JSON lines.
            (
                "fallback",
                {"dfdaemon": {"url": f"http://127.0.0.1:{free_port()}"}, "log_format": "json"},
            ),
        ):
            with start_shim(tmp_path / route, {**extra, "buckets": buckets}) as shim:
                replies += sign_every_way(shim, relay.endpoint, stale, body, route)
                with direct_opener.open(f"{shim.admin}/metrics", timeout=5) as response:
                    scanned.append(response.read().decode())
                scanned.append(shim.output())
            if "log_format" in extra:
                # Each line one object; its values decoded, where an escape could hide a secret.
                lines = [json.loads(line) for line in scanned[-1].splitlines()]
                assert {200, 403, 404} <= {line.get("status") for line in lines}
                scanned += [json.dumps(line, ensure_ascii=False) for line in lines]
            assert_private(shim.cache_dir)
            for key_file in ("mitmproxy-ca.pem", "mitmproxy-ca.p12"):
                assert_private(shim.workdir / "conf" / key_file)
    # The relay keeps the first request head of each connection: a few of shim's signatures.
    produced = signature_values(relay)
    assert len([value for value in produced if "/" not in value]) >= 2
    secrets = {SCAN_ACCESS_KEY, SCAN_SECRET, WRONG_SECRET} | produced | signature_values_in(stale)
    # Every signature, seen or not, is 64 hex digits; so is a task ID, which shim may print.
    task_ids = {reply.headers.get("X-Shim-Task-Id") for reply in replies}
    for text in scanned:
        assert [secret for secret in secrets if secret in text] == []
        assert re.search(r"X-Amz-(Signature|Credential)=(?!REDACTED)", text) is None
        assert set(_HEX64.findall(text)) <= task_ids
    for reply in replies:
        if reply.status != 200:
            assert [secret for secret in secrets if secret.encode() in reply.body] == []
            assert set(_HEX64.findall(reply.body.decode("latin-1"))) <= task_ids


def assert_private(path: Path) -> None:
    """``path`` and everything under it: no permission for other users."""
    for item in [path, *path.rglob("*")]:
        mode = item.stat().st_mode
        assert mode & (stat.S_IRWXO) == 0, f"{item} is {stat.filemode(mode)}"
