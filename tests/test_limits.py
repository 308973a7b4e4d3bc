"""shim.limits: request head bounds on mitmproxy's own HTTP/1 server layer, driven in-process
with mitmproxy's events and commands (no sockets: the integration test has those)."""

from __future__ import annotations

import pytest
from mitmproxy import http, options, version
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.connection import Client, ConnectionState
from mitmproxy.proxy import commands, events, layer
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers.http import HttpLayer, HTTPMode
from mitmproxy.proxy.layers.http._base import ReceiveHttp
from mitmproxy.proxy.layers.http._events import (
    ErrorCode,
    RequestData,
    RequestHeaders,
    RequestProtocolError,
    ResponseEndOfMessage,
    ResponseHeaders,
)
from mitmproxy.proxy.layers.http._http1 import Http1Server

from shim import limits
from shim.config import Limits
from shim.limits import LINGER_SECONDS, IncompatibleMitmproxy, check_internals, install

CAP = 1024
TIMEOUT = 5.0


@pytest.fixture
def bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    # install() patches mitmproxy's class: put the original back after each test.
    monkeypatch.setattr(Http1Server, "_handle_event", Http1Server._handle_event)
    install(Limits(request_head_bytes=CAP, request_head_timeout=TIMEOUT))


def make_context() -> Context:
    opts = options.Options()
    Proxyserver().load(opts)  # type: ignore[no-untyped-call]
    client = Client(peername=("127.0.0.1", 40000), sockname=("127.0.0.1", 8790), timestamp_start=0)
    client.state = ConnectionState.OPEN
    return Context(client, opts)


@pytest.fixture
def server(bounded: None) -> Http1Server:
    server = Http1Server(make_context())
    assert not feed(server, events.Start())
    return server


def feed(target: layer.Layer, *sequence: events.Event) -> list[commands.Command]:
    return [command for event in sequence for command in target.handle_event(event)]


def data(server: layer.Layer, payload: bytes) -> events.DataReceived:
    return events.DataReceived(server.context.client, payload)


def sent(issued: list[commands.Command]) -> bytes:
    return b"".join(c.data for c in issued if isinstance(c, commands.SendData))


def of_type[C](issued: list[commands.Command], kind: type[C]) -> list[C]:
    return [c for c in issued if isinstance(c, kind)]


def http_events(issued: list[commands.Command]) -> list[object]:
    return [c.event for c in issued if isinstance(c, ReceiveHttp)]


def head(size: int, *, end: bool = True, extra: str = "") -> bytes:
    """A GET head of exactly ``size`` bytes (with its blank line when ``end``)."""
    start = f"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n{extra}X-Pad: "
    tail = "\r\n\r\n" if end else ""
    return (start + "a" * (size - len(start) - len(tail)) + tail).encode()


def assert_answered(issued: list[commands.Command], status: int) -> commands.RequestWakeup:
    """The connection got ``status``, stopped writing and lingers: returns the linger timer."""
    assert sent(issued).startswith(f"HTTP/1.1 {status} ".encode())
    assert b"Connection: close" in sent(issued)
    assert not http_events(issued)  # no request reaches mitmproxy's streams or the addon
    closes = of_type(issued, commands.CloseTcpConnection)
    assert len(closes) == 1 and closes[0].half_close
    (linger,) = (w for w in of_type(issued, commands.RequestWakeup) if w.delay == LINGER_SECONDS)
    return linger


# -- size -----------------------------------------------------------------------------------------


def test_a_head_of_the_cap_is_parsed(server: Http1Server) -> None:
    issued = feed(server, data(server, head(CAP)))
    assert not sent(issued)
    request, _end = http_events(issued)
    assert isinstance(request, RequestHeaders)
    assert request.request.headers["X-Pad"].startswith("aaa")


def test_a_complete_head_over_the_cap_in_one_read_gets_431_unparsed(server: Http1Server) -> None:
    assert_answered(feed(server, data(server, head(CAP + 1))), 431)


def test_an_endless_head_gets_431_and_is_never_held_past_the_cap(server: Http1Server) -> None:
    payload = head(200 * CAP, end=False)
    issued: list[commands.Command] = []
    for offset in range(0, len(payload), 100):
        issued += feed(server, data(server, payload[offset : offset + 100]))
        assert len(server.buf) <= CAP
    assert_answered(issued, 431)
    assert sent(issued).count(b"HTTP/1.1") == 1


def test_blank_lines_before_a_head_count_against_the_cap(server: Http1Server) -> None:
    # h11 strips one leading blank line per read, so these would pile up.
    issued: list[commands.Command] = []
    for _ in range(CAP):
        issued += feed(server, data(server, b"\r\n\r\n"))
        assert len(server.buf) <= CAP
    assert_answered(issued, 431)


