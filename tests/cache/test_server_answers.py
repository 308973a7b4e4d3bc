"""What the cache server answers, in-process against a real origin (s3rver behind a relay):
tickets, HEAD, ranges, the headers of an entry, and the origin answers that are no object (an
error, a redirect, one part of a multipart object), which pass through uncached. The relay
answers itself only where s3rver cannot (a redirect, a 206 to partNumber)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from multidict import CIMultiDict

from shim.cache.server import (
    CACHE_STATUS_HEADER,
    ERROR_HEADER,
    REFUSAL_PATH,
    ROUTE_HEADER,
    TASK_ID_HEADER,
    TICKET_HEADER,
    CacheServer,
    Ticket,
)
from shim.cache.store import CacheStore
from shim.decide import Refuse
from shim.identity import identify
from shim.metrics import Metrics
from shim.redact import signature_secrets
from tests.cache.origin import (
    FILTERED,
    Origin,
    body_or_error,
    get,
    run_with_cache_server,
    sample,
    until,
)
from tests.support.relay import raw_response
from tests.support.servers import s3_client

pytestmark = pytest.mark.origin

MiB = 1024 * 1024
KEY = "models/resnet.mar"


def head_ticket(origin: Origin, key: str) -> Ticket:
    """What the proxy hands the cache server for a HEAD of ``key``."""
    client = s3_client(origin.s3rver, endpoint_url=origin.relay.endpoint)
    signed = client.generate_presigned_url(
        "head_object", Params={"Bucket": origin.bucket, "Key": key}
    )
    return Ticket("HEAD", signed, identify(signed, FILTERED), FILTERED)


async def send(
    session: aiohttp.ClientSession,
    server: CacheServer,
    ticket: Ticket | None,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    ticket_id: str | None = None,
) -> tuple[int, CIMultiDict[str], bytes]:
    """One whole request to the cache server: status, headers, body. Redirects are the
    client's to follow, not this helper's."""
    host, port = server.address
    sent = dict(headers or {})
    if ticket is not None:
        sent[TICKET_HEADER] = server.issue_ticket(ticket)
    if ticket_id is not None:
        sent[TICKET_HEADER] = ticket_id
    url = f"http://{host}:{port}/"
    async with session.request(method, url, headers=sent, allow_redirects=False) as response:
        return response.status, CIMultiDict(response.headers), await response.read()


def fetches(metrics: Metrics) -> float:
    """Fills started: GETs that went to the origin."""
    return sample(metrics, "shim_origin_fetches_total")


def secrets_of(ticket: Ticket) -> frozenset[str]:
    return signature_secrets(ticket.signed_url)


def signature(url: str) -> str:
    return parse_qs(urlsplit(url).query)["X-Amz-Signature"][0]


# -- tickets ------------------------------------------------------------------------------------


def test_only_a_fresh_ticket_for_the_same_method_is_served(origin: Origin, tmp_path: Path) -> None:
    origin.put(KEY, b"model bytes")

    async def scenario(
        server: CacheServer, metrics: Metrics, session: aiohttp.ClientSession
    ) -> None:
        for ticket, method, ticket_id in [
            (None, "GET", None),  # no ticket at all
            (None, "GET", "guessed"),
            (origin.ticket(KEY), "HEAD", None),  # a GET's ticket used for a HEAD
            (head_ticket(origin, KEY), "GET", None),  # a HEAD's ticket used for a GET
        ]:
            status, headers, body = await send(
                session, server, ticket, method=method, ticket_id=ticket_id
            )
            assert (status, headers[ERROR_HEADER]) == (403, "forbidden")
            if method != "HEAD":
                assert body == b"shim: this port serves the shim proxy only\n"
        assert origin.relay.request_heads == []  # nothing reached the origin

        ticket_id = server.issue_ticket(origin.ticket(KEY))
        assert len(ticket_id) >= 32  # unguessable: 24 random bytes
        assert (await send(session, server, None, ticket_id=ticket_id))[0] == 200
        assert (await send(session, server, None, ticket_id=ticket_id))[0] == 403

    run_with_cache_server(CacheStore(tmp_path, 100 * MiB), scenario)


# -- HEAD ---------------------------------------------------------------------------------------


def test_head_asks_the_origin_then_the_entry_and_fills_nothing(
    origin: Origin, tmp_path: Path
) -> None:
    body = os.urandom(MiB + 7)
    origin.put(KEY, body)
    store = CacheStore(tmp_path, 100 * MiB)

    async def scenario(
        server: CacheServer, metrics: Metrics, session: aiohttp.ClientSession
    ) -> None:
        ticket = head_ticket(origin, KEY)
        status, headers, got = await send(session, server, ticket, method="HEAD")
        assert (status, got) == (200, b"")
        assert headers["Content-Length"] == str(len(body))
        assert headers["Accept-Ranges"] == "bytes"
        assert headers["ETag"].strip('"') and "Last-Modified" in headers
        assert headers[CACHE_STATUS_HEADER] == "MISS"
        assert headers[ROUTE_HEADER] == "direct"
        assert headers[TASK_ID_HEADER] == ticket.identity.task_id
        [asked] = origin.relay.request_heads
        assert asked.startswith(b"HEAD ")
        assert len(store) == 0
        assert fetches(metrics) == 0  # a HEAD is no fill
        assert sample(metrics, "shim_cache_misses_total") == 0

        assert (await send(session, server, origin.ticket(KEY)))[0] == 200
        sent_to_origin = origin.relay.bytes_up
        status, hit, got = await send(session, server, ticket, method="HEAD")
        assert (status, got) == (200, b"")
        assert hit[CACHE_STATUS_HEADER] == "HIT" and hit[ROUTE_HEADER] == "cache"
        assert hit[TASK_ID_HEADER] == ticket.identity.task_id
        for name in ("Content-Length", "ETag", "Last-Modified", "Accept-Ranges"):
            assert hit[name] == headers[name], name
        assert origin.relay.bytes_up == sent_to_origin  # the hit did not ask the origin
        assert sample(metrics, "shim_cache_hits_total") == 1

    run_with_cache_server(store, scenario)


def test_head_of_a_missing_object_passes_the_origin_status_on(
    origin: Origin, tmp_path: Path
) -> None:
    origin.put("other.mar", b"x")  # the bucket exists; the key does not

    async def scenario(
        server: CacheServer, metrics: Metrics, session: aiohttp.ClientSession
    ) -> None:
        ticket = head_ticket(origin, KEY)
        status, headers, got = await send(session, server, ticket, method="HEAD")
        assert (status, got) == (404, b"")
        assert headers[CACHE_STATUS_HEADER] == "MISS"
        assert headers[TASK_ID_HEADER] == ticket.identity.task_id

    run_with_cache_server(CacheStore(tmp_path, 100 * MiB), scenario)


# -- entries and ranges ---------------------------------------------------------------------------


def test_a_hit_carries_the_objects_headers(origin: Origin, tmp_path: Path) -> None:
    body = os.urandom(3000)
    origin.put(KEY, b"")  # creates the bucket
    s3_client(origin.s3rver).put_object(
        Bucket=origin.bucket, Key=KEY, Body=body, ContentType="application/x-mar"
    )

    async def scenario(
        server: CacheServer, metrics: Metrics, session: aiohttp.ClientSession
    ) -> None:
        ticket = origin.ticket(KEY)
        _, miss, _ = await send(session, server, ticket)
        status, hit, got = await send(session, server, ticket)
        assert (status, got) == (200, body)
        assert hit[CACHE_STATUS_HEADER] == "HIT"
        for name in ("Content-Type", "ETag", "Last-Modified", "Content-Length"):
            assert hit[name] == miss[name], name
        assert hit["Content-Type"] == "application/x-mar"
        assert hit["Accept-Ranges"] == "bytes"
        assert "Content-Range" not in hit

    run_with_cache_server(CacheStore(tmp_path, 100 * MiB), scenario)


def test_one_range_from_a_fill_and_from_the_entry_and_416_past_the_end(
    origin: Origin, tmp_path: Path
) -> None:
    body = os.urandom(3000)
    origin.put(KEY, body)

    async def scenario(
        server: CacheServer, metrics: Metrics, session: aiohttp.ClientSession
    ) -> None:
        ticket = origin.ticket(KEY)
        wanted = {"Range": "bytes=10-19"}
        for state in ("MISS", "HIT"):
            if state == "HIT":  # a range of a miss is served while the fill goes on
                await until(lambda: len(server.store) == 1, "the fill ended")
            status, headers, got = await send(session, server, ticket, headers=wanted)
            assert (status, got) == (206, body[10:20]), state
            assert headers[CACHE_STATUS_HEADER] == state
            assert headers["Content-Range"] == "bytes 10-19/3000"
            assert headers["Content-Length"] == "10"
        status, headers, got = await send(session, server, ticket, headers={"Range": "bytes=3000-"})
        assert (status, got) == (416, b"")
        assert headers["Content-Range"] == "bytes */3000"
        assert fetches(metrics) == 1
        assert sample(metrics, "shim_errors_total", kind="truncated") == 0  # each ended whole

    run_with_cache_server(CacheStore(tmp_path, 100 * MiB), scenario)


# -- origin answers that are no object ------------------------------------------------------------


def test_an_origin_error_passes_through_redacted_and_is_never_kept(
    origin: Origin, tmp_path: Path
) -> None:
    origin.put("other.mar", b"x")
    store = CacheStore(tmp_path, 100 * MiB)

    async def scenario(
        server: CacheServer, metrics: Metrics, session: aiohttp.ClientSession
    ) -> None:
        for attempt in (1, 2):
            ticket = origin.ticket(KEY)
            status, headers, body = await send(session, server, ticket)
            assert status == 404
            assert headers[ERROR_HEADER] == "origin_status"
            assert headers[TASK_ID_HEADER] == ticket.identity.task_id
            assert b"NoSuchKey" in body  # the origin's own answer
            text = body.decode()
            assert not [secret for secret in secrets_of(ticket) if secret in text]
            assert fetches(metrics) == attempt  # never cached: each asks the origin
        assert len(store) == 0
        assert sample(metrics, "shim_errors_total", kind="origin_status") == 2

    run_with_cache_server(store, scenario)


def test_a_redirect_passes_through_unfollowed_redacted_and_uncached(
    origin: Origin, tmp_path: Path
) -> None:
    origin.put(KEY, b"model")
    elsewhere = origin.ticket("moved/resnet.mar").signed_url
    origin.relay.answer = lambda head: raw_response(
        302,
        {"Location": elsewhere, "Content-Type": "application/xml", "Content-Encoding": "gzip"},
        b"<Moved/>",
    )

    async def scenario(
        server: CacheServer, metrics: Metrics, session: aiohttp.ClientSession
    ) -> None:
        status, headers, body = await send(session, server, origin.ticket(KEY))
        assert status == 302
        assert headers[ERROR_HEADER] == "origin_status"
        location = headers["Location"]
        assert signature(location) == "REDACTED"
        assert urlsplit(location).path == urlsplit(elsewhere).path
        assert signature(elsewhere) not in location
        assert headers["Content-Type"] == "application/xml" and body == b"<Moved/>"
        # The body a client gets may be redacted: it is not the encoded bytes the origin sent.
        assert "Content-Encoding" not in headers
        assert len(origin.relay.request_heads) == 1  # not followed
        assert len(server.store) == 0

    run_with_cache_server(CacheStore(tmp_path, 100 * MiB), scenario)


def test_a_part_streams_as_the_origin_framed_it_and_is_never_kept(
    origin: Origin, tmp_path: Path
) -> None:
    part = os.urandom(100)
    origin.put(KEY, b"the whole object")

    def answer(head: bytes) -> bytes:
        headers = {"Content-Range": "bytes 0-99/1000", "ETag": '"whole-object-etag-1"'}
        reply = raw_response(206, headers, part)
        # A HEAD's answer: the same head, Content-Length of the part included, and no body.
        return reply.removesuffix(part) if head.startswith(b"HEAD ") else reply

    origin.relay.answer = answer

    async def scenario(
        server: CacheServer, metrics: Metrics, session: aiohttp.ClientSession
    ) -> None:
        for attempt in (1, 2):
            status, headers, body = await send(
                session, server, origin.ticket(KEY), headers={"Range": "bytes=0-9"}
            )
            # The client's Range is about the object, not the part: the part goes out whole.
            assert (status, body) == (206, part)
            assert headers["Content-Range"] == "bytes 0-99/1000"
            assert headers["Content-Length"] == "100"
            assert headers["ETag"] == '"whole-object-etag-1"'
            assert headers[CACHE_STATUS_HEADER] == "MISS"
            assert fetches(metrics) == attempt  # never kept as the object
        status, headers, body = await send(session, server, head_ticket(origin, KEY), method="HEAD")
        assert (status, body) == (206, b"")
        assert headers["Content-Range"] == "bytes 0-99/1000"
        assert headers["Content-Length"] == "100"
        assert len(server.store) == 0

    run_with_cache_server(CacheStore(tmp_path, 100 * MiB), scenario)


def test_a_206_without_content_range_is_an_origin_failure(origin: Origin, tmp_path: Path) -> None:
    origin.put(KEY, b"model")
    origin.relay.answer = lambda head: raw_response(206, {}, b"" if b"HEAD" in head else b"ab")

    async def scenario(
        server: CacheServer, metrics: Metrics, session: aiohttp.ClientSession
    ) -> None:
        for ticket, method in [(origin.ticket(KEY), "GET"), (head_ticket(origin, KEY), "HEAD")]:
            status, headers, body = await send(session, server, ticket, method=method)
            assert (status, headers[ERROR_HEADER]) == (502, "origin"), method
            if method == "GET":
                assert body == b"shim: origin answered 206 without Content-Range\n"
            assert headers[TASK_ID_HEADER] == ticket.identity.task_id
        assert len(server.store) == 0
        assert sample(metrics, "shim_errors_total", kind="origin") == 1

    run_with_cache_server(CacheStore(tmp_path, 100 * MiB), scenario)


# -- bytes as stored, entries without an ETag, what a failed fill gives back -----------------------


def test_a_compressed_object_is_served_and_kept_byte_for_byte(
    origin: Origin, tmp_path: Path
) -> None:
    stored = gzip.compress(b"model weights " * 1000)
    origin.put(KEY, b"")  # creates the bucket
    s3_client(origin.s3rver).put_object(
        Bucket=origin.bucket, Key=KEY, Body=stored, ContentEncoding="gzip"
    )
    store = CacheStore(tmp_path, 100 * MiB)

    async def scenario(
        server: CacheServer, metrics: Metrics, session: aiohttp.ClientSession
    ) -> None:
        ticket = origin.ticket(KEY)
        for state in ("MISS", "HIT"):
            status, headers, body = await send(session, server, ticket)
            assert (status, headers[CACHE_STATUS_HEADER], body) == (200, state, stored)
            assert headers["Content-Encoding"] == "gzip"
        meta = store.lookup(ticket.identity.task_id)
        assert meta is not None and meta.size == len(stored)
        assert meta.url == ticket.identity.url  # kept for operators: which object this is

    run_with_cache_server(store, scenario)


def test_an_object_without_an_etag_is_served_and_kept(origin: Origin, tmp_path: Path) -> None:
    origin.put(KEY, b"x")
    origin.relay.answer = lambda head: raw_response(200, {}, b"no etag here")
    store = CacheStore(tmp_path, 100 * MiB)

    async def scenario(
        server: CacheServer, metrics: Metrics, session: aiohttp.ClientSession
    ) -> None:
        ticket = origin.ticket(KEY)
        status, headers, body = await send(session, server, ticket)
        assert (status, headers[CACHE_STATUS_HEADER], body) == (200, "MISS", b"no etag here")
        assert store.lookup(ticket.identity.task_id) is not None

    run_with_cache_server(store, scenario)


def test_a_failed_fill_gives_its_reserved_space_back_and_leaves_no_task(
    origin: Origin, tmp_path: Path
) -> None:
    body = os.urandom(2 * MiB)
    origin.put(KEY, body)
    store = CacheStore(tmp_path, 3 * MiB)

    async def scenario(
        server: CacheServer, metrics: Metrics, session: aiohttp.ClientSession
    ) -> None:
        origin.relay.cut_after_bytes = MiB  # the origin's answer stops partway
        async with await get(session, server, origin.ticket(KEY)) as response:
            assert isinstance(await body_or_error(response), str)
        await until(lambda: not server._fills._tasks, "the fill ended")  # type: ignore[union-attr]
        assert (store.reserved, store.used, len(store)) == (0, 0, 0)
        assert sample(metrics, "shim_errors_total", kind="truncated") == 1
        origin.relay.cut_after_bytes = None
        status, _, got = await send(session, server, origin.ticket(KEY))
        assert (status, got) == (200, body)  # the whole cap is free for the next fill
        assert store.lookup(origin.ticket(KEY).identity.task_id) is not None

    run_with_cache_server(store, scenario)


def test_a_refusal_ticket_answers_as_decided_and_closes(origin: Origin, tmp_path: Path) -> None:
    async def scenario(
        server: CacheServer, metrics: Metrics, session: aiohttp.ClientSession
    ) -> None:
        host, port = server.address
        url = f"http://{host}:{port}{REFUSAL_PATH}"
        refusal = Refuse(
            405,
            "method",
            "the reverse listener serves GET and HEAD only",
            (("Allow", "GET, HEAD"),),
        )
        headers = {TICKET_HEADER: server.issue_ticket(refusal)}
        async with session.put(url, headers=headers, data=b"upload") as response:
            assert (response.status, response.headers[ERROR_HEADER]) == (405, "method")
            assert response.headers["Allow"] == "GET, HEAD"
            assert response.headers["Connection"] == "close"
            assert await response.text() == "shim: the reverse listener serves GET and HEAD only\n"
        async with session.put(url, headers=headers, data=b"upload") as response:
            assert (response.status, response.headers[ERROR_HEADER]) == (403, "forbidden")
            assert await response.text() == "shim: this port serves the shim proxy only\n"

    run_with_cache_server(CacheStore(tmp_path, 100 * MiB), scenario)


def test_a_range_past_the_end_of_a_miss_is_416(origin: Origin, tmp_path: Path) -> None:
    body = os.urandom(3000)
    origin.put(KEY, body)

    async def scenario(
        server: CacheServer, metrics: Metrics, session: aiohttp.ClientSession
    ) -> None:
        past = {"Range": "bytes=5000-"}
        status, headers, got = await send(session, server, origin.ticket(KEY), headers=past)
        assert (status, got) == (416, b"")
        assert headers["Content-Range"] == "bytes */3000"
        assert fetches(metrics) == 1  # the fill goes on for the next request
        await until(lambda: len(server.store) == 1, "the fill ended")

    run_with_cache_server(CacheStore(tmp_path, 100 * MiB), scenario)
