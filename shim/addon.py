"""The mitmproxy addon: wires mitmproxy's hooks to shim's pure functions. Thin on purpose.

Load it with ``shim run`` or ``mitmdump -s addons/shim_addon.py``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

from mitmproxy import ctx, exceptions, http
from mitmproxy.proxy import mode_specs

from shim._errors import ConfigError, RequestError, SigningError
from shim.admin import AdminServer
from shim.cache.mapped import map_entry
from shim.cache.server import (
    CACHE_STATUS_HEADER,
    ERROR_HEADER,
    ROUTE_HEADER,
    TASK_ID_HEADER,
    TICKET_HEADER,
    CacheServer,
    Ticket,
    entry_headers,
    hit_headers,
)
from shim.cache.store import CacheStore
from shim.config import BucketConfig, DfdaemonSettings, Settings, load_settings
from shim.dfdaemon import DragonflyOptions
from shim.identity import TaskIdentity, filtered_params, identify
from shim.metrics import Metrics
from shim.providers import ALL_SIGNATURE_PARAMS, Signer, signer_for
from shim.ranges import ByteRange, Unsatisfiable, parse_range
from shim.recognize import recognize, recognize_reverse
from shim.redact import redact_url
from shim.upstream import DfdaemonRoute

log = logging.getLogger("shim")

# Hop-by-hop and client credentials: never forwarded on a request shim signs itself.
_DROPPED_REQUEST_HEADERS = ("Authorization", "Proxy-Authorization", "Proxy-Connection", "Cookie")


def error_response(status: int, kind: str, message: str) -> http.Response:
    return http.Response.make(
        status, f"shim: {message}\n", {"Content-Type": "text/plain", ERROR_HEADER: kind}
    )


def dfdaemon_route(dfdaemon: DfdaemonSettings) -> DfdaemonRoute:
    return DfdaemonRoute(
        address=dfdaemon.address,
        options=DragonflyOptions(dfdaemon.tag, dfdaemon.application, dfdaemon.priority),
        fallback=dfdaemon.fallback,
        connect_timeout=dfdaemon.connect_timeout,
    )


class ShimAddon:
    def __init__(self, settings: Settings | None = None) -> None:
        # ``shim run`` passes settings; under mitmdump they come from the shim_config option.
        self._given_settings = settings
        self.settings: Settings | None = None
        self.metrics = Metrics()
        self._signers: dict[BucketConfig, Signer] = {}
        self._cache: CacheServer | None = None
        self._admin: AdminServer | None = None
        self.ready = False

    # -- options ------------------------------------------------------------------------------
    def load(self, loader: Any) -> None:
        loader.add_option(
            "shim_config",
            str | None,
            None,
            "shim's YAML config file. Default: $SHIM_CONFIG, else the dragonfly-endpoint "
            "config.json named by $DRAGONFLY_ENDPOINT_CONFIG, else built-in defaults.",
        )

    def configure(self, updated: set[str]) -> None:
        if ctx.options.connection_strategy != "lazy":
            # Eager would connect to the bucket host at CONNECT time, before shim reroutes.
            ctx.options.update(connection_strategy="lazy")  # type: ignore[no-untyped-call]
        if self.settings is not None and "shim_config" not in updated:
            return
        try:
            settings = self._given_settings or load_settings(
                Path(ctx.options.shim_config) if ctx.options.shim_config else None,
                env=os.environ,
            )
        except ConfigError as error:
            raise exceptions.OptionsError(str(error)) from None  # type: ignore[no-untyped-call]
        if self.settings is not None and (
            settings.cache != self.settings.cache or settings.admin != self.settings.admin
        ):
            raise exceptions.OptionsError(  # type: ignore[no-untyped-call]
                "cache and admin settings cannot change while shim runs; restart it"
            )
        self.settings = settings
        self._signers = {
            bucket: signer_for(bucket, settings.presign_expires) for bucket in settings.buckets
        }

    # -- lifecycle ----------------------------------------------------------------------------
    async def running(self) -> None:
        settings = self._settings()
        store = CacheStore(settings.cache.dir, settings.cache.max_size)
        dfdaemon = settings.dfdaemon
        self._cache = CacheServer(
            store,
            self.metrics,
            extra_headers=settings.headers,
            origin_timeout=settings.origin_timeout,
            dfdaemon=dfdaemon_route(dfdaemon) if dfdaemon else None,
            keep=dfdaemon is None or dfdaemon.keep_copy,
        )
        await self._cache.start()
        self._admin = AdminServer(self.metrics, lambda: self.ready)
        await self._admin.start(*settings.admin_address)
        self.ready = True
        log.info(
            "shim ready: %d bucket(s), cache %s (%d entries), admin http://%s/healthz",
            len(settings.buckets),
            settings.cache.dir,
            len(store),
            settings.admin,
        )

    async def done(self) -> None:
        self.ready = False
        if self._admin is not None:
            await self._admin.stop()
        if self._cache is not None:
            await self._cache.stop()

    def _settings(self) -> Settings:
        assert self.settings is not None, "configure() runs before any hook"
        return self.settings

    # -- hooks --------------------------------------------------------------------------------
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        # Uploads pass through; never hold a request body in memory.
        if flow.request.method not in ("GET", "HEAD"):
            flow.request.stream = True

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        try:
            await self._route(flow)
        except Exception:
            # An answer, never a silent pass-through: that would send the request unsigned.
            log.exception("internal error on %s", redact_url(flow.request.url))
            self._reply(flow, 500, "internal", "internal error; see shim's log")

    async def _route(self, flow: http.HTTPFlow) -> None:
        settings = self._settings()
        reverse = isinstance(flow.client_conn.proxy_mode, mode_specs.ReverseMode)
        # On the reverse listener the path names the bucket; elsewhere the whole URL does.
        url = flow.request.path if reverse else flow.request.pretty_url
        try:
            if reverse:
                ref = recognize_reverse(url, settings.buckets, ALL_SIGNATURE_PARAMS)
            else:
                ref = recognize(url, settings.buckets, ALL_SIGNATURE_PARAMS)
        except RequestError as error:
            self._reply(flow, 400, "request", str(error))
            return
        if ref is None and reverse:
            aliases = ", ".join(b.reverse_alias for b in settings.buckets) or "none configured"
            self._reply(flow, 404, "request", f"no bucket alias in {url!r}; aliases: {aliases}")
            return
        if reverse and flow.request.method not in ("GET", "HEAD"):
            # Nothing to pass a reverse request through to: shim is the service here.
            self._reply(flow, 405, "request", "the reverse listener serves GET and HEAD only")
            return
        if ref is None or flow.request.method not in ("GET", "HEAD"):
            self.metrics.requests.labels(route="pass").inc()
            return
        try:
            signed = await asyncio.to_thread(
                self._signers[ref.bucket].sign, ref, flow.request.method
            )
        except SigningError as error:
            self._reply(flow, 502, "signing", str(error))
            return
        filtered = filtered_params(ref.bucket.provider, settings.filter)
        identity = identify(signed, filtered)
        flow.metadata["shim"] = {"url": redact_url(url), "task_id": identity.task_id}
        if flow.request.method == "GET" and self._reply_mapped(flow, identity):
            return
        self._route_to_cache(flow, Ticket(flow.request.method, signed, identity, filtered))

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        assert flow.response is not None
        flow.response.stream = True

    def response(self, flow: http.HTTPFlow) -> None:
        assert flow.response is not None
        shim = flow.metadata.get("shim")
        if shim is None:
            return
        headers = flow.response.headers
        state = headers.get(CACHE_STATUS_HEADER, "-")
        route = {"HIT": "hit", "MISS": "miss"}.get(state, "error")
        self.metrics.requests.labels(route=route).inc()
        log.info(
            "%s %s -> %d %s via %s task=%s",
            flow.request.method,
            shim["url"],
            flow.response.status_code,
            state,
            headers.get(ROUTE_HEADER, "-"),
            # The dfdaemon's own task ID when it reported one, else shim's computation.
            headers.get(TASK_ID_HEADER, shim["task_id"]),
        )

    def error(self, flow: http.HTTPFlow) -> None:
        shim = flow.metadata.get("shim")
        if shim is not None and flow.error is not None:
            self.metrics.errors.labels(kind="transfer").inc()
            log.warning("%s %s failed: %s", flow.request.method, shim["url"], flow.error.msg)

    # -- helpers ------------------------------------------------------------------------------
    def _reply(self, flow: http.HTTPFlow, status: int, kind: str, message: str) -> None:
        self.metrics.errors.labels(kind=kind).inc()
        log.warning("%s %s: %s", flow.request.method, redact_url(flow.request.url), message)
        flow.response = error_response(status, kind, message)

    def _route_to_cache(self, flow: http.HTTPFlow, ticket: Ticket) -> None:
        assert self._cache is not None
        host, port = self._cache.address
        request = flow.request
        request.scheme, request.host, request.port, request.path = "http", host, port, "/"
        request.host_header = f"{host}:{port}"
        for name in _DROPPED_REQUEST_HEADERS:
            request.headers.pop(name, None)
        request.headers[TICKET_HEADER] = self._cache.issue_ticket(ticket)

    def _reply_mapped(self, flow: http.HTTPFlow, identity: TaskIdentity) -> bool:
        """Answer a plain-HTTP/1 cache hit from a memory map; False when that does not apply."""
        assert self._cache is not None
        settings = self._settings()
        store = self._cache.store
        if (
            not settings.cache.zero_copy_hits
            or flow.client_conn.tls_established
            or not flow.request.http_version.startswith("HTTP/1")
        ):
            return False
        meta = store.lookup(identity.task_id)
        if meta is None or meta.size == 0:
            return False
        try:
            byte_range = parse_range(flow.request.headers.get("Range"), meta.size)
        except Unsatisfiable:
            flow.response = http.Response.make(416, b"", {"Content-Range": f"bytes */{meta.size}"})
            return True
        store.pin(meta.key)
        try:
            body = map_entry(
                store.data_path(meta.key),
                byte_range or ByteRange(0, meta.size - 1),
                lambda: store.unpin(meta.key),
            )
        except OSError:
            store.unpin(meta.key)
            return False  # gone since the lookup: the cache server fetches it again

        headers = {**entry_headers(meta, byte_range), **hit_headers(meta.key)}
        flow.response = http.Response.make(206 if byte_range else 200, b"", headers)
        # raw_content is the body as mitmproxy sends it; a view avoids a copy of the object.
        flow.response.raw_content = body  # type: ignore[assignment]
        flow.response.headers["Content-Length"] = str(len(body))
        self.metrics.cache_hits.inc()
        self.metrics.response_bytes.inc(len(body))
        return True
