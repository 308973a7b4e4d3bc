"""A real loopback origin for the cache's in-process tests, and shim's pieces pointed at it.

The origin is the strict s3rver behind a relay (tests/support/relay.py), which counts the
requests that reach it and injects what no real server does on demand: a stall that the test
ends with ``resume()``, a cut, a flipped byte.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass

import aiohttp

from shim.cache.server import TICKET_HEADER, CacheServer, Ticket
from shim.cache.store import CacheStore
from shim.identity import identify
from shim.metrics import Metrics
from shim.providers import ALL_SIGNATURE_PARAMS
from shim.upstream import DfdaemonRoute, Upstream
from tests.support.relay import Relay
from tests.support.servers import S3Server, put_object, s3_client

FILTERED = tuple(sorted(ALL_SIGNATURE_PARAMS))


@dataclass
class Origin:
    s3rver: S3Server
    relay: Relay
    bucket: str

    def put(self, key: str, body: bytes) -> None:
        put_object(s3_client(self.s3rver), self.bucket, key, body)

    def ticket(self, key: str) -> Ticket:
        """What the proxy would hand the cache server for a GET of ``key``, signed for the
        relay's address."""
        client = s3_client(self.s3rver, endpoint_url=self.relay.endpoint)
        signed = client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}
        )
        return Ticket("GET", signed, identify(signed, FILTERED), FILTERED)

    def gets(self) -> int:
        """GET requests that reached the origin since the relay started."""
        return sum(head.startswith(b"GET ") for head in self.relay.request_heads)

    async def head_length(self, key: str) -> int:
        """Bytes of the origin's response head to shim's GET of ``key``: where its body
        starts in the relay's byte offsets."""
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            upstream = Upstream(
                session, Metrics(), extra_headers={}, read_timeout=10, dfdaemon=None
            )
            before = self.relay.bytes_down
            reply = await upstream.open("GET", self.ticket(key).signed_url, FILTERED)
            size = sum([len(chunk) async for chunk in reply.chunks()])
            reply.close()
            return self.relay.bytes_down - before - size


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait for ``condition`` (polled): the tests wait for states, never for time."""
    try:
        async with asyncio.timeout(20):
            # Polled: the states are shim's and the relay's, which offer nothing to await.
            while not condition():  # noqa: ASYNC110
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"timed out waiting until {what}") from None


@contextlib.asynccontextmanager
async def running_cache(
    store: CacheStore, metrics: Metrics, *, dfdaemon: DfdaemonRoute | None = None
) -> AsyncIterator[CacheServer]:
    server = CacheServer(
        store, metrics, extra_headers={}, origin_timeout=20, dfdaemon=dfdaemon, keep=True
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def get(
    session: aiohttp.ClientSession,
    server: CacheServer,
    ticket: Ticket,
    headers: Mapping[str, str] | None = None,
) -> aiohttp.ClientResponse:
    """Send the cache server a request for ``ticket`` (with the client's ``headers``); the
    response, headers read."""
    host, port = server.address
    return await session.get(
        f"http://{host}:{port}/",
        headers={**(headers or {}), TICKET_HEADER: server.issue_ticket(ticket)},
    )


async def body_or_error(response: aiohttp.ClientResponse) -> bytes | str:
    """The whole body, or what went wrong reading it (a transfer cut short)."""
    try:
        return await response.read()
    except aiohttp.ClientPayloadError as error:
        return f"{type(error).__name__}: {error}"


def run_with_cache_server(
    store: CacheStore,
    scenario: Callable[[CacheServer, Metrics, aiohttp.ClientSession], Awaitable[None]],
    *,
    dfdaemon: DfdaemonRoute | None = None,
) -> None:
    """Run ``scenario`` against a cache server on ``store`` and a client session, then stop."""

    async def main() -> None:
        metrics = Metrics()
        async with (
            running_cache(store, metrics, dfdaemon=dfdaemon) as server,
            aiohttp.ClientSession(auto_decompress=False) as session,
        ):
            await scenario(server, metrics, session)

    asyncio.run(main())