def test_a_head_with_its_body_in_one_read_passes(server: Http1Server) -> None:
    body = b"b" * (4 * CAP)
    issued = feed(
        server, data(server, head(CAP // 2, extra=f"Content-Length: {len(body)}\r\n") + body)
    )
    assert not sent(issued)
    request, chunk, *_ = http_events(issued)
    assert isinstance(request, RequestHeaders)
    assert isinstance(chunk, RequestData) and chunk.data == body


def test_an_answered_connection_drops_input_and_closes_after_lingering(
    server: Http1Server,
) -> None:
    linger = assert_answered(feed(server, data(server, head(2 * CAP, end=False))), 431)
    for _ in range(100):
        assert not feed(server, data(server, b"x" * 65536))
        assert len(server.buf) == 0
    closed = feed(server, events.Wakeup(linger))
    assert [type(c) for c in closed] == [commands.CloseConnection]


def test_an_endless_chunk_size_line_is_cut_off(server: Http1Server) -> None:
    chunked = head(200, extra="Transfer-Encoding: chunked\r\n").replace(b"GET", b"PUT", 1)
    assert not sent(feed(server, data(server, chunked)))
    issued = feed(server, data(server, b"1" * (CAP + 1)))
    assert of_type(issued, commands.CloseConnection)
    (error,) = http_events(issued)
    assert isinstance(error, RequestProtocolError) and error.code is ErrorCode.REQUEST_TOO_LARGE
    assert len(server.buf) == 0
    assert not feed(server, data(server, b"1" * 65536))


def test_requests_piling_up_while_a_response_is_sent_are_cut_off(server: Http1Server) -> None:
    feed(server, data(server, head(200)))
    assert not of_type(feed(server, data(server, head(CAP // 2))), commands.CloseConnection)
    issued = feed(server, data(server, head(CAP // 2 + 1)))  # the pipelined heads exceed the cap
    assert of_type(issued, commands.CloseConnection)
    (error,) = http_events(issued)
    assert isinstance(error, RequestProtocolError) and error.code is ErrorCode.REQUEST_TOO_LARGE


# -- time -----------------------------------------------------------------------------------------


def test_a_slow_head_gets_408_when_its_timer_fires(server: Http1Server) -> None:
    (timer,) = of_type(feed(server, data(server, b"GET http://exa")), commands.RequestWakeup)
    assert timer.delay == TIMEOUT
    # Later bytes do not push the deadline back.
    assert not feed(server, data(server, b"mple.com/ HTTP/1.1\r\n"))
    assert_answered(feed(server, events.Wakeup(timer)), 408)


def test_the_timer_of_a_completed_head_is_ignored(server: Http1Server) -> None:
    (timer,) = of_type(feed(server, data(server, b"GET http://exa")), commands.RequestWakeup)
    request, _end = http_events(feed(server, data(server, b"mple.com/ HTTP/1.1\r\n\r\n")))
    assert isinstance(request, RequestHeaders)
    # mitmproxy's own states would raise on an unexpected event: the wrapper takes it.
    assert not feed(server, events.Wakeup(timer))


def test_each_head_on_a_kept_alive_connection_has_its_own_deadline(server: Http1Server) -> None:
    (first,) = of_type(feed(server, data(server, b"GET / HTTP/1.1\r\n")), commands.RequestWakeup)
    feed(server, data(server, b"Host: example.com\r\n\r\n"))
    response = http.Response.make(200, b"", {"Content-Length": "0"})
    feed(server, ResponseHeaders(1, response, True), ResponseEndOfMessage(1))
    assert not feed(server, events.Wakeup(first))  # idle between requests: no timer runs
    (second,) = of_type(feed(server, data(server, b"GET /")), commands.RequestWakeup)
    assert not feed(server, events.Wakeup(first))
    assert_answered(feed(server, events.Wakeup(second)), 408)


def test_an_idle_connection_has_no_deadline(server: Http1Server) -> None:
    assert not of_type(feed(server, data(server, b"")), commands.RequestWakeup)


def test_the_http_layer_routes_the_timer_back_to_its_connection(bounded: None) -> None:
    context = make_context()
    http_layer = HttpLayer(context, HTTPMode.regular)
    feed(http_layer, events.Start())
    partial = events.DataReceived(context.client, b"GET http://example.com/ HTTP/1.1\r\n")
    (timer,) = of_type(feed(http_layer, partial), commands.RequestWakeup)
    assert_answered(feed(http_layer, events.Wakeup(timer)), 408)


def test_limits_installed_again_replace_the_old_ones(server: Http1Server) -> None:
    install(Limits(request_head_bytes=2 * CAP, request_head_timeout=1))
    issued = feed(server, data(server, head(CAP + 1, end=False)))
    assert not sent(issued)
    assert [w.delay for w in of_type(issued, commands.RequestWakeup)] == [1]


# -- what the wrapper relies on -------------------------------------------------------------------


def test_the_installed_mitmproxy_has_the_shape_the_wrapper_expects() -> None:
    check_internals()


def test_another_major_version_of_mitmproxy_stops_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(version, "VERSION", "13.0.0")
    with pytest.raises(IncompatibleMitmproxy, match=r"mitmproxy 13\.0\.0 is installed"):
        check_internals()


def test_changed_internals_stop_start_up_before_anything_is_patched(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def read_headers(self: Http1Server, event: events.Event) -> layer.CommandGenerator[None]:
        yield from ()

    monkeypatch.setattr(Http1Server, "read_headers", read_headers)
    original = Http1Server._handle_event
    with pytest.raises(IncompatibleMitmproxy, match=r"read_headers no longer has"):
        install(Limits())
    assert Http1Server._handle_event is original


def test_required_options_are_set_only_when_they_differ() -> None:
    opts = options.Options()
    updates = Updates()
    opts.changed.connect(updates.record)
    assert (opts.http2, opts.rawtcp) == (True, True)
    limits.apply_options(opts)
    assert (opts.http2, opts.rawtcp) == (False, False)
    limits.apply_options(opts)
    assert updates.seen == [{"http2", "rawtcp"}]


class Updates:
    def __init__(self) -> None:
        self.seen: list[set[str]] = []

    def record(self, updated: set[str]) -> None:
        self.seen.append(updated)
