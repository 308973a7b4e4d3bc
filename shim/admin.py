"""The admin listener: ``GET /healthz`` (200 while the proxy takes traffic), ``GET /metrics`` and
the status page ``GET /status`` (``/status.json``: the same snapshot as JSON), read by anyone who
reaches the port; and, with the admin token (``shim.admin_auth``), prefetch jobs
(``POST /prefetch``, ``GET /prefetch/JOB``) and cache removal (``DELETE /cache/KEY``,
``DELETE /cache?url=URL``)."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from mitmproxy import exceptions
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import SecretStr

from shim._errors import RequestError
from shim.admin_auth import CHALLENGE, check_bearer
from shim.cache.server import CacheServer
from shim.cache.store import is_cache_key
from shim.decide import Refuse
from shim.metrics import Metrics
from shim.prefetch.jobs import JobsFull, PrefetchJobs
from shim.prefetch.request import MAX_BODY_BYTES, urls_from_json
from shim.prefetch.warm import TicketFor
from shim.status import StatusSnapshot, as_json, render_html

log = logging.getLogger("shim")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class AdminActions:
    """What the token-guarded endpoints act on, in the running proxy."""

    token: Callable[[], SecretStr | None]  # the configured token now; None: refuse them all
    jobs: PrefetchJobs
    cache: CacheServer
    ticket_for: TicketFor  # a URL's ticket, as a client's GET of it would get


class AdminServer:
    def __init__(
        self,
        metrics: Metrics,
        is_ready: Callable[[], bool],
        *,
        status: Callable[[], Awaitable[StatusSnapshot]],
        actions: AdminActions | None = None,
    ) -> None:
        self._metrics = metrics
        self._is_ready = is_ready
        self._status = status
        self._actions = actions
        self._runner: web.AppRunner | None = None

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port``. Called from an addon's ``running`` hook: a port that cannot
        be bound is logged in one line, as mitmproxy reports its own listeners, and start-up
        stops there (mitmproxy then exits 1 on the logged error)."""
        # A larger body is refused (413) before it is read whole.
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics_page)
        if self._actions is not None:
            app.router.add_post("/prefetch", self._guarded(self._prefetch))
            app.router.add_get("/prefetch/{job}", self._guarded(self._prefetch_job))
            app.router.add_delete("/cache", self._guarded(self._remove_entry))
            app.router.add_delete("/cache/{key}", self._guarded(self._remove_entry))
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

    # -- token-guarded --------------------------------------------------------------------------
    def _guarded(self, handler: Handler) -> Handler:
        """``handler`` behind the bearer token: checked before a byte of the body is read."""

        async def guarded(request: web.Request) -> web.StreamResponse:
            assert self._actions is not None
            refusal = check_bearer(request.headers.get("Authorization"), self._actions.token())
            if refusal is None:
                return await handler(request)
            self._metrics.errors.labels(kind="admin_auth").inc()
            log.warning(
                "admin %s %s from %s -> %d",
                request.method,
                request.path,
                request.remote,
                refusal.status,
            )
            headers = {"WWW-Authenticate": CHALLENGE} if refusal.status == 401 else {}
            return _json_error(refusal.status, refusal.message, headers)

        return guarded

    async def _prefetch(self, request: web.Request) -> web.StreamResponse:
        assert self._actions is not None
        if (request.content_length or 0) > MAX_BODY_BYTES:
            return _json_error(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
        try:
            urls = urls_from_json(await request.read())
            job = self._actions.jobs.submit(urls)
        except web.HTTPRequestEntityTooLarge:
            return _json_error(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
        except RequestError as error:
            return _json_error(400, str(error))
        except JobsFull as error:
            return _json_error(429, str(error), {"Retry-After": "10"})
        log.info("prefetch job %s: %d object(s)", job.id, len(urls))
        return web.json_response(
            job.as_json(), status=202, headers={"Location": f"/prefetch/{job.id}"}
        )

    async def _prefetch_job(self, request: web.Request) -> web.StreamResponse:
        assert self._actions is not None
        job = self._actions.jobs.get(request.match_info["job"])
        if job is None:
            return _json_error(404, "no such prefetch job (finished jobs are kept a while)")
        return web.json_response(job.as_json())

    async def _remove_entry(self, request: web.Request) -> web.StreamResponse:
        """One cache entry, named by its key or by a URL (as a client's GET would name it)."""
        assert self._actions is not None
        key = request.match_info.get("key")
        url = request.query.get("url")
        if (key is None) == (url is None):
            return _json_error(400, "name the entry: DELETE /cache/KEY or DELETE /cache?url=URL")
        if url is not None:
            ticket = await self._actions.ticket_for(url)
            if isinstance(ticket, Refuse):
                return _json_error(ticket.status, ticket.message)
            key = ticket.identity.task_id
        assert key is not None
        if not is_cache_key(key):
            return _json_error(400, "a cache key is a lowercase SHA-256 hex digest")
        if not self._actions.cache.remove(key):
            return _json_error(404, "no such cache entry", {}, key=key)
        log.info("admin removed cache entry %s", key)
        return web.json_response({"key": key, "removed": True})


def _json_error(
    status: int, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> web.Response:
    body = json.dumps({"error": message, **extra})
    return web.Response(status=status, text=body, content_type="application/json", headers=headers)


# The page runs no script and loads nothing: the browser is told so, and refuses anything else
# even if a value ever slipped through unescaped. Never cached, never framed.
_STATUS_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}
