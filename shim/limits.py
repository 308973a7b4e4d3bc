"""Bounds on request heads: a size cap (431) and a deadline (408) on every proxy listener.

mitmproxy 12's HTTP/1 server reads a request head with no bound on its size (``# FIXME:
protect against header size DoS`` in ``proxy/layers/http/_http1.py``: a 200 MB header grew
shim by 800 MB and was served) and no deadline (its only timeout, ``tcp_timeout``, counts
inactivity, which a client sending one byte every few seconds resets forever). It has no
option or hook for either: the head is parsed before any addon sees a request. So this
module wraps the one method every event of a client's HTTP/1 connection passes through,
``Http1Server._handle_event``, on every listener (regular, transparent, reverse) and inside
intercepted CONNECT tunnels, where the decrypted requests reach an ``Http1Server`` of their
own. The wrapper, not mitmproxy's code, decides; mitmproxy's states are only observed, and
changed the way mitmproxy's own error paths change them:

- Bytes the server holds unparsed never exceed ``request_head_bytes``: a head that does not
  end within them is answered 431 before mitmproxy parses it. A request still being read (an
  endless chunk-size line) or the next request piling up while a response is sent is cut
  off as mitmproxy cuts off a malformed body.
- A head still incomplete ``request_head_timeout`` seconds after its first byte is answered
  408. The timer is a ``RequestWakeup``, which ``HttpLayer`` routes back to the connection
  layer that asked for it, through CONNECT tunnels and TLS as well.
- After answering, shim stops writing, reads and drops what the client still sends for a
  moment, then closes: closing with unread input makes the kernel reset the connection,
  and the client may lose the answer.

The wrapped internals are checked when installing; if they changed shape, start-up fails.

What this needs from mitmproxy's options (``REQUIRED_OPTIONS``): with ``rawtcp`` on,
mitmproxy forwards a transparent or tunnelled connection whose first bytes do not yet look
like HTTP as raw TCP, past the HTTP layer (and past shim); and HTTP/2, which mitmproxy
negotiates for intercepted TLS when a client offers it, has an ``Http2Server`` this module
does not wrap. h2 bounds a header block itself (16 KiB frames, at most 64 CONTINUATION
frames, 64 KiB decoded) but has no deadline. shim's clients (the JVM's HttpURLConnection)
speak HTTP/1.1 only, so shim turns HTTP/2 off rather than bound it a second way.
"""

from __future__ import annotations

import inspect
import logging
import weakref
from dataclasses import dataclass
from typing import Any, Final

from h11._receivebuffer import ReceiveBuffer, blank_line_regex
from mitmproxy import version
from mitmproxy.connection import ConnectionState
from mitmproxy.proxy import commands, events, layer
from mitmproxy.proxy.layers.http import HttpLayer
from mitmproxy.proxy.layers.http._base import ReceiveHttp
from mitmproxy.proxy.layers.http._events import ErrorCode, RequestProtocolError, ResponseData
from mitmproxy.proxy.layers.http._http1 import (
    Http1Connection,
    Http1Server,
    make_error_response,
)

from shim._errors import ShimError
from shim.config import Limits

# mitmproxy options the bounds depend on; see the module docstring.
REQUIRED_OPTIONS: Final[dict[str, object]] = {"http2": False, "rawtcp": False}

# Seconds an answered connection keeps reading (and dropping) input before it closes.
LINGER_SECONDS: Final = 2.0

_MITMPROXY_MAJOR: Final = "12"

# What the wrapper relies on, as mitmproxy 12 spells it: where a connection buffers input
# (and that it buffers in every state but passthrough), how a head is cut from the buffer,
# that each new request on a connection gets a new stream id, and that HttpLayer routes
# a RequestWakeup back to the layer that yielded it.
_RELIED_ON: Final = (
    (Http1Connection, "__init__", "self.buf = ReceiveBuffer()"),
    (Http1Connection, "_handle_event", "self.buf += event.data"),
    (Http1Connection, "_handle_event", "yield from self.state(event)"),
    (Http1Connection, "mark_done", "self.stream_id += 2"),
    (Http1Server, "read_headers", "self.buf.maybe_extract_lines()"),
    (HttpLayer, "event_to_child", "isinstance(command, commands.RequestWakeup)"),
)

# mitmproxy's own, which the wrapper calls: Http1Server inherits it.
_unwrapped = Http1Connection._handle_event


class IncompatibleMitmproxy(ShimError):
    """The mitmproxy internals this module wraps are not the ones it was written for."""


def check_internals() -> None:
    """Raise IncompatibleMitmproxy unless mitmproxy looks as this module expects."""
    if version.VERSION.split(".")[0] != _MITMPROXY_MAJOR:
        raise IncompatibleMitmproxy(
            f"mitmproxy {version.VERSION} is installed; shim bounds request heads by wrapping "
            f"mitmproxy {_MITMPROXY_MAJOR}'s HTTP/1 server (shim/limits.py): install "
            f"mitmproxy {_MITMPROXY_MAJOR}, or check the wrapper against this version"
        )
    for owner, name, snippet in _RELIED_ON:
        if snippet not in inspect.getsource(getattr(owner, name)):
            raise IncompatibleMitmproxy(
                f"mitmproxy {version.VERSION}'s {owner.__name__}.{name} no longer has "
                f"{snippet!r}: shim's request head bounds (shim/limits.py) must be checked "
                "against it"
            )
    if blank_line_regex.pattern != b"\n\r?\n":
        raise IncompatibleMitmproxy(
            "h11 ends a head at another blank line pattern: check shim/limits.py"
        )


