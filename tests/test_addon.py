"""The addon applies decisions: in-process, with mitmproxy's own test flows and shim's real
loopback cache server. What each hook does with a refused, passed-through or served request."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from mitmproxy import connection, http, tls
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.proxy import context, mode_specs, server_hooks
from mitmproxy.test import taddons, tflow, tutils

import shim.addon
from shim.addon import ShimAddon
from shim.cache.server import REFUSAL_PATH, TICKET_HEADER
from shim.config import settings_from_mapping
from shim.decide import Intercept, Tunnel

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
