"""The mitmproxy addon: wires mitmproxy's hooks to shim's decisions. Thin on purpose.

Every rule of what a request may do lives in ``shim.decide``; this class only gathers the facts
a hook offers, asks, and applies the answer: refuse, pass through, or serve (sign, ask the
cache for the answer, and send it: through mitmproxy when small, on the client's connection
when large, see ``shim.takeover``; or relay the request to the loopback cache server).

Load it with ``shim run`` or ``mitmdump -s addons/shim_addon.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import ipaddress
import logging
import os
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from mitmproxy import connection, ctx, exceptions, http, tls
from mitmproxy.proxy import mode_specs, server_hooks

from shim import limits
from shim._errors import RequestError, ShimError, SigningError
from shim.access import auth_required, client_allowed, credentials_valid
from shim.admin import AdminActions, AdminServer
from shim.cache.conditional import Preconditions
from shim.cache.fill import FileSpan, TransferAborted
from shim.cache.server import (
    CACHE_STATUS_HEADER,
    ERROR_HEADER,
    REFUSAL_PATH,
    ROUTE_HEADER,
    TASK_ID_HEADER,
    TICKET_HEADER,
    BodyStream,
    CacheServer,
    Reply,
    Ticket,
    error_reply,
    shim_headers,
)
from shim.cache.store import CacheStore
from shim.config import S3_API_TARGET, DfdaemonSettings, Settings, load_settings
from shim.decide import (
    Decision,
    IPAddress,
    Listener,
    PassThrough,
    Refuse,
    RequestFacts,
    Serve,
    Tunnel,
    TunnelDecision,
    decide,
    decide_tunnel,
    refuse_destination,
)
from shim.dfdaemon import DragonflyOptions
from shim.dfdaemon_links import LinkDir
from shim.identity import filtered_params, identify
from shim.logformat import REQUEST, use_log_format
from shim.metrics import Metrics
from shim.prefetch.jobs import PrefetchJobs
from shim.prefetch.warm import Warmed, refused, warm
from shim.providers import BucketConfig
from shim.recognize import ObjectRef, recognize
from shim.redact import redact_url, redact_urls
from shim.reload import carry_signers, changes, told, worth_applying
from shim.requestlog import RecentRequests, RequestRecord, text_line
from shim.s3api import serve as s3api
from shim.s3api.errors import REQUEST_ID_HEADER, S3Error, error_for_status
from shim.s3api.request import BucketRead
from shim.signing import CachedSigner, credential_problem_in_background, signers_for
from shim.status_gather import StatusGatherer
from shim.takeover import SPAN_SIZE, ClientConnection, ClientConnections, response_head
from shim.upstream import DfdaemonRoute

log = logging.getLogger("shim")

# Answers up to this size are read whole and handed to mitmproxy, which keeps the connection
# open; larger ones are written on the client's connection directly (shim.takeover).
SMALL_BODY = 64 * 1024
# The trigger a reload under mitmdump (its shim_config option set anew) is logged with.
_OPTION_RELOAD = "shim_config option"
# Hop-by-hop and client credentials: never forwarded on a request shim signs itself.
_DROPPED_REQUEST_HEADERS = ("Authorization", "Proxy-Authorization", "Proxy-Connection", "Cookie")


def error_response(
    status: int,
    kind: str,
    message: str,
    headers: tuple[tuple[str, str], ...] = (),
    body: bytes | None = None,
) -> http.Response:
    return http.Response.make(
        status,
        f"shim: {message}\n" if body is None else body,
        {"Content-Type": "text/plain", ERROR_HEADER: kind, **dict(headers)},
    )


def dfdaemon_route(dfdaemon: DfdaemonSettings, links: LinkDir | None) -> DfdaemonRoute:
    return DfdaemonRoute(
        address=dfdaemon.address,
        options=DragonflyOptions(dfdaemon.tag, dfdaemon.application, dfdaemon.priority),
        fallback=dfdaemon.fallback,
        connect_timeout=dfdaemon.connect_timeout,
        links=links,
    )


def listener_of(mode: mode_specs.ProxyMode) -> Listener:
    if isinstance(mode, mode_specs.ReverseMode):
        return "s3" if mode.data == S3_API_TARGET else "reverse"
    if isinstance(mode, mode_specs.TransparentMode):
        return "transparent"
    return "regular"


def request_facts(flow: http.HTTPFlow) -> RequestFacts:
    """The facts ``decide`` needs, as this request's listener defines them."""
    request = flow.request
    listener = listener_of(flow.client_conn.proxy_mode)
    # Behind a transparent redirect the connection's address is an IP; the name is in Host.
    host = request.pretty_host if listener == "transparent" else request.host
    return RequestFacts(
        listener=listener,
        method=request.method,
        scheme=request.scheme,
        host=host.lower(),
        port=request.port,
        target=request.path,
        host_header=request.host_header,
        # Framing says whether a body follows; an empty Content-Length is no body.
        has_body=request.headers.get("Content-Length", "0").strip() not in ("", "0")
        or "Transfer-Encoding" in request.headers,
    )


