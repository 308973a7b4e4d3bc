"""The admin listener: ``GET /healthz`` (200 while the proxy takes traffic), ``GET /metrics``,
and the status page ``GET /status`` (``/status.json``: the same snapshot as JSON)."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from mitmproxy import exceptions
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shim.metrics import Metrics
from shim.status import StatusSnapshot, as_json, render_html

log = logging.getLogger("shim")


class AdminServer:
    def __init__(
        self,
        metrics: Metrics,
        is_ready: Callable[[], bool],
        *,
        status: Callable[[], Awaitable[StatusSnapshot]],
    ) -> None:
        self._metrics = metrics
        self._is_ready = is_ready
        self._status = status
        self._runner: web.AppRunner | None = None

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port``. Called from an addon's ``running`` hook: a port that cannot
        be bound is logged in one line, as mitmproxy reports its own listeners, and start-up
        stops there (mitmproxy then exits 1 on the logged error)."""
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics_page)
        app.router.add_get("/status", self._status_page)
        app.router.add_get("/status.json", self._status_json)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as error:
            await runner.cleanup()
            log.error(
                "admin listener failed to listen on %s:%d: %s",
                host,
                port,
                error.strerror or error,
            )
            # Ends the running hook here without a traceback; nothing claims to be ready.
            raise exceptions.AddonHalt from None
        self._runner = runner

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _healthz(self, _: web.Request) -> web.Response:
        if self._is_ready():
            return web.Response(text="ok\n")
        # Starting, or shutting down: a Service sends no traffic here.
        return web.Response(status=503, text="not ready\n")

    async def _metrics_page(self, _: web.Request) -> web.Response:
        body = generate_latest(self._metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _status_page(self, _: web.Request) -> web.Response:
        page = render_html(await self._status())
        return web.Response(text=page, content_type="text/html", headers=_STATUS_HEADERS)

    async def _status_json(self, _: web.Request) -> web.Response:
        body = json.dumps(as_json(await self._status()))
        return web.Response(text=body, content_type="application/json", headers=_STATUS_HEADERS)


# The page runs no script and loads nothing: the browser is told so, and refuses anything else
# even if a value ever slipped through unescaped. Never cached, never framed.
_STATUS_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}
