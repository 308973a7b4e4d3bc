"""The addon applies decisions: in-process, with mitmproxy's own test flows and shim's real
loopback cache server. What each hook does with a refused, passed-through or served request."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit
from xml.etree import ElementTree

import aiohttp
import pytest
import yaml
from mitmproxy import connection, ctx, exceptions, http, tls
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.proxy import context, mode_specs, server_hooks
from mitmproxy.test import taddons, tflow, tutils
from prometheus_client import generate_latest

import shim.addon
from shim.addon import ShimAddon, dfdaemon_route
from shim.cache.conditional import Preconditions
from shim.cache.server import (
    CACHE_STATUS_HEADER,
    REFUSAL_PATH,
    ROUTE_HEADER,
    TASK_ID_HEADER,
    TICKET_HEADER,
)
from shim.config import S3_API_TARGET, Settings, settings_from_mapping
from shim.decide import Intercept, Refuse, Tunnel
from shim.dfdaemon import DragonflyOptions
from shim.logformat import REQUEST
from shim.redact import redact_url
from shim.requestlog import RequestRecord, text_line
from shim.takeover import BufferBudget, ClientConnection
from tests.cache.entries import commit_entry
from tests.support.relay import Relay

BUCKET_HOST = "models.s3.us-east-1.amazonaws.com"
CREDENTIALS = {"source": "static", "access_key_id": "AKIDADDONTEST", "secret_access_key": "k"}


def run[T](coroutine: Coroutine[Any, Any, T]) -> T:
    """Run on the loop the addon's cache server lives on (no pytest-asyncio here)."""
    return asyncio.get_event_loop_policy().get_event_loop().run_until_complete(coroutine)


@pytest.fixture
def addon(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ShimAddon]:
    extra: dict[str, Any] = getattr(request, "param", {})
    settings = settings_from_mapping(
        {
            "admin": "127.0.0.1:0",
            "cache": {"dir": str(tmp_path / "cache")},
            "buckets": [{"provider": "s3", "bucket": "models", "credentials": CREDENTIALS}],
            **extra,
        },
        env={},
    )
    instance = ShimAddon(settings)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        # Proxyserver declares connection_strategy, which the addon sets; it listens on nothing.
        with taddons.context(Proxyserver(), instance) as tctx:
            tctx.configure(instance)
            run(instance.running())
            yield instance
            run(instance.done())
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def flow_for(
    host: str, path: str, *, method: str = "GET", body: bytes = b"", mode: str = "regular"
) -> http.HTTPFlow:
    headers = http.Headers(Host=host)
    if body:
        headers["Content-Length"] = str(len(body))
    request = tutils.treq(
        host=host, port=80, method=method.encode(), path=path.encode(), headers=headers
    )
    request.timestamp_start = time.time()  # as mitmproxy sets it when the head arrives
    flow = tflow.tflow(req=request)
    flow.client_conn.proxy_mode = mode_specs.ProxyMode.parse(mode)
    return flow


def error_kind(flow: http.HTTPFlow) -> tuple[int, str]:
    assert flow.response is not None
    return flow.response.status_code, flow.response.headers["X-Shim-Error"]


def test_a_host_nobody_configured_is_refused_before_its_body(addon: ShimAddon) -> None:
    flow = flow_for("169.254.169.254", "/latest/meta-data/")
    addon.requestheaders(flow)
    assert error_kind(flow) == (403, "passthrough")


def test_a_refused_upload_is_answered_by_the_cache_server_and_never_forwarded(
    addon: ShimAddon,
) -> None:
    flow = flow_for(BUCKET_HOST, "/model.mar", method="PUT", body=b"x" * 100)
    addon.requestheaders(flow)
    request = flow.request
    assert flow.response is None  # mitmproxy would read the whole body before answering
    assert callable(request.stream) and request.stream(b"chunk") == b""
    assert request.headers["Content-Length"] == "0"
    assert (request.host, request.port, request.path) == (*addon_cache_address(addon), REFUSAL_PATH)
    ticket = {TICKET_HEADER: request.headers[TICKET_HEADER]}
    assert run(put(request.url, ticket)) == (403, "method")
    assert run(put(request.url, ticket)) == (403, "forbidden")  # a ticket serves once


async def put(url: str, headers: dict[str, str]) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.put(url, headers=headers) as reply:
        return reply.status, reply.headers["X-Shim-Error"]


def addon_cache_address(addon: ShimAddon) -> tuple[str, int]:
    assert addon._cache is not None
    return addon._cache.address


def test_a_served_request_carries_a_ticket_and_never_the_signature(addon: ShimAddon) -> None:
    flow = flow_for(BUCKET_HOST, "/dir/model.mar?X-Amz-Signature=stale")
    flow.request.headers["Authorization"] = "AWS4-HMAC-SHA256 client-own"
    addon.requestheaders(flow)
    run(addon.request(flow))
    request = flow.request
    assert flow.response is None
    assert (request.host, request.port, request.path) == (*addon_cache_address(addon), "/")
    assert TICKET_HEADER in request.headers and "Authorization" not in request.headers
    assert "X-Amz" not in str(request.headers) and "AKIDADDONTEST" not in str(request.headers)


def test_an_internal_error_answers_500_and_never_passes_through(
    addon: ShimAddon, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("a bug")

    # No real server produces a bug on demand: the one stand-in of this module.
    monkeypatch.setattr(shim.addon, "identify", broken)
    flow = flow_for(BUCKET_HOST, "/model.mar")
    addon.requestheaders(flow)
    run(addon.request(flow))
    assert error_kind(flow) == (500, "internal")
    assert flow.request.host == BUCKET_HOST  # not rerouted, not sent anywhere


@pytest.mark.parametrize("addon", [{"clients": ["10.0.0.0/8"]}], indirect=True)
def test_clients_outside_the_networks_are_cut(addon: ShimAddon) -> None:
    client = tflow.tclient_conn()
    addon.client_connected(client)
    assert client.error is not None
    client = tflow.tclient_conn()
    client.peername = ("10.9.8.7", 5000)
    addon.client_connected(client)
    assert client.error is None


def connect_flow(host: str, port: int) -> http.HTTPFlow:
    request = tutils.treq(host=host, port=port, method=b"CONNECT", path=b"", authority=b"")
    return tflow.tflow(req=request)


def client_hello(client: connection.Client) -> tls.ClientHelloData:
    ctx = context.Context(client, taddons.context().options)
    ctx.server.address = ("93.184.216.34", 443)
    return tls.ClientHelloData(ctx, tls.ClientHello(_CLIENT_HELLO))


# A minimal TLS 1.2 ClientHello without extensions.
_CLIENT_HELLO = bytes.fromhex("0303" + "00" * 32 + "00" + "0002" + "c02f" + "0100")


@pytest.mark.parametrize("addon", [{"passthrough": ["example.com:443"]}], indirect=True)
def test_connect_intercepts_buckets_tunnels_allowed_hosts_refuses_the_rest(
    addon: ShimAddon,
) -> None:
    bucket = connect_flow(BUCKET_HOST, 443)
    run(addon.http_connect(bucket))
    assert bucket.response is None and addon._tunnels[bucket.client_conn] == Intercept()
    hello = client_hello(bucket.client_conn)
    addon.tls_clienthello(hello)
    assert not hello.ignore_connection

    allowed = connect_flow("example.com", 443)
    run(addon.http_connect(allowed))
    assert addon._tunnels[allowed.client_conn] == Tunnel()
    hello = client_hello(allowed.client_conn)
    addon.tls_clienthello(hello)
    assert hello.ignore_connection  # relayed untouched, never decrypted

    refused = connect_flow("internal.example", 443)
    run(addon.http_connect(refused))
    assert error_kind(refused) == (403, "passthrough")


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    "addon", [{"proxy_auth": {"username": "u", "password": "p"}}], indirect=True
)
def test_proxy_auth_on_the_explicit_proxy_only(addon: ShimAddon) -> None:
    anonymous = flow_for(BUCKET_HOST, "/model.mar")
    addon.requestheaders(anonymous)
    assert anonymous.response is not None and anonymous.response.status_code == 407

    wrong = flow_for(BUCKET_HOST, "/model.mar")
    wrong.request.headers["Proxy-Authorization"] = basic("u", "nope")
    addon.requestheaders(wrong)
    assert wrong.response is not None and wrong.response.status_code == 407

    good = flow_for(BUCKET_HOST, "/model.mar")
    good.request.headers["Proxy-Authorization"] = basic("u", "p")
    addon.requestheaders(good)
    assert good.response is None and "Proxy-Authorization" not in good.request.headers

    # A transparent client cannot send proxy credentials; its listener has no such check.
    redirected = flow_for(BUCKET_HOST, "/model.mar", mode="transparent")
    addon.requestheaders(redirected)
    assert redirected.response is None


