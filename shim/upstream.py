"""Where bytes come from: the node's dfdaemon (P2P) when one is configured, the origin
directly otherwise or as a fallback. Either way the caller gets one shape of reply.

The fallback applies only before the first byte: once a body has started, its failure is the
client's failed transfer, never a silent switch to another source mid-stream. So do retries:
a request whose connection was refused, reset or closed before any byte of a response (a
pooled keep-alive connection the origin had already closed) is sent again, a few times.

Redirects are never followed: a signed request is for the URL shim signed, and a 3xx is the
reply, passed on uncached.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial

import aiohttp
import yarl
from multidict import CIMultiDict, CIMultiDictProxy

from shim._errors import UnansweredError, UpstreamError
from shim.dfdaemon import (
    DfdaemonReply,
    DragonflyOptions,
    dragonfly_headers,
    request_via_dfdaemon,
    task_id_from,
)
from shim.dfdaemon_links import LinkDir, link_headers, was_complete
from shim.metrics import Metrics

log = logging.getLogger("shim.upstream")

_CHUNK = 1 << 20
# Sends of one request when its connection fails unanswered, and the pause before the first
# resend (doubled for each next one): short, as the cause is usually one stale connection.
ATTEMPTS = 3
FIRST_BACKOFF = 0.05
# Connection failures that another try would meet again: no point in waiting for them.
_PERMANENT = (aiohttp.ClientSSLError, aiohttp.ClientConnectorDNSError)


@dataclass
class UpstreamReply:
    status: int
    headers: CIMultiDictProxy[str]
    content_length: int | None
    route: str  # "direct", "dfdaemon", or "fallback" (direct after the dfdaemon failed)
    task_id: str | None  # the dfdaemon's, when it answered
    # The body as it arrives. A chunk may be a view of a buffer the next reads reuse: it is
    # valid until the chunk after the next one is asked for (see shim.dfdaemon).
    chunks: Callable[[], AsyncIterator[bytes | memoryview]]
    close: Callable[[], None]
    # A descriptor of a file holding the whole body (a dfdaemon's local hit, hard-linked; see
    # shim.dfdaemon_links), for a caller that sends it from there rather than read ``chunks``;
    # open until ``close``.
    body_file: int | None = None

    async def head_of_body(self, limit: int = 65536) -> bytes:
        """Up to ``limit`` bytes of the body: enough of an error page to pass on."""
        body = bytearray()
        async for chunk in self.chunks():
            body += chunk
            if len(body) >= limit:
                break
        return bytes(body[:limit])


@dataclass(frozen=True, slots=True)
class DfdaemonRoute:
    address: tuple[str, int]
    options: DragonflyOptions
    fallback: bool
    connect_timeout: float
    links: LinkDir | None = None


class Upstream:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        metrics: Metrics,
        *,
        extra_headers: Mapping[str, str],
        read_timeout: float,
        dfdaemon: DfdaemonRoute | None,
    ) -> None:
        self._session = session
        self._metrics = metrics
        self._read_timeout = read_timeout
        self.reconfigure(extra_headers=extra_headers, dfdaemon=dfdaemon)
        # Off for good once the dfdaemon turned out unable to link into the directory.
        self._linking = dfdaemon is not None and dfdaemon.links is not None

    def reconfigure(
        self, *, extra_headers: Mapping[str, str], dfdaemon: DfdaemonRoute | None
    ) -> None:
        """For the requests sent from now on; those in flight carry on as they started."""
        # Identity always: a compressed variant must never become the object.
        self._headers = {**extra_headers, "Accept-Encoding": "identity"}
        self._dfdaemon = dfdaemon

    async def open(
        self,
        method: str,
        signed_url: str,
        filtered: Sequence[str],
        *,
        tag: str | None = None,
        direct: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> UpstreamReply:
        """Send ``method`` for ``signed_url``; return once the response headers arrived.
        ``tag``: the dfdaemon task's tag (None: the configured one). ``direct``: to the origin
        even with a dfdaemon, with ``headers`` added (a revalidation: a dfdaemon would answer
        from its own copy)."""
        route = "direct"
        # dfdaemons put GETs only on the P2P network; anything else goes straight out.
        if self._dfdaemon is not None and method == "GET" and not direct:
            dfdaemon = self._dfdaemon
            if tag is not None:
                dfdaemon = replace(dfdaemon, options=replace(dfdaemon.options, tag=tag))
            try:
                return await self._retrying(
                    "dfdaemon", lambda: self._via_dfdaemon(dfdaemon, signed_url, filtered)
                )
            except UpstreamError as error:
                if not dfdaemon.fallback:
                    self._metrics.dfdaemon_requests.labels(result="failed").inc()
                    raise UpstreamError(f"{error}; fallback to the origin is off") from None
                self._metrics.dfdaemon_requests.labels(result="fallback").inc()
                log.warning("%s; fetching from the origin directly", error)
                route = "fallback"
        return await self._retrying(
            "origin", lambda: self._direct(method, signed_url, route, headers or {})
        )

    async def _retrying(
        self, upstream: str, send: Callable[[], Awaitable[UpstreamReply]]
    ) -> UpstreamReply:
        """``send()``, sent again while it fails unanswered, at most ``ATTEMPTS`` times."""
        attempt = 1
        while True:
            try:
                return await send()
            except UnansweredError as error:
                if attempt == ATTEMPTS:
                    raise
                self._metrics.origin_retries.labels(upstream=upstream).inc()
                log.info("%s; sending again (%d of %d)", error, attempt + 1, ATTEMPTS)
                await asyncio.sleep(FIRST_BACKOFF * 2 ** (attempt - 1))
                attempt += 1

    async def _via_dfdaemon(
        self, dfdaemon: DfdaemonRoute, signed_url: str, filtered: Sequence[str]
    ) -> UpstreamReply:
        headers = {**self._headers, **dragonfly_headers(dfdaemon.options, filtered)}
        links = dfdaemon.links if self._linking else None
        link = None if links is None else links.new_path()
        try:
            extra = {} if link is None else link_headers(link)
            reply = await self._ask_dfdaemon(dfdaemon, signed_url, {**headers, **extra})
            if links is not None and _own_failure(reply):
                # Perhaps it cannot link there (another filesystem, another path in its
                # container): asked again without, an answer says so.
                reply.close()
                reply = await self._ask_dfdaemon(dfdaemon, signed_url, headers)
                if not _own_failure(reply):
                    self._linking = False
                    log.warning(
                        "the dfdaemon cannot hard-link into %s (is it on the dfdaemon's storage "
                        "filesystem, at the same path for both?): its local hits stream through "
                        "its proxy from now on",
                        links.path,
                    )
            headers_ci = CIMultiDictProxy(CIMultiDict(reply.headers))
            error_type = headers_ci.get("X-Dragonfly-Error-Type")
            if reply.status >= 500 or (error_type and reply.status < 400):
                # Its own failure, or the origin's: either way nothing was sent yet, and the
                # origin asked directly tells which. A success status with an error type (an
                # origin without Range support gets an empty 200) is no success.
                reply.close()
                raise UpstreamError(f"dfdaemon answered {reply.status} ({error_type or 'no type'})")
            body_file = None
            if link is not None and reply.status == 200 and was_complete(reply.headers):
                body_file = LinkDir.take(link, reply.content_length)
        finally:
            if link is not None:
                link.unlink(missing_ok=True)
        task_id = task_id_from(reply.headers)
        self._metrics.dfdaemon_requests.labels(result="ok" if body_file is None else "linked").inc()
        if task_id:
            self._metrics.dfdaemon_task(task_id)
        return UpstreamReply(
            status=reply.status,
            headers=headers_ci,
            content_length=reply.content_length,
            route="dfdaemon",
            task_id=task_id,
            chunks=reply.chunks,
            close=reply.close if body_file is None else partial(_close_both, reply, body_file),
            body_file=body_file,
        )

    async def _ask_dfdaemon(
        self, dfdaemon: DfdaemonRoute, signed_url: str, headers: Mapping[str, str]
    ) -> DfdaemonReply:
        return await request_via_dfdaemon(
            dfdaemon.address,
            "GET",
            signed_url,
            headers,
            connect_timeout=dfdaemon.connect_timeout,
            read_timeout=self._read_timeout,
        )

    async def _direct(
        self, method: str, signed_url: str, route: str, headers: Mapping[str, str]
    ) -> UpstreamReply:
        try:
            response = await self._session.request(
                method,
                yarl.URL(signed_url, encoded=True),
                headers={**self._headers, **headers},
                allow_redirects=False,
            )
        except TimeoutError:
            raise UpstreamError("origin timed out before answering", status=504) from None
        except _PERMANENT as error:
            raise UpstreamError(f"origin unreachable: {type(error).__name__}") from None
        except (
            aiohttp.ClientOSError,
            aiohttp.ClientConnectionResetError,
            aiohttp.ServerDisconnectedError,
        ) as error:
            raise UnansweredError(f"origin unreachable: {type(error).__name__}") from None
        except aiohttp.ClientError as error:
            raise UpstreamError(f"origin unreachable: {type(error).__name__}") from None

        async def chunks() -> AsyncIterator[bytes | memoryview]:
            try:
                async for chunk in response.content.iter_chunked(_CHUNK):
                    yield chunk
            except TimeoutError:
                raise UpstreamError("origin stalled", status=504) from None
            except aiohttp.ClientError as error:
                raise UpstreamError(f"origin failed: {type(error).__name__}") from None

        return UpstreamReply(
            status=response.status,
            headers=response.headers,
            content_length=response.content_length,
            route=route,
            task_id=None,
            chunks=chunks,
            close=response.release,
        )


def _close_both(reply: DfdaemonReply, body_file: int) -> None:
    reply.close()
    os.close(body_file)


def _own_failure(reply: DfdaemonReply) -> bool:
    """Whether the dfdaemon failed itself (not the origin, whose failures it passes on)."""
    return reply.status >= 500 and reply.headers.get("x-dragonfly-error-type") == "dfdaemon"