@dataclass
class _Head:
    """What the wrapper tracks of one client connection."""

    timer: commands.RequestWakeup | None = None
    timer_stream: int = 0  # the stream id the timer was armed for
    answered: bool = False  # input is dropped from now on
    linger: commands.RequestWakeup | None = None


_heads: weakref.WeakKeyDictionary[Http1Server, _Head] = weakref.WeakKeyDictionary()
_active: Limits | None = None


def install(limits: Limits) -> None:
    """Bound every client's request heads by ``limits`` from now on; safe to call again
    (the latest limits apply). Raises IncompatibleMitmproxy (call it before serving)."""
    global _active
    check_internals()
    _active = limits
    Http1Server._handle_event = _bounded  # type: ignore[method-assign, assignment]


def apply_options(options: Any) -> None:
    """Set REQUIRED_OPTIONS on mitmproxy ``options`` where they differ (an update triggers
    every addon's configure, so none is made when nothing changes)."""
    changed = {
        name: value for name, value in REQUIRED_OPTIONS.items() if getattr(options, name) != value
    }
    if changed:
        options.update(**changed)


def _bounded(server: Http1Server, event: events.Event) -> layer.CommandGenerator[None]:
    if isinstance(event, ResponseData):
        # The hot path, a response going out, changes nothing the wrapper watches.
        yield from _unwrapped(server, event)
        return
    assert _active is not None
    limits = _active
    head = _heads.get(server)
    if head is None:
        head = _heads[server] = _Head()
    if isinstance(event, events.Wakeup):
        # Http1Server asks for no wakeups of its own: every one is ours, current or stale.
        yield from _woken(server, head, event.command, limits)
        return
    if head.answered and isinstance(event, events.DataReceived):
        return
    if (
        isinstance(event, events.DataReceived)
        and server.state == server.read_headers
        and not _head_fits(server.buf, event.data, int(limits.request_head_bytes))
    ):
        yield from _answer(server, head, 431, _too_large(limits))
        return
    yield from _unwrapped(server, event)
    if not head.answered:
        yield from _check(server, head, event, limits)


def _head_fits(buf: ReceiveBuffer, data: bytes, cap: int) -> bool:
    """Whether the head being read, once ``data`` is added, ends within ``cap`` bytes (or
    has not reached ``cap`` yet). ``buf`` holds at most ``cap`` bytes here."""
    if len(buf) + len(data) <= cap:
        return True
    return blank_line_regex.search(bytes(buf) + data[:cap], 0, cap) is not None


def _check(
    server: Http1Server, head: _Head, event: events.Event, limits: Limits
) -> layer.CommandGenerator[None]:
    """After mitmproxy handled ``event``: bound what it holds, time the head it reads."""
    held = len(server.buf)
    cap = int(limits.request_head_bytes)
    if server.state == server.read_headers:
        if held > cap:  # blank lines before a head, which h11 strips one per read
            yield from _answer(server, head, 431, _too_large(limits))
        elif head.timer_stream != server.stream_id and (
            held or (isinstance(event, events.DataReceived) and event.data)
        ):
            head.timer = commands.RequestWakeup(limits.request_head_timeout)
            head.timer_stream = server.stream_id
            yield head.timer
    elif held > cap and server.state in (server.read_body, server.wait):
        # A chunk-size line or trailer without end, or the next request piling up while this
        # response is sent: no answer can be given here, so the connection ends as
        # mitmproxy ends it for a malformed body.
        message = f"more than {cap} bytes of request framing or pipelined requests held"
        yield commands.Log(message, logging.INFO)
        yield commands.CloseConnection(server.conn)
        yield ReceiveHttp(
            RequestProtocolError(server.stream_id, message, ErrorCode.REQUEST_TOO_LARGE)
        )
        _drop_input(server, head)


def _woken(
    server: Http1Server, head: _Head, timer: commands.RequestWakeup, limits: Limits
) -> layer.CommandGenerator[None]:
    if timer is head.linger:
        head.linger = None
        if server.conn.state is not ConnectionState.CLOSED:
            yield commands.CloseConnection(server.conn)
    elif (
        timer is head.timer
        and not head.answered
        and server.state == server.read_headers
        and head.timer_stream == server.stream_id
    ):
        timeout = limits.request_head_timeout
        yield from _answer(server, head, 408, f"no complete request head within {timeout:g} s")


def _answer(
    server: Http1Server, head: _Head, status: int, message: str
) -> layer.CommandGenerator[None]:
    """Answer ``status`` to a head not yet parsed, stop writing, drop input, close soon."""
    # mitmproxy prefixes the client's address. Never the head: it may carry credentials.
    yield commands.Log(f"{message}: {status}", logging.INFO)
    yield commands.SendData(server.conn, make_error_response(status, message))
    yield commands.CloseTcpConnection(server.conn, half_close=True)
    _drop_input(server, head)
    head.linger = commands.RequestWakeup(LINGER_SECONDS)
    yield head.linger


def _drop_input(server: Http1Server, head: _Head) -> None:
    head.answered = True
    server.buf = ReceiveBuffer()
    server.state = server.done


def _too_large(limits: Limits) -> str:
    return f"request head larger than {int(limits.request_head_bytes)} bytes"