@pytest.mark.parametrize("addon", [{"passthrough": "all"}], indirect=True)
def test_the_gate_refuses_loopback_names_even_under_all(addon: ShimAddon) -> None:
    client = tflow.tclient_conn()
    for host in ("localhost", "vm", "127.0.0.1"):
        server = connection.Server(address=(host, 8791))
        run(addon.server_connect(server_hooks.ServerConnectionHookData(server, client)))
        assert server.error is not None and "shim:" in server.error, host
    own = connection.Server(address=addon_cache_address(addon))
    run(addon.server_connect(server_hooks.ServerConnectionHookData(own, client)))
    assert own.error is None


@pytest.mark.parametrize("addon", [{"passthrough": ["localhost:9000"]}], indirect=True)
def test_the_gate_pins_the_address_it_checked(addon: ShimAddon) -> None:
    server = connection.Server(address=("localhost", 9000))
    run(addon.server_connect(server_hooks.ServerConnectionHookData(server, tflow.tclient_conn())))
    assert server.error is None
    assert server.address is not None and server.address[0] in ("127.0.0.1", "::1")
    assert server.sni == "localhost"


@pytest.mark.parametrize("addon", [{"passthrough": "all"}], indirect=True)
def test_connect_to_a_name_of_a_loopback_address_is_refused_up_front(addon: ShimAddon) -> None:
    # 127.1 is no IP literal to ipaddress, but resolves to 127.0.0.1.
    flow = connect_flow("127.1", 443)
    run(addon.http_connect(flow))
    assert error_kind(flow) == (403, "passthrough")


# -- answers, request facts, what the response and error hooks count,
# and the settings the addon runs with (with the store's own fill API for entries) ------------

BODY = bytes(range(256)) * 40  # 10240 bytes


def plain(flow: http.HTTPFlow) -> http.HTTPFlow:
    """The flow as a plain-HTTP/1 client sends it (mitmproxy's test flows come over TLS)."""
    flow.client_conn.timestamp_tls_setup = None
    return flow


def ticket_key(addon: ShimAddon, flow: http.HTTPFlow) -> str:
    """The cache key of the object a flow the addon routed to its cache server names."""
    assert addon._cache is not None
    ticket = addon._cache._tickets[flow.request.headers[TICKET_HEADER]]
    assert not isinstance(ticket, Refuse)
    return ticket.identity.task_id


def serve(addon: ShimAddon, flow: http.HTTPFlow) -> http.HTTPFlow:
    addon.requestheaders(flow)
    run(addon.request(flow))
    return flow


def cache_entry(addon: ShimAddon, body: bytes, path: str = "/model.mar") -> str:
    """Put ``body`` into the addon's store as the entry of ``path`` (the store's own fill API:
    reserve, temporary file, commit); returns its key."""
    key = ticket_key(addon, serve(addon, plain(flow_for(BUCKET_HOST, path))))
    assert addon._cache is not None
    commit_entry(
        addon._cache.store,
        key,
        body,
        etag='"etag-1"',
        content_type="application/x-mar",
        stored_at=time.time(),  # just fetched: fresh under the default revalidation period
    )
    return key


def metric(addon: ShimAddon, name: str, **labels: str) -> float:
    return addon.metrics.registry.get_sample_value(name, labels) or 0.0


def routed_to_cache(addon: ShimAddon, flow: http.HTTPFlow) -> bool:
    assert addon._cache is not None
    request = flow.request
    host, port = addon._cache.address
    return (
        flow.response is None
        and (request.host, request.port, request.host_header) == (host, port, f"{host}:{port}")
        and TICKET_HEADER in request.headers
    )


# -- answers: small ones as mitmproxy's response, large ones on the client's connection --------

LARGE = os.urandom(shim.addon.SMALL_BODY + 4096)


def connected(addon: ShimAddon, monkeypatch: pytest.MonkeyPatch) -> socket.socket:
    """Give the addon a client connection to answer on, as mitmproxy's table would: the proxy's
    end of a real socket pair. Returns the client's end."""
    proxy_end, client_end = socket.socketpair()

    async def open_writer() -> asyncio.StreamWriter:
        return (await asyncio.open_connection(sock=proxy_end))[1]

    writer = run(open_writer())
    client = ClientConnection(writer, None, lambda: None, BufferBudget())
    monkeypatch.setattr(addon._clients, "of", lambda flow, proxyserver: client)
    return client_end


def received(client_end: socket.socket, serving: Callable[[], object]) -> bytes:
    """What the client's end receives while ``serving()`` runs, up to the connection's end of
    this answer (Content-Length after the head)."""
    chunks: list[bytes] = []

    def read() -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += client_end.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")))  # fmt: skip
        while len(body) < length:
            body += client_end.recv(65536)
        chunks.append(data.partition(b"\r\n\r\n")[0] + b"\r\n\r\n" + body)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    serving()
    reader.join(10)
    return chunks[0]


