"""Warm one object inside the running shim: the answer a client's GET would get, from
``CacheServer.respond`` (so the same cache key, the same dfdaemon task), with its body followed
to the end and sent nowhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from shim.cache.conditional import Preconditions
from shim.cache.fill import FileSpan, TransferAborted
from shim.cache.server import (
    CACHE_STATUS_HEADER,
    ERROR_HEADER,
    ROUTE_HEADER,
    TASK_ID_HEADER,
    CacheServer,
    Ticket,
)
from shim.decide import Refuse

# The ticket a client's GET of the URL would get: signed, identified; or why it gets none.
TicketFor = Callable[[str], Awaitable[Ticket | Refuse]]
NOT_KEPT = "fetched but not kept: no room under max_size / min_free / the high watermark"
# Spans are waited for, never read: one per piece of the fill, however large.
_SPAN_LIMIT = 64 << 20


@dataclass(frozen=True, slots=True)
class Warmed:
    """How warming one object ended; ``error`` None: it is warm."""

    status: int
    cache: str = "-"  # HIT or MISS, as X-Shim-Cache says
    route: str = "-"  # cache, direct, dfdaemon, fallback
    task_id: str | None = None
    size: int | None = None
    error: str | None = None


def refused(refusal: Refuse) -> Warmed:
    return Warmed(refusal.status, error=f"refused ({refusal.kind}): {refusal.message}")


async def warm(
    cache: CacheServer, ticket: Ticket, on_bytes: Callable[[int], None] = lambda _: None
) -> Warmed:
    """Ask the cache for ``ticket`` as a GET without conditions would, and wait for the whole
    body (``on_bytes`` told of each part). The bytes are not read: the fill writes them to
    its file, and following its spans only waits for them."""
    reply = await cache.respond(ticket, Preconditions())
    headers = reply.headers
    outcome = Warmed(
        reply.status,
        headers.get(CACHE_STATUS_HEADER, "-"),
        headers.get(ROUTE_HEADER, "-"),
        headers.get(TASK_ID_HEADER),
        reply.stream.length if reply.stream is not None else None,
    )
    if reply.stream is None:
        kind = headers.get(ERROR_HEADER, "origin_status")
        return _failed(outcome, f"answered {reply.status} ({kind})")
    with contextlib.closing(reply.stream):
        if outcome.cache == "HIT":
            return outcome  # whole in the cache already
        received = 0
        try:
            async with contextlib.aclosing(reply.stream.spans(_SPAN_LIMIT)) as spans:
                async for span in spans:
                    count = span.count if isinstance(span, FileSpan) else len(span)
                    received += count
                    on_bytes(count)
        except TransferAborted as error:
            cache.count_aborted(error)
            return _failed(outcome, f"cut short after {received} bytes: {error}")
    if cache.keeps_copies and cache.store.lookup(ticket.identity.task_id) is None:
        # The fill had no room reserved (or was evicted at once): nothing is warm.
        return _failed(outcome, NOT_KEPT)
    return replace(outcome, size=received)


def _failed(outcome: Warmed, error: str) -> Warmed:
    return replace(outcome, size=None, error=error)