class ShimAddon:
    def __init__(self, settings: Settings | None = None) -> None:
        # ``shim run`` passes settings; under mitmdump they come from the shim_config option.
        self._given_settings = settings
        self.settings: Settings | None = None
        self.metrics = Metrics()
        self.recent = RecentRequests()
        # By (reverse alias, provider): whether the bucket's credentials loaded at start-up or
        # when a reload brought new ones; absent while they are checked.
        self.credentials: dict[tuple[str, str], bool] = {}
        self._signers: dict[BucketConfig, CachedSigner] = {}
        self._links: LinkDir | None = None  # dfdaemon.link_dir, prepared once
        self._cache: CacheServer | None = None
        self._admin: AdminServer | None = None
        self._prefetch: PrefetchJobs | None = None
        self._s3_buckets: s3api.BucketRequests | None = None
        self._credential_checks: set[asyncio.Task[None]] = set()
        # Per client connection: what its CONNECT (or transparent TLS) was allowed to become,
        # and whether it proved proxy credentials in its CONNECT.
        self._tunnels: weakref.WeakKeyDictionary[connection.Client, TunnelDecision] = (
            weakref.WeakKeyDictionary()
        )
        self._authenticated: weakref.WeakSet[connection.Client] = weakref.WeakSet()
        self._clients = ClientConnections()
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
        if not ctx.options.keep_host_header:
            # The S3 API's virtual-hosted requests name their bucket in Host. Every reverse
            # request is answered or rerouted by the addon: the Host mitmproxy would set names
            # a target never contacted.
            ctx.options.update(keep_host_header=True)  # type: ignore[no-untyped-call]
        limits.apply_options(ctx.options)
        if self.settings is not None and "shim_config" not in updated:
            return
        current = self.settings
        try:
            settings = self._given_settings or load_settings(
                Path(ctx.options.shim_config) if ctx.options.shim_config else None,
                env=os.environ,
            )
            if current is None:
                link_dir = settings.dfdaemon.link_dir if settings.dfdaemon else None
                self._links = LinkDir.prepare(link_dir) if link_dir is not None else None
                self._swap(settings, signers_for(settings.buckets, settings.presign_expires))
                return
            # The option changed under mitmdump: a reload, by shim.reload's rules.
            if not worth_applying(current, settings):
                told(self.metrics, _OPTION_RELOAD, "unchanged")
                return
            self._swap(settings, carry_signers(self._signers, current, settings))
        except ShimError as error:  # broken, limits mitmproxy cannot hold, a bad link_dir
            if current is not None:
                told(self.metrics, _OPTION_RELOAD, "refused", str(error))
            raise exceptions.OptionsError(str(error)) from None  # type: ignore[no-untyped-call]
        told(self.metrics, _OPTION_RELOAD, "applied", "; ".join(changes(current, settings)))

    async def reconfigure(self, settings: Settings) -> None:
        """Serve with ``settings`` from now on (``shim run``'s reload: shim.reload has checked
        that none of them needs a restart). Signers of new and changed buckets are made off
        the event loop, then everything is swapped at once, between two requests. Raises
        ShimError, with nothing changed, when a signer cannot be made."""
        signers = await asyncio.to_thread(carry_signers, self._signers, self._settings(), settings)
        self._swap(settings, signers)

    def _swap(self, settings: Settings, signers: dict[BucketConfig, CachedSigner]) -> None:
        """Requests decided from now on see ``settings``; transfers in flight keep the signed
        URL and the route they started with. While running, the buckets a reload brings get
        their credentials checked, and those it removes leave the credentials gauge."""
        limits.install(settings.limits)
        old, old_signers = self.settings, self._signers
        self.settings, self._signers = settings, signers
        self.metrics.show_top(settings.metrics.top_objects)
        use_log_format(ctx.master, settings.log_format)
        if self._cache is None or old is None:
            return  # starting: running() checks every bucket
        dfdaemon = settings.dfdaemon
        self._cache.reconfigure(
            extra_headers=settings.headers,
            dfdaemon=dfdaemon_route(dfdaemon, self._links) if dfdaemon else None,
        )
        fresh = {b: s for b, s in signers.items() if old_signers.get(b) is not s}
        gone = {(b.reverse_alias, b.provider) for b in old.buckets}
        gone -= {(b.reverse_alias, b.provider) for b in settings.buckets}
        # What the old credentials showed no longer holds: "checking" until the new result.
        for labels in gone | {(b.reverse_alias, b.provider) for b in fresh}:
            self.credentials.pop(labels, None)
            with contextlib.suppress(KeyError):  # never checked
                self.metrics.bucket_credentials.remove(*labels)
        self._start_credential_check(fresh)

    # -- lifecycle ----------------------------------------------------------------------------
    async def running(self) -> None:
        settings = self._settings()
        store = CacheStore(
            settings.cache.dir,
            settings.cache.max_size,
            min_free=settings.cache.min_free,
            watermarks=settings.cache.watermarks,
        )
        dfdaemon = settings.dfdaemon
        self._cache = CacheServer(
            store,
            self.metrics,
            extra_headers=settings.headers,
            origin_timeout=settings.origin_timeout,
            dfdaemon=dfdaemon_route(dfdaemon, self._links) if dfdaemon else None,
            keep=dfdaemon is None or dfdaemon.keep_copy,
        )
        await self._cache.start()
        self._s3_buckets = s3api.BucketRequests(origin_timeout=settings.origin_timeout)
        self._prefetch = PrefetchJobs(self._warm)
        actions = AdminActions(
            lambda: self._settings().admin_token, self._prefetch, self._cache, self.object_ticket
        )
        status = StatusGatherer(
            self._settings, self._cache, self.recent, self.credentials, lambda: self.ready
        )
        self._admin = AdminServer(
            self.metrics, lambda: self.ready, status=status.snapshot, actions=actions
        )
        await self._admin.start(*settings.admin_address)
        self.ready = True
        log.info(
            "shim ready: %d bucket(s), cache %s (%d entries), admin http://%s/healthz",
            len(settings.buckets),
            settings.cache.dir,
            len(store),
            settings.admin,
        )
        self._start_credential_check(self._signers)

    def _start_credential_check(self, signers: Mapping[BucketConfig, CachedSigner]) -> None:
        task = asyncio.create_task(self._check_credentials(signers))
        self._credential_checks.add(task)
        task.add_done_callback(self._credential_checks.discard)

    async def _check_credentials(self, signers: Mapping[BucketConfig, CachedSigner]) -> None:
        """Report every bucket whose credentials cannot be loaded at start-up (or when a reload
        brings it), with the reason, rather than at its first download. Concurrent: a default
        chain may probe the network."""
        buckets = list(signers)
        reasons = await asyncio.gather(
            *(credential_problem_in_background(signers[b]) for b in buckets)
        )
        for bucket, reason in zip(buckets, reasons, strict=True):
            if self._signers.get(bucket) is not signers[bucket]:
                continue  # a reload has replaced or removed the bucket meanwhile
            self.metrics.bucket_credentials.labels(
                bucket=bucket.reverse_alias, provider=bucket.provider
            ).set(reason is None)
            self.credentials[bucket.reverse_alias, bucket.provider] = reason is None
            if reason is not None:
                log.error("bucket %r (%s): %s", bucket.reverse_alias, bucket.provider, reason)

    async def done(self) -> None:
        self.ready = False
        for check in self._credential_checks:
            check.cancel()
        if self._admin is not None:
            await self._admin.stop()
        if self._prefetch is not None:
            await self._prefetch.close()
        if self._cache is not None:
            await self._cache.stop()
        if self._s3_buckets is not None:
            await self._s3_buckets.close()

    def _settings(self) -> Settings:
        assert self.settings is not None, "configure() runs before any hook"
        return self.settings

    # -- connections --------------------------------------------------------------------------
    def client_connected(self, client: connection.Client) -> None:
        if not client_allowed(client.peername[0], self._settings().clients):
            self.metrics.errors.labels(kind="client_refused").inc()
            log.warning("refused a client at %s: not in 'clients'", client.peername[0])
            client.error = "client address not allowed"

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        if not self._authorized(flow):
            return
        host, port = flow.request.host.lower(), flow.request.port
        decision = decide_tunnel(host, port, self._settings())
        if isinstance(decision, Tunnel):
            # Checked now as server_connect will check it, so that a refusal is a 403 and not
            # a "200 Connection established" cut at the first byte.
            checked = await self._destination(host, port)
            if isinstance(checked, Refuse):
                decision = checked
        if isinstance(decision, Refuse):
            self._refuse(flow, decision)
            return
        self._tunnels[flow.client_conn] = decision

    def tls_established_client(self, data: tls.TlsData) -> None:
        if data.ssl_conn is not None:
            self._clients.tls_established(data.context.client, data.ssl_conn)

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        client = data.context.client
        decision = self._tunnels.get(client)
        address = data.context.server.address
        if decision is None and listener_of(client.proxy_mode) == "transparent" and address:
            # No CONNECT here: the ClientHello's name (else the address) says where it goes.
            host = (data.client_hello.sni or address[0]).lower()
            decision = decide_tunnel(host, address[1], self._settings())
            self._tunnels[client] = decision
            if isinstance(decision, Tunnel):
                # Connect to the name decided on (checked again when it resolves), not to
                # whatever address the client's packets were sent to.
                data.context.server.address = (host, address[1])
        if isinstance(decision, Tunnel | Refuse):
            # Not intercepted; a refused one is then cut by server_connect.
            data.ignore_connection = True

    async def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        """The last gate: every connection mitmproxy opens is to the cache server or to a host
        the pass-through policy allows, checked on the addresses it resolves to."""
        assert data.server.address is not None
        host, port = data.server.address[:2]
        if self._cache is not None and (host, port) == self._cache.address:
            return  # where shim itself routes signed requests
        refusal = self._tunnels.get(data.client)
        if not isinstance(refusal, Refuse):
            checked = await self._destination(host, port)
            if checked is None:
                data.server.error = f"cannot resolve {host}"
                return
            if not isinstance(checked, Refuse):
                # Connect to the address just checked, not to a second lookup's answer.
                if data.server.sni is None and host != str(checked):
                    data.server.sni = host
                data.server.address = (str(checked), port)
                return
            refusal = checked
        self.metrics.errors.labels(kind=refusal.kind).inc()
        log.warning("refused a connection to %s:%d: %s", host, port, refusal.message)
        data.server.error = f"shim: {refusal.message}"

    async def _destination(self, host: str, port: int) -> IPAddress | Refuse | None:
        """The address to connect to for ``host:port``, the refusal of every address it
        resolves to, or None when it does not resolve."""
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, proto=6)
        except OSError:
            return None
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
        return refuse_destination(host, port, addresses, self._settings()) or addresses[0]

    # -- requests -----------------------------------------------------------------------------
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Decide before any body byte moves: a refused request is never forwarded."""
        if flow.response or flow.error or not flow.live:
            return
        try:
            if self._authorized(flow):
                facts = request_facts(flow)
                self._apply(flow, facts, decide(facts, self._settings()))
        except Exception:
            self._internal_error(flow)

    def _apply(self, flow: http.HTTPFlow, facts: RequestFacts, decision: Decision) -> None:
        if isinstance(decision, Refuse):
            self._refuse(flow, decision)
        elif isinstance(decision, S3Error):
            self._refuse(flow, s3api.refusal(decision, facts.method))
        elif isinstance(decision, BucketRead):
            flow.metadata["shim_bucket_read"] = decision
            flow.metadata["shim_signer"] = self._signers[decision.bucket]
        elif isinstance(decision, PassThrough):
            self.metrics.requests.labels(route="pass").inc()
            if facts.listener == "transparent":
                # As for tunnels: to the name decided on, not the redirected address.
                flow.request.host = facts.host
            # Streamed: an upload's body is never held in memory.
            flow.request.stream = True
            flow.request.headers.pop("Proxy-Authorization", None)
        else:
            flow.metadata["shim_serve"] = decision
            # Signed as decided, even if a reload replaces the bucket's signer meanwhile.
            flow.metadata["shim_signer"] = self._signers[decision.ref.bucket]

    async def request(self, flow: http.HTTPFlow) -> None:
        serve = flow.metadata.pop("shim_serve", None)
        bucket_read = flow.metadata.pop("shim_bucket_read", None)
        signer = flow.metadata.pop("shim_signer", None)
        if (serve is None and bucket_read is None) or flow.response or flow.error or not flow.live:
            return
        try:
            if bucket_read is not None:
                await self._read_bucket(flow, bucket_read, signer)
            else:
                await self._serve(flow, serve, signer)
        except Exception:
            self._internal_error(flow)

    async def _read_bucket(
        self, flow: http.HTTPFlow, read: BucketRead, signer: CachedSigner
    ) -> None:
        """An S3 API request for a bucket (a listing...): never cached, never a Dragonfly task;
        recorded, logged and counted as a request for an object is (route "bucket")."""
        assert self._s3_buckets is not None
        # No object, so no object series (key "").
        shim = _record_fields(flow.request.pretty_url, read.bucket.reverse_alias, "")
        flow.metadata["shim"] = {**shim, "bucket_read": True}
        reply = await self._s3_buckets.answer(read, signer.signer, self._settings().headers)
        if ERROR_HEADER in reply.headers:
            self.metrics.errors.labels(kind=reply.headers[ERROR_HEADER]).inc()
        flow.response = _response_of(flow.request.method, reply)

    async def _serve(self, flow: http.HTTPFlow, serve: Serve, signer: CachedSigner) -> None:
        ref = serve.ref
        shim = flow.metadata["shim"] = self._requested(flow.request.pretty_url, ref)
        ticket = await self._ticket(ref, flow.request.method, signer)
        if isinstance(ticket, Refuse):
            self._reply(flow, ticket)
            return
        shim["task_id"] = ticket.identity.task_id
        assert self._cache is not None
        client = self._client_connection(flow)
        if client is None:
            self._route_to_cache(flow, "/", self._cache.issue_ticket(ticket))
            return
        conditions = Preconditions.of(flow.request.headers.get_all)
        await self._answer(flow, await self._cache.respond(ticket, conditions), client)

    async def _ticket(self, ref: ObjectRef, method: str, signer: CachedSigner) -> Ticket | Refuse:
        """``ref`` signed for ``method`` by ``signer`` and identified: what the cache is asked
        for."""
        try:
            signed = signer.cached(ref, method)
            if signed is None:
                signed = await asyncio.to_thread(signer.sign, ref, method)
            filtered = filtered_params(ref.bucket.provider, self._settings().filter)
            identity = identify(signed, filtered)
        except SigningError as error:
            return Refuse(502, "signing", str(error))
        except RequestError as error:
            return Refuse(400, "request", str(error))
        sign_again = functools.partial(signer.sign, ref, method)
        return Ticket(method, signed, identity, filtered, ref.bucket.freshness, sign_again)

    def _object_ref(self, url: str) -> ObjectRef | Refuse:
        """The object of a configured bucket that ``url`` names, or why there is none."""
        try:
            ref = recognize(url, self._settings().buckets)
        except RequestError as error:
            return Refuse(400, "request", str(error))
        if ref is None:
            return Refuse(
                403, "passthrough", "the URL names no object of a configured bucket; not fetched"
            )
        return ref

    async def object_ticket(self, url: str) -> Ticket | Refuse:
        """The ticket a client's GET of ``url`` through the proxy would get (admin prefetch
        and cache removal); never one for a URL of no configured bucket."""
        ref = self._object_ref(url)
        if isinstance(ref, Refuse):
            return ref
        return await self._ticket(ref, "GET", self._signers[ref.bucket])

    async def _warm(self, url: str, on_bytes: Callable[[int], None]) -> Warmed:
        """Warm ``url`` as a client's GET would (admin prefetch): recorded, logged and counted
        as a request is (method PREFETCH; no byte sent to a client). A URL of no configured
        bucket has no record, as traffic for no bucket has none."""
        started = time.time()
        ref = self._object_ref(url)
        if isinstance(ref, Refuse):
            return refused(ref)
        shim = self._requested(url, ref)
        ticket = await self._ticket(ref, "GET", self._signers[ref.bucket])
        if isinstance(ticket, Refuse):
            outcome = refused(ticket)
        else:
            assert self._cache is not None
            outcome = await warm(self._cache, ticket, on_bytes)
            shim["task_id"] = ticket.identity.task_id
        self.metrics.answered(shim["bucket"], shim["key"], outcome.cache)
        shim.update(status=outcome.status, cache=outcome.cache, route=outcome.route)
        shim.update(task_id=outcome.task_id or shim["task_id"], error=outcome.error or "")
        self._record("PREFETCH", shim, started)
        return outcome

    def _requested(self, url: str, ref: ObjectRef) -> dict[str, Any]:
        """A request for ``ref`` begins: counted, and what its record will need, filled in
        until its answer's last byte."""
        self.metrics.requested(ref.bucket.reverse_alias, ref.key)
        return _record_fields(url, ref.bucket.reverse_alias, ref.key)

    def _client_connection(self, flow: http.HTTPFlow) -> ClientConnection | None:
        """The client's connection, to answer on directly; None: through the cache server."""
        if not self._settings().cache.zero_copy_hits:
            return None
        proxyserver = ctx.master.addons.get("proxyserver")  # type: ignore[no-untyped-call]
        return self._clients.of(flow, proxyserver)

    async def _answer(self, flow: http.HTTPFlow, reply: Reply, client: ClientConnection) -> None:
        """Answer with ``reply``: as mitmproxy's response when it is small (the connection
        stays open for the next request), else written on the client's connection here."""
        stream = reply.stream
        if stream is not None and stream.length is not None and stream.length <= SMALL_BODY:
            reply = await self._read_small(reply, stream)
        if _is_s3(flow):  # after the read: its failure too
            reply = s3api.object_reply(reply, flow.request.method, _resource(flow))
        if reply.stream is None:
            flow.response = _response_of(flow.request.method, reply)
            return
        with contextlib.closing(reply.stream):
            await self._send_on_connection(flow, reply, client)

    async def _read_small(self, reply: Reply, stream: BodyStream) -> Reply:
        """``reply`` with its stream read into its body; a 502 if it cannot be completed."""
        assert self._cache is not None
        with contextlib.closing(stream):
            try:
                body = await stream.read_all()
            except TransferAborted as error:
                self._cache.count_aborted(error)
                failed = error_reply(502, "origin", str(error))
                failed.headers.update(shim_headers(reply.headers))
                return failed
            self.metrics.response_bytes.inc(len(body))
            return replace(reply, body=body, stream=None)

    async def _send_on_connection(
        self, flow: http.HTTPFlow, reply: Reply, client: ClientConnection
    ) -> None:
        """Write ``reply`` on the client's connection, then have mitmproxy close it (kill):
        it never sent this response, so it cannot carry on with the connection."""
        assert self._cache is not None and reply.stream is not None
        stream = reply.stream
        chunked = stream.length is None
        flow.metadata["shim_sent"] = True
        self._answered(flow, reply.status, reply.headers)
        try:
            head = response_head(reply.status, _dated(reply.headers), chunked=chunked)
            await client.send(head)
            async with contextlib.aclosing(stream.spans(SPAN_SIZE)) as spans:
                async for span in spans:
                    count = span.count if isinstance(span, FileSpan) else len(span)
                    if chunked:
                        await client.send(b"%x\r\n" % count)
                    if isinstance(span, FileSpan):
                        await client.send_file(span)
                    else:
                        await client.send(span)
                    if chunked:
                        await client.send(b"\r\n")
                    self.metrics.response_bytes.inc(count)
                    self._count_sent(flow, count)
            if chunked:
                await client.send(b"0\r\n\r\n")
            await client.finish()
        except TransferAborted as error:
            self._cache.count_aborted(error)  # the cut connection shows the client a short body
        except OSError:
            self.metrics.errors.labels(kind="client").inc()
        self._ended(flow)
        flow.kill()  # type: ignore[no-untyped-call]

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        assert flow.response is not None
        if "shim" not in flow.metadata:
            flow.response.stream = True
            return
        self._answered(flow, flow.response.status_code, flow.response.headers)
        if _is_s3(flow) and flow.response.status_code >= 400:
            return  # read whole (the cache server's errors are short), for response() to tell
        # A relayed answer is counted as it streams; one the addon made is sent whole.
        flow.response.stream = functools.partial(self._relayed, flow)

    def _relayed(self, flow: http.HTTPFlow, chunk: bytes) -> bytes:
        self._count_sent(flow, len(chunk))
        return chunk

    def response(self, flow: http.HTTPFlow) -> None:
        assert flow.response is not None
        response = flow.response
        if (
            "shim" in flow.metadata
            and _is_s3(flow)
            and response.status_code >= 400
            and REQUEST_ID_HEADER not in response.headers
        ):
            # An error relayed from the cache server, told in S3's XML; not one shim already
            # told so (its own carry a request ID), which would lose its message.
            relayed = Reply(response.status_code, dict(response.headers), response.content or b"")
            reply = s3api.object_reply(relayed, flow.request.method, _resource(flow))
            flow.response = _response_of(flow.request.method, reply)
        if "shim" in flow.metadata:
            self._count_sent(flow, len(flow.response.raw_content or b""))
            self._ended(flow)

    def _answered(self, flow: http.HTTPFlow, status: int, headers: Mapping[str, str]) -> None:
        """The answer's status and headers are known (its body may follow): count it."""
        shim = flow.metadata["shim"]
        state = headers.get(CACHE_STATUS_HEADER, "-")
        # An S3 API bucket request has no cache state, whatever its answer.
        route = (
            "bucket"
            if "bucket_read" in shim
            else {"HIT": "hit", "MISS": "miss"}.get(state, "error")
        )
        self.metrics.requests.labels(route=route).inc()
        self.metrics.answered(shim["bucket"], shim["key"], state)
        shim.update(
            status=status,
            cache=state,
            route=headers.get(ROUTE_HEADER, "-"),
            # The dfdaemon's own task ID when it reported one, else shim's computation.
            task_id=headers.get(TASK_ID_HEADER, shim["task_id"]),
        )
        if ERROR_HEADER in headers:  # an error answer: its kind, unless shim said more
            shim.setdefault("error", headers[ERROR_HEADER])

    def _count_sent(self, flow: http.HTTPFlow, count: int) -> None:
        shim = flow.metadata["shim"]
        shim["sent"] += count
        self.metrics.sent(shim["bucket"], shim["key"], count)

    def _ended(self, flow: http.HTTPFlow) -> None:
        """The answer's last byte went, or the request failed: its record, logged and kept.
        A failure before any answer is the 502 mitmproxy then sends."""
        shim = flow.metadata["shim"]
        if shim.get("ended"):
            return
        shim["ended"] = True
        self._record(flow.request.method, shim, flow.request.timestamp_start)

    def _record(self, method: str, shim: Mapping[str, Any], started: float) -> None:
        """The record of a request that began at ``started`` and has just ended: logged (one
        line) and kept among the recent ones."""
        now = time.time()
        record = RequestRecord(
            time=now,
            method=method,
            url=shim["url"],
            bucket=shim["bucket"],
            status=shim.get("status", 502),
            cache=shim.get("cache", "-"),
            route=shim.get("route", "-"),
            task_id=shim["task_id"],
            bytes=shim["sent"],
            duration=max(now - started, 0.0),
            error=redact_urls(shim.get("error", "")),
        )
        self.recent.add(record)
        log.info("%s", text_line(record), extra={REQUEST: record})

    def error(self, flow: http.HTTPFlow) -> None:
        shim = flow.metadata.get("shim")
        if flow.metadata.get("shim_sent"):
            return  # answered on the connection, which mitmproxy was then told to close
        if shim is not None and flow.error is not None:
            self.metrics.errors.labels(kind="transfer").inc()
            shim.setdefault("error", f"failed: {flow.error.msg}")  # on the request's line
            self._ended(flow)

    # -- helpers ------------------------------------------------------------------------------
    def _authorized(self, flow: http.HTTPFlow) -> bool:
        """Proxy credentials, on the explicit proxy only (see shim.access); answers 407."""
        auth = self._settings().proxy_auth
        if auth is None or listener_of(flow.client_conn.proxy_mode) != "regular":
            return True
        if flow.client_conn in self._authenticated:
            return True  # proved in this connection's CONNECT
        if not credentials_valid(flow.request.headers.get("Proxy-Authorization"), auth):
            self.metrics.errors.labels(kind="auth").inc()
            log.warning(
                "%s %s: proxy authentication required",
                flow.request.method,
                redact_url(flow.request.pretty_url),
            )
            flow.response = auth_required()
            return False
        flow.request.headers.pop("Proxy-Authorization", None)
        if flow.request.method == "CONNECT":
            self._authenticated.add(flow.client_conn)
        return True

    def _refuse(self, flow: http.HTTPFlow, refusal: Refuse) -> None:
        request = flow.request
        if request.method == "CONNECT" or _body_is_empty(flow) or self._cache is None:
            self._reply(flow, refusal)
            return
        # An answer set here would have mitmproxy read the whole body into memory first. The
        # cache server answers instead, at once: the body is dropped chunk by chunk as it
        # arrives, and not a byte of it is forwarded.
        self._count_refusal(flow, refusal)
        request.stream = _drop_body
        for name in ("Expect", "Transfer-Encoding"):
            request.headers.pop(name, None)
        request.headers["Content-Length"] = "0"
        self._route_to_cache(flow, REFUSAL_PATH, self._cache.issue_ticket(refusal))

    def _internal_error(self, flow: http.HTTPFlow) -> None:
        # An answer, never a silent pass-through: that would send the request unsigned.
        log.exception("internal error on %s", redact_url(flow.request.url))
        self._reply(flow, Refuse(500, "internal", "internal error; see shim's log"))

    def _reply(self, flow: http.HTTPFlow, refusal: Refuse) -> None:
        self._count_refusal(flow, refusal)
        if _is_s3(flow) and refusal.body is None:
            error = error_for_status(refusal.status, _resource(flow))
            error = replace(error, message=refusal.message, kind=refusal.kind)
            refusal = s3api.refusal(error, flow.request.method)
        flow.response = error_response(
            refusal.status, refusal.kind, refusal.message, refusal.headers, refusal.body
        )

    def _count_refusal(self, flow: http.HTTPFlow, refusal: Refuse) -> None:
        self.metrics.errors.labels(kind=refusal.kind).inc()
        shim = flow.metadata.get("shim")
        if shim is not None:  # a request with a record: the reason goes on its one line
            shim["error"] = f"{refusal.kind}: {refusal.message}"
            return
        log.warning(
            "%s %s -> %d: %s",
            flow.request.method,
            redact_url(flow.request.pretty_url),
            refusal.status,
            refusal.message,
        )

    def _route_to_cache(self, flow: http.HTTPFlow, path: str, ticket_id: str) -> None:
        assert self._cache is not None
        host, port = self._cache.address
        request = flow.request
        request.scheme, request.host, request.port, request.path = "http", host, port, path
        request.host_header = f"{host}:{port}"
        for name in _DROPPED_REQUEST_HEADERS:
            request.headers.pop(name, None)
        request.headers[TICKET_HEADER] = ticket_id