def test_a_large_hit_is_written_on_the_client_connection_then_the_flow_ends(
    addon: ShimAddon, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = cache_entry(addon, LARGE)
    assert addon._cache is not None
    client_end = connected(addon, monkeypatch)
    flow = plain(flow_for(BUCKET_HOST, "/model.mar"))
    answer = received(client_end, lambda: serve(addon, flow))
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 200 OK"
    assert f"Content-Length: {len(LARGE)}" in lines and "Connection: close" in lines
    assert f"{CACHE_STATUS_HEADER}: HIT" in lines and f"{TASK_ID_HEADER}: {key}" in lines
    assert body == LARGE
    # mitmproxy did not send this response: it is told to end the connection (kill), and
    # the kill is not logged or counted as a failed transfer.
    assert flow.response is None and flow.error is not None and flow.metadata["shim_sent"]
    addon.error(flow)
    assert metric(addon, "shim_errors_total", kind="transfer") == 0
    assert metric(addon, "shim_cache_hits_total") == 1
    assert metric(addon, "shim_response_bytes_total") == len(LARGE)
    assert key not in addon._cache.store._pins  # unpinned once sent
    assert TICKET_HEADER not in flow.request.headers  # not relayed through the cache server


def test_a_range_of_a_large_hit_is_written_on_the_client_connection(
    addon: ShimAddon, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache_entry(addon, LARGE)
    client_end = connected(addon, monkeypatch)
    flow = plain(flow_for(BUCKET_HOST, "/model.mar"))
    flow.request.headers["Range"] = "bytes=10-"
    head, _, body = received(client_end, lambda: serve(addon, flow)).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 206 Partial Content")
    assert f"Content-Range: bytes 10-{len(LARGE) - 1}/{len(LARGE)}".encode() in head
    assert body == LARGE[10:]


@pytest.mark.parametrize(
    ("range_header", "status", "content_range", "body"),
    [
        ("bytes=100-199", 206, "bytes 100-199/10240", BODY[100:200]),
        ("bytes=-10", 206, "bytes 10230-10239/10240", BODY[-10:]),
        ("bytes=10240-", 416, "bytes */10240", b""),
    ],
)
def test_a_small_answer_is_mitmproxys_response_and_the_connection_stays_open(
    addon: ShimAddon,
    monkeypatch: pytest.MonkeyPatch,
    range_header: str,
    status: int,
    content_range: str,
    body: bytes,
) -> None:
    key = cache_entry(addon, BODY)
    client_end = connected(addon, monkeypatch)
    flow = plain(flow_for(BUCKET_HOST, "/model.mar"))
    flow.request.headers["Range"] = range_header
    serve(addon, flow)
    assert flow.response is not None and flow.error is None
    assert flow.response.status_code == status
    assert flow.response.headers["Content-Range"] == content_range
    assert flow.response.raw_content == body
    assert flow.response.headers["Content-Length"] == str(len(body))
    assert flow.response.headers[CACHE_STATUS_HEADER] == "HIT"
    assert TICKET_HEADER not in flow.request.headers
    assert addon._cache is not None and key not in addon._cache.store._pins
    client_end.setblocking(False)
    with pytest.raises(BlockingIOError):
        client_end.recv(1)  # nothing was written on the connection itself


def test_a_head_keeps_the_objects_length_and_a_304_has_none(
    addon: ShimAddon, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache_entry(addon, LARGE)
    connected(addon, monkeypatch)
    head = serve(addon, plain(flow_for(BUCKET_HOST, "/model.mar", method="HEAD")))
    assert head.response is not None and head.response.raw_content == b""
    assert head.response.headers["Content-Length"] == str(len(LARGE))
    conditional = plain(flow_for(BUCKET_HOST, "/model.mar"))
    conditional.request.headers["If-None-Match"] = '"etag-1"'
    serve(addon, conditional)
    assert conditional.response is not None and conditional.response.status_code == 304
    assert "Content-Length" not in conditional.response.headers


def test_without_a_connection_to_answer_on_the_cache_server_answers(addon: ShimAddon) -> None:
    """mitmproxy's table has no such connection here (nothing listens): relayed, by ticket."""
    cache_entry(addon, LARGE)
    flow = serve(addon, plain(flow_for(BUCKET_HOST, "/model.mar")))
    assert routed_to_cache(addon, flow)


@pytest.mark.parametrize("addon", [{"cache": {"zero_copy_hits": False}}], indirect=True)
def test_zero_copy_hits_off_sends_every_hit_through_the_cache_server(
    addon: ShimAddon, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache_entry(addon, BODY)
    connected(addon, monkeypatch)
    flow = serve(addon, plain(flow_for(BUCKET_HOST, "/model.mar")))
    assert routed_to_cache(addon, flow)


# -- the facts a request gives decide() ----------------------------------------------------------


def test_a_transparent_request_is_named_by_its_host_header() -> None:
    flow = flow_for(BUCKET_HOST, "/model.mar", mode="transparent")
    flow.request.host = "10.0.0.1"  # where the redirected packets were going
    flow.request.headers["Host"] = BUCKET_HOST
    facts = shim.addon.request_facts(flow)
    assert (facts.listener, facts.host) == ("transparent", BUCKET_HOST)
    explicit = flow_for(BUCKET_HOST, "/model.mar")
    explicit.request.headers["Host"] = "Other.Example"
    facts = shim.addon.request_facts(explicit)
    assert (facts.listener, facts.host, facts.host_header) == (
        "regular",
        BUCKET_HOST,
        "Other.Example",
    )
    reverse = shim.addon.request_facts(flow_for("shim", "/m/a", mode="reverse:http://x"))
    assert reverse.listener == "reverse"


def test_hosts_are_compared_in_lower_case(addon: ShimAddon) -> None:
    flow = serve(addon, flow_for(BUCKET_HOST.upper(), "/model.mar"))
    assert routed_to_cache(addon, flow)


@pytest.mark.parametrize(
    ("headers", "has_body"),
    [
        ({}, False),
        ({"Content-Length": "0"}, False),
        ({"Content-Length": " "}, False),
        ({"Content-Length": "5"}, True),
        ({"Transfer-Encoding": "chunked"}, True),
    ],
)
def test_a_body_is_told_by_the_framing_headers(
    addon: ShimAddon, headers: dict[str, str], has_body: bool
) -> None:
    flow = flow_for(BUCKET_HOST, "/model.mar")
    flow.request.headers.update(headers)
    assert shim.addon.request_facts(flow).has_body is has_body
    addon.requestheaders(flow)
    assert flow.response is None
    assert addon._cache is not None
    ticket = addon._cache._tickets.get(flow.request.headers.get(TICKET_HEADER, ""))
    if has_body:  # a GET carries no body: refused, by the cache server as the body arrives
        assert flow.request.path == REFUSAL_PATH
        assert isinstance(ticket, Refuse) and (ticket.status, ticket.kind) == (400, "request")
    else:
        assert flow.request.path != REFUSAL_PATH


def test_a_transparent_pass_through_goes_to_the_name_decided_on(addon: ShimAddon) -> None:
    addon.settings = addon._settings().model_copy(update={"passthrough": ("example.com",)})
    bare = flow_for("example.com", "/", mode="transparent")  # no credentials to drop
    addon.requestheaders(bare)
    assert bare.response is None
    flow = flow_for("example.com", "/page", mode="transparent")
    flow.request.host = "93.184.216.34"
    flow.request.headers["Host"] = "example.com"
    flow.request.headers["Proxy-Authorization"] = "Basic eDp5"
    addon.requestheaders(flow)
    assert flow.response is None and flow.request.stream is True
    assert flow.request.host == "example.com"
    assert "Proxy-Authorization" not in flow.request.headers
    assert metric(addon, "shim_requests_total", route="pass") == 2


def test_a_flow_already_answered_or_not_live_is_left_alone(addon: ShimAddon) -> None:
    answered = flow_for("169.254.169.254", "/latest/meta-data/")
    answered.response = http.Response.make(407)
    addon.requestheaders(answered)
    assert answered.response.status_code == 407
    replayed = tflow.tflow(req=flow_for("169.254.169.254", "/").request, live=False)
    addon.requestheaders(replayed)
    assert replayed.response is None


def test_an_internal_error_while_deciding_answers_500_and_never_passes_through(
    addon: ShimAddon, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("a bug")

    # No real input makes decide() raise (a property test says so): a stand-in for a bug.
    monkeypatch.setattr(shim.addon, "decide", broken)
    flow = flow_for(BUCKET_HOST, "/model.mar")
    addon.requestheaders(flow)
    assert error_kind(flow) == (500, "internal")
    assert flow.response is not None
    assert flow.response.text == "shim: internal error; see shim's log\n"
    assert flow.response.headers["Content-Type"] == "text/plain"
    assert flow.request.host == BUCKET_HOST
    assert metric(addon, "shim_errors_total", kind="internal") == 1


# -- what the response and error hooks count ----------------------------------------------------


@pytest.mark.parametrize(
    ("cache_status", "route"), [("HIT", "hit"), ("MISS", "miss"), (None, "error")]
)
def test_each_served_response_is_counted_by_its_route(
    addon: ShimAddon, cache_status: str | None, route: str
) -> None:
    flow = serve(addon, flow_for(BUCKET_HOST, "/model.mar"))
    headers = {CACHE_STATUS_HEADER: cache_status} if cache_status else {}
    flow.response = http.Response.make(200, b"", headers)
    addon.responseheaders(flow)
    assert callable(flow.response.stream)  # streamed, its bytes counted on the way
    addon.response(flow)
    assert metric(addon, "shim_requests_total", route=route) == 1
    assert (
        sum(metric(addon, "shim_requests_total", route=other) for other in ("hit", "miss", "error"))
        == 1
    )


def test_a_passed_through_response_is_not_counted_again(addon: ShimAddon) -> None:
    flow = flow_for("example.com", "/")
    flow.response = http.Response.make(200, b"", {CACHE_STATUS_HEADER: "HIT"})
    addon.response(flow)
    assert metric(addon, "shim_requests_total", route="hit") == 0


def test_a_failed_transfer_of_a_served_object_is_counted(addon: ShimAddon) -> None:
    served = serve(addon, flow_for(BUCKET_HOST, "/model.mar"))
    served.error = tflow.terr()
    addon.error(served)
    other = flow_for("example.com", "/")
    other.error = tflow.terr()
    addon.error(other)
    assert metric(addon, "shim_errors_total", kind="transfer") == 1


# -- each served request's record (log line, recent requests) and its bucket and object metrics --


def answered_by_mitmproxy(addon: ShimAddon, flow: http.HTTPFlow) -> None:
    """What mitmproxy does with a response an addon set: its header hook, then its end."""
    addon.responseheaders(flow)
    addon.response(flow)


def only_record(addon: ShimAddon) -> RequestRecord:
    records = addon.recent.snapshot()
    assert len(records) == 1, records
    return records[0]


def test_a_small_hit_is_recorded_and_counted_by_bucket_and_object(
    addon: ShimAddon, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    key = cache_entry(addon, BODY)
    connected(addon, monkeypatch)
    flow = serve(addon, plain(flow_for(BUCKET_HOST, "/model.mar")))
    assert addon.recent.snapshot() == []  # not before mitmproxy sends it
    with caplog.at_level(logging.INFO, logger="shim"):
        answered_by_mitmproxy(addon, flow)
    record = only_record(addon)
    assert (record.method, record.url, record.bucket, record.status) == (
        "GET",
        f"http://{BUCKET_HOST}/model.mar",
        "models",
        200,
    )
    assert (record.cache, record.route, record.task_id, record.bytes) == (
        "HIT",
        "cache",
        key,
        len(BODY),
    )
    assert 0 <= record.duration < 60
    assert [r.getMessage() for r in caplog.records if r.name == "shim"] == [text_line(record)]
    object_labels = {"bucket": "models", "object": "model.mar"}
    assert metric(addon, "shim_bucket_hits_total", bucket="models") == 1
    assert metric(addon, "shim_bucket_misses_total", bucket="models") == 0
    assert metric(addon, "shim_bucket_response_bytes_total", bucket="models") == len(BODY)
    assert metric(addon, "shim_response_bytes_total") == len(BODY)
    # cache_entry's request (which found out the key) and this one.
    assert metric(addon, "shim_object_requests_total", **object_labels) == 2
    assert metric(addon, "shim_object_hits_total", **object_labels) == 1
    assert metric(addon, "shim_object_response_bytes_total", **object_labels) == len(BODY)


def test_an_answer_on_the_connection_is_recorded_after_its_last_byte(
    addon: ShimAddon, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache_entry(addon, LARGE)
    client_end = connected(addon, monkeypatch)
    flow = plain(flow_for(BUCKET_HOST, "/model.mar"))
    received(client_end, lambda: serve(addon, flow))
    addon.error(flow)  # mitmproxy's end of the killed flow: no second record
    record = only_record(addon)
    assert (record.status, record.cache, record.bytes) == (200, "HIT", len(LARGE))
    assert metric(addon, "shim_bucket_response_bytes_total", bucket="models") == len(LARGE)


def test_a_relayed_answer_counts_its_bytes_as_they_stream(addon: ShimAddon) -> None:
    flow = serve(addon, plain(flow_for(BUCKET_HOST, "/model.mar")))
    assert routed_to_cache(addon, flow)
    flow.response = http.Response.make(
        200, b"", {CACHE_STATUS_HEADER: "MISS", ROUTE_HEADER: "direct", TASK_ID_HEADER: "t1"}
    )
    addon.responseheaders(flow)
    stream = flow.response.stream
    assert callable(stream)
    assert [stream(chunk) for chunk in (b"abc", b"de", b"")] == [b"abc", b"de", b""]
    assert metric(addon, "shim_bucket_response_bytes_total", bucket="models") == 5  # so far
    flow.response.content = None  # a streamed body is not kept
    addon.response(flow)
    record = only_record(addon)
    assert (record.cache, record.route, record.task_id, record.bytes) == ("MISS", "direct", "t1", 5)
    assert metric(addon, "shim_bucket_misses_total", bucket="models") == 1


def test_a_failure_before_any_answer_is_recorded_once_as_a_502(
    addon: ShimAddon, caplog: pytest.LogCaptureFixture
) -> None:
    flow = serve(addon, plain(flow_for(BUCKET_HOST, "/model.mar")))
    secret = "http://x/y?X-Amz-Signature=5ecre7519"  # a message may quote a signed URL
    flow.error = tflow.terr(f"connection lost to {secret}")
    with caplog.at_level(logging.INFO, logger="shim"):
        addon.error(flow)
        addon.error(flow)
    record = only_record(addon)
    assert (record.status, record.cache, record.route, record.bytes) == (502, "-", "-", 0)
    assert record.task_id == ticket_key(addon, flow)
    assert record.error == f"failed: connection lost to {redact_url(secret)}"
    assert [r.getMessage() for r in caplog.records if r.name == "shim"] == [text_line(record)]
    # A refusal of a request no bucket has (so no record) keeps its own warning.
    with caplog.at_level(logging.INFO, logger="shim"):
        addon.requestheaders(flow_for("169.254.169.254", "/latest/meta-data/"))
    assert "GET http://169.254.169.254/latest/meta-data/ -> 403" in caplog.messages[-1]


def test_an_admin_prefetch_is_recorded_logged_and_counted_as_a_request(
    addon: ShimAddon, caplog: pytest.LogCaptureFixture
) -> None:
    key = cache_entry(addon, BODY)
    url = f"https://{BUCKET_HOST}/model.mar"
    with caplog.at_level(logging.INFO, logger="shim"):
        outcome = run(addon._warm(url, lambda _: None))
        run(addon._warm("https://example.com/x", lambda _: None))  # no bucket: no record
    assert (outcome.status, outcome.cache, outcome.error) == (200, "HIT", None)
    record = only_record(addon)
    assert (record.method, record.url, record.bucket, record.status) == (
        "PREFETCH",
        url,
        "models",
        200,
    )
    assert (record.cache, record.route, record.task_id, record.bytes) == ("HIT", "cache", key, 0)
    assert [r.getMessage() for r in caplog.records if r.name == "shim"] == [text_line(record)]
    # Its fields go on a JSON line (shim.logformat) as a client request's do.
    assert [getattr(r, REQUEST) for r in caplog.records if r.name == "shim"] == [record]
    assert metric(addon, "shim_bucket_hits_total", bucket="models") == 1
    labels = {"bucket": "models", "object": "model.mar"}
    assert metric(addon, "shim_object_requests_total", **labels) == 2  # cache_entry's and this
    assert metric(addon, "shim_object_hits_total", **labels) == 1
    assert metric(addon, "shim_bucket_response_bytes_total", bucket="models") == 0


@pytest.mark.parametrize("addon", [{"metrics": {"top_objects": 1}}], indirect=True)
def test_only_the_hottest_objects_have_series(addon: ShimAddon) -> None:
    for path in ("/hot.mar", "/hot.mar", "/cold.mar"):
        serve(addon, plain(flow_for(BUCKET_HOST, path)))
    assert metric(addon, "shim_object_requests_total", bucket="models", object="hot.mar") == 2
    sample = addon.metrics.registry.get_sample_value
    assert sample("shim_object_requests_total", {"bucket": "models", "object": "cold.mar"}) is None


# -- the S3 API listener ---------------------------------------------------------------------------

AZURE_BUCKET = {
    "provider": "azure",
    "account": "acct",
    "container": "weights",
    "endpoint": "http://127.0.0.1:9",  # never asked: start-after is refused before
    "credentials": {"source": "static", "account_key": "a2V5"},
}
CLIENT_SECRET = "5ecre7519"  # what a client's own signature carries: never shim's business


def s3_flow(target: str, method: str = "GET") -> http.HTTPFlow:
    """A path-style request on the S3 API listener, signed by its client."""
    flow = plain(flow_for("127.0.0.1", target, method=method, mode=f"reverse:{S3_API_TARGET}"))
    flow.request.headers["Authorization"] = (
        "AWS4-HMAC-SHA256 Credential=AKIDCLIENT/20250101/us-east-1/s3/aws4_request, "
        f"SignedHeaders=host, Signature={CLIENT_SECRET}"
    )
    return flow


@pytest.mark.parametrize(
    "addon",
    [
        {
            "buckets": [
                {"provider": "s3", "bucket": "models", "credentials": CREDENTIALS},
                AZURE_BUCKET,
            ]
        }
    ],
    indirect=True,
)
def test_s3_bucket_requests_are_recorded_logged_and_counted_as_requests(
    addon: ShimAddon, caplog: pytest.LogCaptureFixture
) -> None:
    presigned = (
        "&X-Amz-Credential=AKIDCLIENT%2F20250101%2Fus-east-1%2Fs3%2Faws4_request"
        f"&X-Amz-Signature={CLIENT_SECRET}"
    )
    location, head = s3_flow(f"/models?location{presigned}"), s3_flow("/models", "HEAD")
    refused = s3_flow("/weights?list-type=2&start-after=a")  # shim's own 501
    with caplog.at_level(logging.INFO, logger="shim"):
        for flow in (location, head, refused):
            serve(addon, flow)
            answered_by_mitmproxy(addon, flow)
    records = addon.recent.snapshot()[::-1]
    assert [(r.method, r.bucket, r.status, r.cache, r.route, r.task_id) for r in records] == [
        ("GET", "models", 200, "-", "-", "-"),
        ("HEAD", "models", 200, "-", "-", "-"),
        ("GET", "weights", 501, "-", "-", "-"),
    ]
    assert (
        location.response is not None
        and records[0].bytes == len(location.response.content or b"") > 0
    )
    assert "X-Amz-Signature=REDACTED" in records[0].url and records[2].error == "request"
    assert [r.getMessage() for r in caplog.records if r.name == "shim"] == [
        text_line(record) for record in records
    ]
    assert [getattr(r, REQUEST) for r in caplog.records if r.name == "shim"] == records
    # Neither the client's signature nor its key ID reached the log, its records or metrics.
    exported = caplog.text + repr(records) + generate_latest(addon.metrics.registry).decode()
    assert CLIENT_SECRET not in exported and "AKIDCLIENT" not in exported
    assert metric(addon, "shim_requests_total", route="bucket") == 3
    assert metric(addon, "shim_requests_total", route="error") == 0
    assert metric(addon, "shim_bucket_response_bytes_total", bucket="models") == records[0].bytes
    assert metric(addon, "shim_errors_total", kind="request") == 1
    # Their failures are shim's own S3 XML, not told again as an object's.
    assert refused.response is not None
    error = ElementTree.fromstring(refused.response.content or b"")
    assert (error.findtext("Code"), error.findtext("Resource"), error.findtext("Message")) == (
        "NotImplemented",
        "/weights",
        "start-after is not supported on an Azure container",
    )


def test_a_small_object_cut_short_is_an_s3_error_as_soon_as_it_is_answered(
    addon: ShimAddon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An origin that promises 1000 bytes and sends 10: no real server does so on demand.
    with Relay("127.0.0.1", 9) as origin:
        origin.answer = lambda head: (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n" + b"x" * 10
        )
        short = {"provider": "s3", "bucket": "short", "endpoint": origin.endpoint}
        run(
            addon.reconfigure(
                reload_settings(tmp_path, buckets=[{**short, "credentials": CREDENTIALS}])
            )
        )
        connected(addon, monkeypatch)
        flow = serve(addon, s3_flow("/short/small.bin"))
    # As read whole, before mitmproxy's response hook: in S3's XML already.
    assert flow.response is not None
    assert (flow.response.status_code, flow.response.headers["Content-Type"]) == (
        502,
        "application/xml",
    )
    assert flow.response.headers["X-Shim-Error"] == "origin"
    error = ElementTree.fromstring(flow.response.content or b"")
    assert (error.findtext("Code"), error.findtext("Resource")) == (
        "InternalError",
        "/short/small.bin",
    )
    assert metric(addon, "shim_errors_total", kind="truncated") == 1


def test_a_failed_small_read_keeps_the_shim_headers_whatever_the_case_of_their_names(
    addon: ShimAddon,
) -> None:
    key = cache_entry(addon, BODY)
    assert addon._cache is not None
    ticket = run(addon.object_ticket(f"https://{BUCKET_HOST}/model.mar"))
    assert not isinstance(ticket, Refuse)
    hit = run(addon._cache.respond(ticket, Preconditions.of(lambda name: [])))
    assert hit.stream is not None and hit.headers[CACHE_STATUS_HEADER] == "HIT"
    # The cache file lost its end since (a disk, an operator): the read cannot complete.
    addon._cache.store.data_path(key).write_bytes(BODY[:100])
    lowered = replace(hit, headers={name.lower(): value for name, value in hit.headers.items()})
    failed = run(addon._read_small(lowered, hit.stream))
    assert failed.status == 502
    assert (failed.headers["x-shim-cache"], failed.headers["x-shim-task-id"]) == ("HIT", key)


# -- the settings the addon runs with -------------------------------------------------------------


def test_a_dfdaemon_setting_becomes_the_cache_servers_route() -> None:
    settings = settings_from_mapping(
        {
            "dfdaemon": {
                "url": "http://127.0.0.1:4001",
                "tag": "t",
                "application": "a",
                "priority": 3,
                "fallback": False,
                "connect_timeout": 2.5,
            }
        },
        env={},
    )
    assert settings.dfdaemon is not None
    route = dfdaemon_route(settings.dfdaemon, None)
    assert route.address == ("127.0.0.1", 4001)
    assert route.options == DragonflyOptions("t", "a", 3)
    assert (route.fallback, route.connect_timeout, route.links) == (False, 2.5, None)


def test_a_link_dir_is_prepared_at_start_and_refused_when_open_to_others(
    addon: ShimAddon, tmp_path: Path
) -> None:
    def configured(link_dir: Path) -> ShimAddon:
        dfdaemon = {"url": "http://127.0.0.1:4001", "link_dir": str(link_dir)}
        raw = {"cache": {"dir": str(tmp_path / "cache")}, "dfdaemon": dfdaemon}
        instance = ShimAddon(settings_from_mapping(raw, env={}))
        instance.configure(set())  # in the fixture's mitmproxy context, a second proxy
        return instance

    links, shared = tmp_path / "links", tmp_path / "shared"
    started = configured(links)
    assert started._links is not None and started._links.path == links
    assert links.stat().st_mode & 0o777 == 0o700
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    with pytest.raises(exceptions.OptionsError, match="open to other users"):
        configured(shared)


@pytest.mark.parametrize(
    "addon",
    [
        {
            "dfdaemon": "http://127.0.0.1:4001",
            "origin_timeout": 7,
            "presign_expires": 600,
            "cache": {"min_free": "5MiB"},
        }
    ],
    indirect=True,
)
def test_running_starts_the_cache_server_with_the_settings(addon: ShimAddon) -> None:
    assert addon.ready
    cache = addon._cache
    assert cache is not None
    assert cache.store.min_free == 5 * 1024 * 1024
    assert cache._origin_timeout == 7
    assert cache._dfdaemon is not None and cache._dfdaemon.address == ("127.0.0.1", 4001)
    assert cache._keep is False  # the dfdaemon keeps the objects; keep_copy is off
    flow = serve(addon, flow_for(BUCKET_HOST, "/model.mar"))
    ticket = cache._tickets[flow.request.headers[TICKET_HEADER]]
    assert not isinstance(ticket, Refuse)
    assert parse_qs(urlsplit(ticket.signed_url).query)["X-Amz-Expires"] == ["600"]


def test_the_proxy_connects_lazily_and_cache_settings_cannot_change_live(
    addon: ShimAddon, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert ctx.options.connection_strategy == "lazy"  # mitmproxy's default is eager
    addon._given_settings = None  # from the shim_config option from now on

    def reconfigure(raw: dict[str, Any]) -> None:
        # A file each: a refused one is rolled back to the option's previous file.
        config = tmp_path / f"shim-{len(list(tmp_path.glob('shim-*.yaml')))}.yaml"
        config.write_text(yaml.safe_dump(raw))

        async def set_option() -> None:  # as mitmdump sets options: on its event loop
            with ctx.options.rollback({"shim_config"}, reraise=True):
                ctx.options.update(shim_config=str(config))

        run(set_option())

    same = {"cache": {"dir": str(tmp_path / "cache")}, "admin": "127.0.0.1:0"}
    other = {"provider": "s3", "bucket": "other", "credentials": CREDENTIALS}
    with caplog.at_level(logging.INFO, logger="shim"):
        reconfigure({**same, "buckets": [other]})  # buckets may change while shim runs
        assert [b.bucket for b in addon._settings().buckets] == ["other"]
        with pytest.raises(exceptions.OptionsError, match="restart"):
            reconfigure({**same, "cache": {"dir": str(tmp_path / "elsewhere")}})
        with pytest.raises(exceptions.OptionsError, match="restart"):
            reconfigure({**same, "admin": "127.0.0.1:1"})
        reconfigure({**same, "buckets": [other]})
    assert [b.bucket for b in addon._settings().buckets] == ["other"]
    # Logged and counted as shim run's reloads are (shim.reload).
    assert "config reloaded (shim_config option): buckets +other -models" in caplog.messages
    assert "config reload (shim_config option): nothing changed" in caplog.messages
    # (mitmproxy's rollback of each refused one sets the running config's file again, which
    # changes nothing: counted as unchanged, as the last one is.)
    reloads = {
        r: metric(addon, "shim_config_reloads_total", result=r) for r in ("applied", "refused")
    }
    assert reloads == {"applied": 1, "refused": 2}


# -- reloads while running (shim.reload decides what may change) -------------------------------


def reload_settings(tmp_path: Path, **change: Any) -> Settings:
    """Settings as the fixture's, with ``change``: the same cache and admin."""
    raw = {"admin": "127.0.0.1:0", "cache": {"dir": str(tmp_path / "cache")}, **change}
    return settings_from_mapping(raw, env={})


def test_a_request_decided_before_a_reload_is_signed_as_decided(
    addon: ShimAddon, tmp_path: Path
) -> None:
    decided = plain(flow_for(BUCKET_HOST, "/model.mar"))
    addon.requestheaders(decided)
    run(addon.reconfigure(reload_settings(tmp_path)))  # the bucket is gone
    run(addon.request(decided))
    assert routed_to_cache(addon, decided)
    assert addon._cache is not None
    ticket = addon._cache._tickets[decided.request.headers[TICKET_HEADER]]
    assert not isinstance(ticket, Refuse) and "X-Amz-Signature=" in ticket.signed_url
    # Decided from now on: refused.
    after = plain(flow_for(BUCKET_HOST, "/model.mar"))
    addon.requestheaders(after)
    assert error_kind(after) == (403, "passthrough")


@pytest.mark.parametrize("addon", [{"dfdaemon": "http://127.0.0.1:4001"}], indirect=True)
def test_a_reload_gives_the_fetches_that_start_next_its_headers_and_dfdaemon_route(
    addon: ShimAddon, tmp_path: Path
) -> None:
    dfdaemon = {"url": "http://127.0.0.1:4002", "fallback": False, "priority": 2}
    run(addon.reconfigure(reload_settings(tmp_path, dfdaemon=dfdaemon, headers={"X-Team": "ml"})))
    assert addon._cache is not None and addon._cache._upstream is not None
    upstream = addon._cache._upstream
    assert upstream._headers == {"X-Team": "ml", "Accept-Encoding": "identity"}
    assert upstream._dfdaemon is not None
    assert upstream._dfdaemon.address == ("127.0.0.1", 4002)
    assert (upstream._dfdaemon.fallback, upstream._dfdaemon.options.priority) == (False, 2)


@pytest.fixture
def no_aws_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The AWS SDK's default chain, with nothing to find: no variables, files or IMDS."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("BOTO_CONFIG", str(tmp_path / "none"))


@pytest.mark.usefixtures("no_aws_credentials")
def test_a_reload_checks_the_credentials_it_brings_and_forgets_removed_buckets(
    addon: ShimAddon, tmp_path: Path
) -> None:
    def gauge(alias: str) -> float | None:
        labels = {"bucket": alias, "provider": "s3"}
        return addon.metrics.registry.get_sample_value("shim_bucket_credentials", labels)

    run(asyncio.gather(*addon._credential_checks))
    assert gauge("models") == 1
    kept = addon._signers[addon._settings().buckets[0]]
    buckets = [
        {"provider": "s3", "bucket": "models", "credentials": CREDENTIALS},
        {"provider": "s3", "bucket": "broken", "credentials": {"source": "default"}},
    ]
    run(addon.reconfigure(reload_settings(tmp_path, buckets=buckets)))
    assert addon._signers[addon._settings().buckets[0]] is kept
    run(asyncio.gather(*addon._credential_checks))
    assert (gauge("models"), gauge("broken")) == (1, 0)
    removed = addon._settings().buckets[1]
    stale = addon._signers[removed]
    run(addon.reconfigure(reload_settings(tmp_path, buckets=buckets[:1])))
    assert (gauge("models"), gauge("broken")) == (1, None)
    # A check that ends after a reload removed its bucket leaves the gauge alone.
    run(addon._check_credentials({removed: stale}))
    assert gauge("broken") is None


CHANGED_FROM = {"provider": "s3", "bucket": "models", "credentials": CREDENTIALS}


@pytest.mark.usefixtures("no_aws_credentials")
def test_a_reload_shows_changed_and_removed_buckets_credentials_as_checking_until_checked(
    addon: ShimAddon, tmp_path: Path
) -> None:
    def gauge(alias: str) -> float | None:
        labels = {"bucket": alias, "provider": "s3"}
        return addon.metrics.registry.get_sample_value("shim_bucket_credentials", labels)

    kept = {"provider": "s3", "bucket": "kept", "credentials": CREDENTIALS}
    removed = {"provider": "s3", "bucket": "removed", "credentials": CREDENTIALS}
    run(addon.reconfigure(reload_settings(tmp_path, buckets=[CHANGED_FROM, kept, removed])))
    run(asyncio.gather(*addon._credential_checks))
    assert addon.credentials == {
        ("models", "s3"): True,
        ("kept", "s3"): True,
        ("removed", "s3"): True,
    }
    # models' credentials now come from a chain that finds none; removed is gone.
    changed = {**CHANGED_FROM, "credentials": {"source": "default"}}
    run(addon.reconfigure(reload_settings(tmp_path, buckets=[changed, kept])))
    assert addon.credentials == {("kept", "s3"): True}  # models: "checking", not "loaded"
    assert (gauge("models"), gauge("kept"), gauge("removed")) == (None, 1, None)
    run(asyncio.gather(*addon._credential_checks))
    assert addon.credentials == {("models", "s3"): False, ("kept", "s3"): True}
    assert (gauge("models"), gauge("kept"), gauge("removed")) == (0, 1, None)


# -- proxy credentials per connection, transparent TLS, and the paths that answer directly -------

AUTH = {"proxy_auth": {"username": "u", "password": "p"}}


def serve_with(addon: ShimAddon, flow: http.HTTPFlow, credentials: str | None) -> http.HTTPFlow:
    if credentials is not None:
        flow.request.headers["Proxy-Authorization"] = credentials
    return serve(addon, flow)


@pytest.mark.parametrize("addon", [AUTH], indirect=True)
def test_credentials_proved_in_a_connect_cover_its_tunnel_and_nothing_else(
    addon: ShimAddon,
) -> None:
    tunnel = connect_flow(BUCKET_HOST, 443)
    tunnel.request.headers["Proxy-Authorization"] = basic("u", "p")
    run(addon.http_connect(tunnel))
    assert tunnel.response is None and "Proxy-Authorization" not in tunnel.request.headers
    inside = flow_for(BUCKET_HOST, "/model.mar")
    inside.client_conn = tunnel.client_conn
    assert routed_to_cache(addon, serve_with(addon, inside, None))  # decided, and signed

    # An authorised plain request proves nothing for the next one on its connection.
    first = serve_with(addon, flow_for(BUCKET_HOST, "/model.mar"), basic("u", "p"))
    assert routed_to_cache(addon, first)
    second = flow_for(BUCKET_HOST, "/model.mar")
    second.client_conn = first.client_conn
    addon.requestheaders(second)
    assert second.response is not None and second.response.status_code == 407

    # Without credentials a CONNECT is answered 407, whatever it asked for.
    anonymous = connect_flow("internal.example", 443)
    run(addon.http_connect(anonymous))
    assert anonymous.response is not None and anonymous.response.status_code == 407
    assert anonymous.client_conn not in addon._tunnels
    assert metric(addon, "shim_errors_total", kind="auth") == 2


@pytest.mark.parametrize("addon", [AUTH], indirect=True)
def test_new_proxy_credentials_apply_to_new_requests_and_an_open_tunnel_keeps_its_admission(
    addon: ShimAddon, tmp_path: Path
) -> None:
    tunnel = connect_flow(BUCKET_HOST, 443)
    tunnel.request.headers["Proxy-Authorization"] = basic("u", "p")
    run(addon.http_connect(tunnel))
    buckets = [{"provider": "s3", "bucket": "models", "credentials": CREDENTIALS}]
    rotated = {"username": "u", "password": "rotated"}
    run(addon.reconfigure(reload_settings(tmp_path, buckets=buckets, proxy_auth=rotated)))

    inside = flow_for(BUCKET_HOST, "/model.mar")
    inside.client_conn = tunnel.client_conn
    assert routed_to_cache(addon, serve_with(addon, inside, None))
    old = serve_with(addon, flow_for(BUCKET_HOST, "/model.mar"), basic("u", "p"))
    assert old.response is not None and old.response.status_code == 407
    assert routed_to_cache(
        addon, serve_with(addon, flow_for(BUCKET_HOST, "/model.mar"), basic("u", "rotated"))
    )


@pytest.mark.parametrize("addon", [{"clients": ["10.0.0.0/8"]}], indirect=True)
def test_a_refused_client_is_counted(addon: ShimAddon) -> None:
    addon.client_connected(tflow.tclient_conn())
    assert metric(addon, "shim_errors_total", kind="client_refused") == 1


def hello_with_sni(server_name: str | None) -> bytes:
    """A TLS 1.2 ClientHello, with a server_name extension when a name is given."""
    extensions = b""
    if server_name is not None:
        name = server_name.encode()
        entry = b"\x00" + len(name).to_bytes(2, "big") + name
        listed = len(entry).to_bytes(2, "big") + entry
        extensions = b"\x00\x00" + len(listed).to_bytes(2, "big") + listed
    return _CLIENT_HELLO + len(extensions).to_bytes(2, "big") + extensions


def transparent_hello(server_name: str | None) -> tls.ClientHelloData:
    client = tflow.tclient_conn()
    client.proxy_mode = mode_specs.ProxyMode.parse("transparent")
    ctx = context.Context(client, taddons.context().options)
    ctx.server.address = ("93.184.216.34", 443)  # where the redirected packets were going
    return tls.ClientHelloData(ctx, tls.ClientHello(hello_with_sni(server_name)))


@pytest.mark.parametrize("addon", [{"passthrough": ["example.com:443"]}], indirect=True)
def test_transparent_tls_is_decided_by_its_server_name(addon: ShimAddon) -> None:
    bucket = transparent_hello(BUCKET_HOST.upper())
    addon.tls_clienthello(bucket)
    assert not bucket.ignore_connection  # intercepted: its requests are signed
    assert addon._tunnels[bucket.context.client] == Intercept()

    allowed = transparent_hello("example.com")
    addon.tls_clienthello(allowed)
    assert allowed.ignore_connection
    assert addon._tunnels[allowed.context.client] == Tunnel()
    # Relayed to the name decided on (checked again as it resolves), not the packets' address.
    assert allowed.context.server.address == ("example.com", 443)

    for refused in (transparent_hello("internal.example"), transparent_hello(None)):
        addon.tls_clienthello(refused)
        assert refused.ignore_connection
        assert isinstance(addon._tunnels[refused.context.client], Refuse)
        assert refused.context.server.address == ("93.184.216.34", 443)


@pytest.mark.parametrize("addon", [{"passthrough": ["example.com"]}], indirect=True)
def test_a_passed_through_request_is_left_to_mitmproxy(addon: ShimAddon) -> None:
    flow = flow_for("example.com", "/page")
    addon.requestheaders(flow)
    run(addon.request(flow))
    assert flow.response is None and flow.request.stream is True
    assert (flow.request.host, flow.request.port) == ("example.com", 80)


def test_a_served_request_is_not_served_once_answered_or_gone(addon: ShimAddon) -> None:
    answered = flow_for(BUCKET_HOST, "/model.mar")
    addon.requestheaders(answered)
    answered.response = http.Response.make(204)  # another addon answered meanwhile
    run(addon.request(answered))
    assert answered.response.status_code == 204 and answered.request.host == BUCKET_HOST

    gone = flow_for(BUCKET_HOST, "/model.mar")
    addon.requestheaders(gone)
    gone.live = False  # the client went away
    run(addon.request(gone))
    assert gone.response is None and gone.request.host == BUCKET_HOST


def test_a_refusal_answered_directly_keeps_its_headers(addon: ShimAddon) -> None:
    flow = flow_for("shim", "/models/model.mar", method="PUT", mode="reverse:http://x")
    addon.requestheaders(flow)
    assert error_kind(flow) == (405, "method")
    assert flow.response is not None and flow.response.headers["Allow"] == "GET, HEAD"
    assert flow.response.text == "shim: the reverse listener serves GET and HEAD only\n"


@pytest.mark.parametrize(
    "addon",
    [{"buckets": [{"provider": "s3", "bucket": "models", "credentials": {"source": "default"}}]}],
    indirect=True,
)
@pytest.mark.usefixtures("no_aws_credentials")
def test_a_bucket_without_credentials_answers_502_signing_in_one_log_line(
    addon: ShimAddon, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="shim"):
        flow = serve(addon, flow_for(BUCKET_HOST, "/model.mar"))
        answered_by_mitmproxy(addon, flow)
    assert error_kind(flow) == (502, "signing")
    assert flow.response is not None
    assert "no credentials found for bucket 'models'" in flow.response.text
    assert flow.request.host == BUCKET_HOST  # nothing sent anywhere
    assert metric(addon, "shim_errors_total", kind="signing") == 1
    record = only_record(addon)
    assert record.status == 502 and record.error.startswith("signing: no credentials found")
    # Its one line (the start-up check's error line about the bucket aside: no warning).
    lines = [r for r in caplog.records if r.name == "shim" and r.levelno < logging.ERROR]
    assert [r.getMessage() for r in lines] == [text_line(record)]
    assert text_line(record).endswith(f"error: {record.error}")


def test_an_addon_is_not_ready_before_it_runs(tmp_path: Path) -> None:
    settings = settings_from_mapping({"cache": {"dir": str(tmp_path)}}, env={})
    assert ShimAddon(settings).ready is False


def test_the_ticket_names_the_method_and_the_signature_parameters_to_filter(
    addon: ShimAddon,
) -> None:
    for method in ("GET", "HEAD"):
        flow = serve(addon, plain(flow_for(BUCKET_HOST, "/model.mar", method=method)))
        assert addon._cache is not None
        ticket = addon._cache._tickets[flow.request.headers[TICKET_HEADER]]
        assert not isinstance(ticket, Refuse)
        assert ticket.method == method  # the cache server serves a ticket to its method only
        assert "X-Amz-Signature" in ticket.filtered and "X-Amz-Credential" in ticket.filtered
