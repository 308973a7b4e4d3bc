"""shim/upstream.py against a real strict S3 server: resends of requests that failed unanswered,
never a resend after a body byte, never a redirect followed; the origin and the dfdaemon alike.

Faults come from the relay in front of s3rver. s3rver accepts absolute-form request targets
(``GET http://host/bucket/key?sig``) as a dfdaemon's proxy does, so it also stands in for the
dfdaemon's HTTP side: what is under test is shim's client of it, not Dragonfly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import aiohttp
import pytest

from shim._errors import UnansweredError, UpstreamError
from shim.dfdaemon import DragonflyOptions
from shim.metrics import Metrics
from shim.providers import ALL_SIGNATURE_PARAMS
from shim.upstream import ATTEMPTS, FIRST_BACKOFF, DfdaemonRoute, Upstream
from tests.support.procs import free_port
from tests.support.relay import Relay, raw_response, request_target
from tests.support.servers import S3Server, put_object, s3_client, start_s3rver

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

pytestmark = pytest.mark.origin

BUCKET = "upstream"
OBJECTS = {"a.bin": b"a" * 100_000, "b.bin": b"b" * 50_000}
FILTERED = tuple(sorted(ALL_SIGNATURE_PARAMS))


@pytest.fixture(scope="module")
def s3rver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with start_s3rver(tmp_path_factory.mktemp("s3rver")) as server:
        client = s3_client(server)
        for key, body in OBJECTS.items():
            put_object(client, BUCKET, key, body)
        yield server


@pytest.fixture
def relay(s3rver: S3Server) -> Iterator[Relay]:
    with Relay(s3rver.host, s3rver.port) as started:
        yield started


def signed(endpoint: str, s3rver: S3Server, key: str, method: str = "GET") -> str:
    client: S3Client = s3_client(s3rver, endpoint_url=endpoint)
    operation = {"GET": "get_object", "HEAD": "head_object"}[method]
    return client.generate_presigned_url(operation, Params={"Bucket": BUCKET, "Key": key})


def retries(metrics: Metrics, upstream: str) -> float:
    value = metrics.registry.get_sample_value("shim_origin_retries_total", {"upstream": upstream})
    return value or 0.0


async def fetch(upstream: Upstream, url: str, method: str = "GET") -> tuple[int, str, bytes]:
    """Status, route and whole body of one request."""
    reply = await upstream.open(method, url, FILTERED)
    try:
        body = b"".join([chunk async for chunk in reply.chunks()])
    finally:
        reply.close()
    return reply.status, reply.route, body


def with_upstream[T](
    metrics: Metrics,
    scenario: Callable[[Upstream], Awaitable[T]],
    *,
    dfdaemon: DfdaemonRoute | None = None,
) -> T:
    """Run ``scenario(upstream)`` with an Upstream over a fresh pooled aiohttp session."""

    async def main() -> T:
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            upstream = Upstream(
                session, metrics, extra_headers={}, read_timeout=10, dfdaemon=dfdaemon
            )
            return await scenario(upstream)

    return asyncio.run(main())


def dfdaemon_at(address: tuple[str, int], *, fallback: bool) -> DfdaemonRoute:
    return DfdaemonRoute(address, DragonflyOptions(), fallback=fallback, connect_timeout=5)


# -- resends ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_kept_alive_connections_the_origin_closed_are_resent_on_a_fresh_one(
    s3rver: S3Server, relay: Relay, method: str
) -> None:
    metrics = Metrics()
    url_a = signed(relay.endpoint, s3rver, "a.bin", method)
    url_b = signed(relay.endpoint, s3rver, "b.bin", method)

    async def scenario(upstream: Upstream) -> tuple[int, str, bytes]:
        # Two requests at once leave two kept-alive connections in the pool. The relay then
        # drops each one when it is reused, as an origin whose idle timeout closed it would:
        # aiohttp's own single resend meets the second stale connection, shim's a fresh one.
        await asyncio.gather(fetch(upstream, url_a, method), fetch(upstream, url_b, method))
        relay.drop_reused = True
        return await fetch(upstream, url_a, method)

    status, route, body = with_upstream(metrics, scenario)
    assert (status, route) == (200, "direct")
    assert body == (OBJECTS["a.bin"] if method == "GET" else b"")
    assert relay.dropped_requests == 2
    assert retries(metrics, "origin") == 1


def test_a_refused_connection_is_tried_a_bounded_number_of_times_with_backoff() -> None:
    metrics = Metrics()
    url = f"http://127.0.0.1:{free_port()}/{BUCKET}/a.bin"
    started = time.monotonic()
    with pytest.raises(UpstreamError, match="origin unreachable"):
        with_upstream(metrics, lambda upstream: fetch(upstream, url))
    assert retries(metrics, "origin") == ATTEMPTS - 1
    assert time.monotonic() - started >= FIRST_BACKOFF * (2 ** (ATTEMPTS - 1) - 1)


def test_resets_before_any_answer_give_up_after_the_last_attempt(
    s3rver: S3Server, relay: Relay
) -> None:
    metrics = Metrics()
    relay.drop_next_requests = 100
    url = signed(relay.endpoint, s3rver, "a.bin")
    with pytest.raises(UpstreamError):
        with_upstream(metrics, lambda upstream: fetch(upstream, url))
    assert retries(metrics, "origin") == ATTEMPTS - 1
    # aiohttp resends once on its own after a reset; shim's attempts are on top of that.
    assert ATTEMPTS <= relay.dropped_requests <= 2 * ATTEMPTS


def test_nothing_is_resent_once_a_body_byte_arrived(s3rver: S3Server, relay: Relay) -> None:
    metrics = Metrics()
    relay.cut_after_bytes = 20_000
    url = signed(relay.endpoint, s3rver, "a.bin")
    with pytest.raises(UpstreamError, match="origin failed"):
        with_upstream(metrics, lambda upstream: fetch(upstream, url))
    assert relay.connections == 1
    assert retries(metrics, "origin") == 0


def test_nothing_is_resent_to_a_dfdaemon_once_a_body_byte_arrived(
    s3rver: S3Server, relay: Relay
) -> None:
    metrics = Metrics()
    relay.cut_after_bytes = 20_000
    route = dfdaemon_at(relay.address, fallback=True)
    url = signed(s3rver.endpoint, s3rver, "a.bin")
    with pytest.raises(UpstreamError, match="dfdaemon connection failed") as failure:
        with_upstream(metrics, lambda u: fetch(u, url), dfdaemon=route)
    assert not isinstance(failure.value, UnansweredError)
    assert relay.connections == 1
    assert retries(metrics, "dfdaemon") == 0


def test_a_dfdaemon_reset_before_answering_is_resent_to_the_dfdaemon(
    s3rver: S3Server, relay: Relay
) -> None:
    metrics = Metrics()
    relay.drop_next_requests = 1
    # Fallback off: without the resend this would fail outright.
    route = dfdaemon_at(relay.address, fallback=False)
    url = signed(s3rver.endpoint, s3rver, "a.bin")
    status, used, body = with_upstream(metrics, lambda u: fetch(u, url), dfdaemon=route)
    assert (status, used, body) == (200, "dfdaemon", OBJECTS["a.bin"])
    assert relay.dropped_requests == 1
    assert retries(metrics, "dfdaemon") == 1


def test_an_unreachable_dfdaemon_is_tried_again_then_the_origin_serves(
    s3rver: S3Server,
) -> None:
    metrics = Metrics()
    route = dfdaemon_at(("127.0.0.1", free_port()), fallback=True)
    url = signed(s3rver.endpoint, s3rver, "b.bin")
    status, used, body = with_upstream(metrics, lambda u: fetch(u, url), dfdaemon=route)
    assert (status, used, body) == (200, "fallback", OBJECTS["b.bin"])
    assert retries(metrics, "dfdaemon") == ATTEMPTS - 1
    assert retries(metrics, "origin") == 0


# -- redirects ----------------------------------------------------------------------------------


def redirect_to(target: Relay, status: int) -> Callable[[bytes], bytes]:
    """Answer with ``status`` pointing at ``target`` with the request's own path and query,
    as S3's 307 TemporaryRedirect does."""

    def answer(head: bytes) -> bytes:
        path = urlsplit(request_target(head))
        location = f"{target.endpoint}{path.path}?{path.query}"
        return raw_response(status, {"Location": location})

    return answer


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_origin_redirects_are_returned_not_followed(
    s3rver: S3Server, relay: Relay, status: int
) -> None:
    with Relay(s3rver.host, s3rver.port) as target:
        relay.answer = redirect_to(target, status)
        url = signed(relay.endpoint, s3rver, "a.bin")
        got, _, body = with_upstream(Metrics(), lambda upstream: fetch(upstream, url))
        assert (got, body) == (status, b"")
        assert target.connections == 0


def test_the_dfdaemon_client_follows_no_redirect(s3rver: S3Server, relay: Relay) -> None:
    with Relay(s3rver.host, s3rver.port) as target:
        relay.answer = redirect_to(target, 307)
        route = dfdaemon_at(relay.address, fallback=False)
        url = signed(s3rver.endpoint, s3rver, "a.bin")
        status, used, _ = with_upstream(Metrics(), lambda u: fetch(u, url), dfdaemon=route)
        assert (status, used) == (307, "dfdaemon")
        assert target.connections == 0