def _record_fields(url: str, bucket: str, key: str) -> dict[str, Any]:
    """What a request's record needs, filled in until its answer's last byte."""
    return {"url": redact_url(url), "bucket": bucket, "key": key, "task_id": "-", "sent": 0}


def _dated(headers: Mapping[str, str]) -> dict[str, str]:
    return {**headers, "Date": email.utils.formatdate(time.time(), usegmt=True)}


def _response_of(method: str, reply: Reply) -> http.Response:
    """mitmproxy's response for a reply without a stream. A HEAD keeps the object's
    Content-Length; a 304 has none."""
    response = http.Response.make(reply.status, reply.body, _dated(reply.headers))
    length = reply.headers.get("Content-Length")
    if reply.status == 304:
        response.headers.pop("Content-Length", None)
    elif method == "HEAD" and length is not None:
        response.headers["Content-Length"] = length
    return response


def _is_s3(flow: http.HTTPFlow) -> bool:
    return listener_of(flow.client_conn.proxy_mode) == "s3"


def _resource(flow: http.HTTPFlow) -> str:
    """The S3 resource a request names, for its errors (the object served, whatever path a
    relay to the cache server gave the request since)."""
    shim = flow.metadata.get("shim")
    if shim is not None:
        return f"/{shim['bucket']}/{shim['key']}"
    return flow.request.path.partition("?")[0]


def _drop_body(chunk: bytes) -> bytes:
    return b""


def _body_is_empty(flow: http.HTTPFlow) -> bool:
    headers = flow.request.headers
    return headers.get("Content-Length", "0").strip() in ("", "0") and (
        "Transfer-Encoding" not in headers
    )
