"""Revalidation: checking a cached object, or the version a dfdaemon task names, with its
origin before it is served again (the policy and what answers mean: ``shim.freshness``).

The check is a conditional request with the client's own signed URL (``If-None-Match``, else
``If-Modified-Since``), sent straight to the origin even when a dfdaemon is configured: the
dfdaemon would answer from its own copy. Concurrent checks of one object are one request;
the check belongs to no client, so a client going away does not cancel it for the others. A
request waits at most ``ANSWER_WAIT`` seconds for it, then is served as if the origin failed.

- An entry: a GET's 200 (another version) is not thrown away but becomes the fill that
  replaces the entry, so a change costs the origin one request and one copy of the body. The
  old entry leaves the index at once (later requests join the fill); readers that have its
  file open finish on it.
- The dfdaemon route without an embedded copy: the check is a GET of the first byte
  (``Range: bytes=0-0``), which the signed GET URL allows where a HEAD would need another
  signature; its ETag goes into the task's tag, kept in a bounded index per object.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from cachetools import LRUCache

from shim._errors import UpstreamError
from shim.cache.fill import FillRunner, OriginStatus
from shim.cache.store import CacheStore, EntryMeta
from shim.freshness import (
    FreshnessPolicy,
    Verdict,
    conditional_headers,
    judge,
    names_version,
    needs_revalidation,
    versioned_tag,
)
from shim.identity import TaskIdentity
from shim.metrics import Metrics
from shim.upstream import Upstream, UpstreamReply

log = logging.getLogger("shim.cache")

# Objects whose validators the dfdaemon route remembers (about 200 bytes each).
VALIDATORS_MAX = 16384
_FIRST_BYTE = {"Range": "bytes=0-0"}
# Seconds a request waits for a check's answer before it is served as if the origin failed
# (the check goes on for later requests): a silent origin must not hold every hit.
ANSWER_WAIT = 5.0


class Request(Protocol):
    """What a revalidation needs of a client's request: a cache server ticket."""

    @property
    def method(self) -> str: ...  # GET or HEAD: what ``signed_url`` is signed for
    @property
    def signed_url(self) -> str: ...
    @property
    def identity(self) -> TaskIdentity: ...
    @property
    def filtered(self) -> tuple[str, ...]: ...
    @property
    def policy(self) -> FreshnessPolicy: ...
    @property
    def sign_again(self) -> Callable[[], str] | None: ...


@dataclass(frozen=True, slots=True)
class Validator:
    etag: str | None
    validated_at: float


# An entry to serve (fresh, or stale when the origin failed), None (there is none now: the
# object changed, and any fill replacing it has started), or the origin's answer to pass on.
EntryCheck = EntryMeta | OriginStatus | None


