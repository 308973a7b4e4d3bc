"""Graceful shutdown: on SIGTERM or SIGINT, stop accepting connections, let the transfers in
flight finish within ``shutdown_grace`` seconds, cut what is left, and exit 0.

mitmproxy's own handlers stop the event loop at once, which cuts every download in flight and
leaves connection tasks to be cancelled at exit (with a traceback). Here the proxy listeners are
closed first, /healthz turns 503, and each client connection is closed as soon as nothing is
in flight on it: an idle keep-alive connection is closed at once, a busy one once its last
response has left shim. A second signal, or the end of the grace period, cuts the rest (a
reset: the client sees a short body, never a complete-looking one); only then does mitmproxy
stop, with no connection left to cancel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
import weakref
from collections import defaultdict
from collections.abc import Iterable, Sized
from dataclasses import dataclass
from typing import Protocol

from mitmproxy import connection, ctx, http, tcp
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.flow import Flow
from mitmproxy.proxy.mode_servers import ProxyConnectionHandler

from shim.config import Settings

log = logging.getLogger("shim")

# Inside a tunnel (a WebSocket, a raw TCP relay) shim cannot see where one transfer ends; a tunnel
# quiet for this long is taken as idle.
TUNNEL_IDLE_SECONDS = 1.0
_POLL_SECONDS = 0.05
# How long cut connections get to unwind before mitmproxy stops.
_CUT_WAIT_SECONDS = 5.0


@dataclass(frozen=True)
class ConnectionActivity:
    """What is going on on one client connection, as far as shutting down cares."""

    exchanges: int
    """HTTP requests whose response has not yet been handed whole to the socket."""
    tunnels: int
    """Open WebSockets and TCP tunnels."""
    idle_seconds: float
    """Since the last bytes arrived on the connection, from either side."""
    unsent_bytes: int
    """Bytes written for the client that the kernel has not taken yet."""


def in_flight(activity: ConnectionActivity) -> bool:
    """Whether closing the connection now would cut a transfer."""
    if activity.exchanges or activity.unsent_bytes:
        return True
    return activity.tunnels > 0 and activity.idle_seconds < TUNNEL_IDLE_SECONDS


class Service(Protocol):
    """What shutting down needs of the shim addon: the grace period, and the flag /healthz
    reports."""

    settings: Settings | None
    ready: bool


class GracefulShutdown:
    """A mitmproxy addon that owns SIGTERM and SIGINT once the proxy runs."""

    def __init__(self, service: Service) -> None:
        self._service = service
        # By client connection id. Weak: a finished flow may hold an answer's body, which
        # must be released (and its entry unpinned) as soon as mitmproxy lets go of it.
        self._flows: defaultdict[str, weakref.WeakSet[Flow]] = defaultdict(weakref.WeakSet)
        self.draining = False
        self._shutdown: asyncio.Task[None] | None = None
        self._cut = asyncio.Event()
        # Connections already asked to close, so a second request is never sent to one.
        self._closing: weakref.WeakSet[ProxyConnectionHandler] = weakref.WeakSet()

    # -- hooks --------------------------------------------------------------------------------
    def running(self) -> None:
        # Replaces the handlers installed before start-up (shim run's, or mitmdump's).
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop, signal.Signals(signum).name)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self._flows[flow.client_conn.id].add(flow)

    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        self._flows[flow.client_conn.id].add(flow)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        response = flow.response
        if (
            self.draining
            and response is not None
            and response.status_code != 101
            and flow.request.http_version.startswith("HTTP/1")
        ):
            # The client sends no further request on this connection, and mitmproxy closes
            # it once this response is out.
            response.headers["Connection"] = "close"

    def client_disconnected(self, client: connection.Client) -> None:
        self._flows.pop(client.id, None)

    # -- shutting down ------------------------------------------------------------------------
    def stop(self, reason: str) -> None:
        """Begin shutting down (on SIGTERM, SIGINT); called again, cut what is left at once."""
        if not self.draining:
            self.draining = True
            self._service.ready = False
            self._shutdown = asyncio.create_task(self._shut_down(reason))
        elif not self._cut.is_set():
            log.info("%s again: cutting the transfers still in flight", reason)
            self._cut.set()

    async def _shut_down(self, reason: str) -> None:
        try:
            await self._drain(reason)
        finally:
            # Whatever happened above, the process must not outlive the signal.
            ctx.master.shutdown()  # type: ignore[no-untyped-call]

    async def _drain(self, reason: str) -> None:
        settings = self._service.settings
        assert settings is not None, "configure() runs before any signal is handled"
        grace = settings.shutdown_grace
        proxyserver = ctx.master.addons.get("proxyserver")  # type: ignore[no-untyped-call]
        assert isinstance(proxyserver, Proxyserver)
        await proxyserver.servers.update([])  # closes the listeners: no new connections
        connections = proxyserver.connections
        busy = self._close_idle(connections.values())
        log.info(
            "%s: shutting down; waiting up to %gs for %d transfer(s) in flight",
            reason,
            grace,
            len(busy),
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while busy and not self._cut.is_set() and loop.time() < deadline:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._cut.wait(), min(_POLL_SECONDS, deadline - loop.time()))
            busy = self._close_idle(connections.values())
        if busy:
            why = "a second signal" if self._cut.is_set() else f"the {grace:g}s grace ran out"
            log.warning("shutting down: %s; cutting %d transfer(s) in flight", why, len(busy))
            for handler in busy:
                _cut(handler)
        else:
            log.info("shutting down: every transfer in flight finished")
        await _wait_closed(connections)

    def _close_idle(
        self, connections: Iterable[ProxyConnectionHandler]
    ) -> list[ProxyConnectionHandler]:
        """Close every connection with nothing in flight; returns those left busy."""
        busy = []
        for handler in list(connections):
            if handler in self._closing:
                continue
            io = handler.transports.get(handler.client)
            if io is None:
                continue  # closing already
            if io.handler is None or in_flight(self._activity(handler)):
                # (A connection without a handler task was accepted a moment ago and is not
                # set up yet: it is looked at again in the next round.)
                busy.append(handler)
                continue
            self._closing.add(handler)
            # mitmproxy's own way to close a connection: its read loop ends, then the socket
            # is closed after what is still buffered for it has gone out.
            io.handler.cancel("shim is shutting down")
        return busy

    def _activity(self, handler: ProxyConnectionHandler) -> ConnectionActivity:
        flows = [f for f in self._flows.get(handler.client.id, ()) if f.live]
        exchanges = sum(1 for f in flows if isinstance(f, http.HTTPFlow) and not f.websocket)
        io = handler.transports.get(handler.client)
        writer = io.writer if io is not None else None
        unsent = (
            writer.transport.get_write_buffer_size()
            if isinstance(writer, asyncio.StreamWriter)
            else 0
        )
        return ConnectionActivity(
            exchanges=exchanges,
            tunnels=len(flows) - exchanges,
            idle_seconds=time.time() - handler.timeout_watchdog.last_activity,
            unsent_bytes=unsent,
        )


def _cut(handler: ProxyConnectionHandler) -> None:
    """Reset the client connection: what was not sent is dropped."""
    io = handler.transports.get(handler.client)
    if io is None:
        return
    if isinstance(io.writer, asyncio.StreamWriter):
        io.writer.transport.abort()
    if io.handler is not None:
        io.handler.cancel("shim is shutting down: grace period over")


async def _wait_closed(connections: Sized) -> None:
    """Until mitmproxy has finished with every client connection, for a few seconds at most."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _CUT_WAIT_SECONDS
    # Polled: mitmproxy signals nothing once a connection has left its table.
    while connections and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(_POLL_SECONDS)