class Revalidator:
    def __init__(
        self,
        store: CacheStore,
        fills: FillRunner,
        upstream: Upstream,
        metrics: Metrics,
        *,
        dragonfly_tag: str | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._dragonfly_tag = dragonfly_tag  # the configured tag; None: no dfdaemon
        self._store = store
        self._fills = fills
        self._upstream = upstream
        self._metrics = metrics
        self._clock = clock
        self._validators: LRUCache[str, Validator] = LRUCache(maxsize=VALIDATORS_MAX)
        self._entry_checks: dict[str, asyncio.Task[EntryCheck]] = {}
        self._tag_checks: dict[str, asyncio.Task[str | OriginStatus]] = {}

    def due(self, meta: EntryMeta, request: Request) -> bool:
        """Whether entry ``meta`` must be checked before it answers ``request``."""
        return entry_due(meta, request.policy, request.identity.url, self._clock())

    async def check_entry(self, meta: EntryMeta, request: Request) -> EntryCheck:
        """Check entry ``meta`` with the origin (one request for concurrent callers); an
        origin silent for ``ANSWER_WAIT`` seconds is a failing one."""
        checking = _single_flight(
            self._entry_checks, meta.key, lambda: self._check_entry(meta, request)
        )
        try:
            return await asyncio.wait_for(checking, ANSWER_WAIT)
        except TimeoutError:
            return self._stale(meta, f"no answer from the origin in {ANSWER_WAIT:.0f} s")

    async def task_tag(self, request: Request) -> str | OriginStatus | None:
        """The dfdaemon task's tag for ``request``'s object (None: no dfdaemon): the configured
        tag with the ETag last validated, checked again per the policy; the origin's answer
        when the object is gone (or the check refused)."""
        tag = self._dragonfly_tag
        if tag is None or names_version(request.identity.url):
            return tag  # a version in the URL, hence in the task ID already
        key = request.identity.task_id
        known = self._validators.get(key)
        if known is not None and not needs_revalidation(
            request.policy, known.validated_at, self._clock(), versioned=False
        ):
            return versioned_tag(tag, known.etag)
        checking = _single_flight(
            self._tag_checks, key, lambda: self._check_tag(tag, known, request)
        )
        try:
            return await asyncio.wait_for(checking, ANSWER_WAIT)
        except TimeoutError:
            log.warning("%s: no answer from the origin; the task keeps its tag", key[:12])
            return versioned_tag(tag, known.etag if known else None)

    def forget(self, key: str) -> None:
        self._validators.pop(key, None)

    async def close(self) -> None:
        tasks = [*self._entry_checks.values(), *self._tag_checks.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- the checks ---------------------------------------------------------------------------
    async def _check_entry(self, meta: EntryMeta, request: Request) -> EntryCheck:
        key = meta.key
        reply = await self._ask(request, conditional_headers(meta.etag, meta.last_modified))
        if reply is None:
            return self._stale(meta, "the origin is unreachable")
        verdict = judge(reply.status, meta.etag, reply.headers.get("ETag"))
        self._metrics.revalidations.labels(result=verdict.result).inc()
        now = self._clock()
        if verdict is Verdict.FRESH:
            reply.close()
            self._validators[key] = Validator(meta.etag, now)
            return self._store.revalidated(key, now)
        if verdict is Verdict.UNAVAILABLE:
            reply.close()
            return self._stale(meta, f"the origin answered {reply.status}")
        if verdict is not Verdict.CHANGED:
            return await self._origin_answer(verdict, reply, request)
        log.info("%s changed at the origin: replacing the cached copy", request.identity.url)
        self._store.remove(key)
        self._validators[key] = Validator(reply.headers.get("ETag"), now)
        if request.method == "GET" and reply.status == 200:
            self._fills.get_or_start(
                key,
                request.identity.url,
                request.signed_url,
                request.filtered,
                policy=request.policy,
                opened=reply,
                sign_again=request.sign_again,
            )
        else:
            reply.close()
        return None

    async def _check_tag(
        self, tag: str, known: Validator | None, request: Request
    ) -> str | OriginStatus:
        key = request.identity.task_id
        etag = known.etag if known else None
        reply = await self._ask(request, {**conditional_headers(etag, None), **_FIRST_BYTE})
        if reply is None:
            log.warning("%s: the origin is unreachable; the task keeps its tag", key[:12])
            return versioned_tag(tag, etag)
        verdict = judge(reply.status, etag, reply.headers.get("ETag"))
        if known is not None or verdict is not Verdict.CHANGED:  # a first ETag is no change
            self._metrics.revalidations.labels(result=verdict.result).inc()
        if verdict is Verdict.FRESH or verdict is Verdict.CHANGED:
            reply.close()
            etag = etag if verdict is Verdict.FRESH else reply.headers.get("ETag")
            self._validators[key] = Validator(etag, self._clock())
            return versioned_tag(tag, etag)
        if verdict is Verdict.UNAVAILABLE:
            reply.close()
            log.warning("%s: the origin answered %d; the task keeps its tag", key, reply.status)
            return versioned_tag(tag, etag)
        return await self._origin_answer(verdict, reply, request)

    async def _ask(self, request: Request, headers: dict[str, str]) -> UpstreamReply | None:
        """The origin's answer to a conditional request; None when there is none."""
        try:
            return await self._upstream.open(
                request.method, request.signed_url, request.filtered, direct=True, headers=headers
            )
        except UpstreamError as error:
            self._metrics.revalidations.labels(result="error").inc()
            log.warning("revalidation of %s failed: %s", request.identity.url, error)
            return None

    async def _origin_answer(
        self, verdict: Verdict, reply: UpstreamReply, request: Request
    ) -> OriginStatus:
        """The origin's answer for the client; a deleted object leaves the cache."""
        try:
            body = b"" if request.method == "HEAD" else await reply.head_of_body()
        except UpstreamError:
            body = b""
        finally:
            reply.close()
        if verdict is Verdict.GONE:
            key = request.identity.task_id
            if self._store.remove(key):
                log.info("%s is gone at the origin: removed from the cache", request.identity.url)
            self.forget(key)
        return OriginStatus(reply.status, reply.headers, body, request.signed_url)

    def _stale(self, meta: EntryMeta, why: str) -> EntryMeta:
        log.warning("serving %s without revalidation: %s", meta.url, why)
        return meta


def entry_due(meta: EntryMeta, policy: FreshnessPolicy, identity_url: str, now: float) -> bool:
    """Whether entry ``meta`` of the object at ``identity_url`` must be checked at ``now``."""
    validated_at = meta.validated_at or meta.stored_at
    return needs_revalidation(policy, validated_at, now, versioned=names_version(identity_url))


async def _single_flight[T](
    running: dict[str, asyncio.Task[T]], key: str, start: Callable[[], Awaitable[T]]
) -> T:
    """``start()``'s result, shared with every caller for ``key`` while it runs. The task
    belongs to no caller: a caller cancelled (its client gone) leaves it running."""
    task = running.get(key)
    if task is None:

        async def run() -> T:
            try:
                return await start()
            finally:
                running.pop(key, None)

        task = asyncio.create_task(run(), name=f"revalidate {key[:12]}")
        running[key] = task
    return await asyncio.shield(task)
