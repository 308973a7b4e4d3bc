"""The running shim against origin behaviour that used to fail or leak: a kept-alive connection
the origin had closed, a redirect, an error body repeating the signature, a 206 to a GET sent
without Range (partNumber).

The origin is the strict s3rver behind the relay. Where s3rver cannot be made to answer so
(it never redirects, and ignores partNumber on GetObject: a whole 200), the relay answers
itself, and the test checks that the real server behind it was never needed.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.support.http import Reply, direct, via_proxy
from tests.support.relay import Relay, RelayFactory, raw_response, request_target
from tests.support.servers import S3Server, put_object, s3_client
from tests.support.shim_process import ShimProcess, s3_bucket_config, start_shim

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

pytestmark = pytest.mark.slow

BUCKET = "faults"
OBJECTS = {key: os.urandom(1 << 20) for key in ("one.bin", "two.bin", "three.bin")}


@pytest.fixture(scope="module")
def bucket(s3rver: S3Server) -> S3Client:
    client = s3_client(s3rver)
    for key, body in OBJECTS.items():
        put_object(client, BUCKET, key, body)
    return client


def shim_before(relay: Relay, workdir: Path, **credentials: str) -> ShimProcess:
    return start_shim(
        workdir, {"buckets": [s3_bucket_config(BUCKET, relay.endpoint, **credentials)]}
    )


def get(shim: ShimProcess, relay: Relay, key: str, method: str = "GET") -> Reply:
    return via_proxy(shim.proxy_port, f"{relay.endpoint}/{BUCKET}/{key}", method=method)


def cached_files(shim: ShimProcess) -> list[Path]:
    return [path for path in (shim.cache_dir / "objects").rglob("*") if path.is_file()]


def signature_sent(relay: Relay) -> str:
    """The X-Amz-Signature of the first request shim sent through ``relay``."""
    query = parse_qs(urlsplit(request_target(relay.request_heads[0])).query)
    return query["X-Amz-Signature"][0]


def test_a_kept_alive_connection_the_origin_closed_fails_no_get(
    tmp_path: Path, s3rver: S3Server, bucket: S3Client, relay_factory: RelayFactory
) -> None:
    # Slow enough that two fills overlap and leave two kept-alive connections in the pool.
    relay = relay_factory(s3rver.host, s3rver.port, rate_limit_bytes_per_s=2e6)
    with shim_before(relay, tmp_path) as shim:
        with ThreadPoolExecutor(2) as pool:
            first = list(pool.map(lambda key: get(shim, relay, key), ["one.bin", "two.bin"]))
        assert [reply.status for reply in first] == [200, 200]
        assert relay.connections == 2
        # Each pooled connection is now closed by the origin as the next request reuses it.
        relay.rate_limit_bytes_per_s = None
        relay.drop_reused = True
        reply = get(shim, relay, "three.bin")
        metrics = shim.metrics()
    assert reply.status == 200, reply.body[:300]
    assert reply.body == OBJECTS["three.bin"]
    assert relay.dropped_requests == 2  # both stale connections were met
    assert metrics['shim_origin_retries_total{upstream="origin"}'] == 1


@pytest.mark.parametrize("status", [302, 307])
def test_a_redirect_is_passed_on_uncached_unfollowed_and_without_the_signature(
    tmp_path: Path, s3rver: S3Server, bucket: S3Client, relay_factory: RelayFactory, status: int
) -> None:
    origin = relay_factory(s3rver.host, s3rver.port)
    elsewhere = relay_factory(s3rver.host, s3rver.port)  # serves the object too, if asked

    def redirect(head: bytes) -> bytes:
        # As S3's TemporaryRedirect: same path and signed query, another endpoint.
        location = f"{elsewhere.endpoint}{request_target(head)}"
        body = b"<Error><Code>TemporaryRedirect</Code><Message>Please re-send</Message></Error>"
        return raw_response(status, {"Location": location, "Content-Type": "application/xml"}, body)

    origin.answer = redirect
    with shim_before(origin, tmp_path) as shim:
        first = get(shim, origin, "one.bin")
        second = get(shim, origin, "one.bin")
        assert cached_files(shim) == []
    signature = signature_sent(origin)
    assert [first.status, second.status] == [status, status]
    assert first.headers["X-Shim-Error"] == "origin_status"
    assert b"<Code>TemporaryRedirect</Code>" in first.body
    location = first.headers["Location"]
    assert location.startswith(f"{elsewhere.endpoint}/{BUCKET}/one.bin?")
    assert "X-Amz-Signature=REDACTED" in location
    assert "X-Amz-Credential=REDACTED" in location
    assert signature not in location and s3rver.access_key not in location
    assert origin.connections == 2  # asked again: nothing was kept
    assert elsewhere.connections == 0  # never followed


def test_a_signature_error_keeps_its_status_and_code_and_loses_what_was_signed(
    tmp_path: Path, s3rver: S3Server, bucket: S3Client, relay_factory: RelayFactory
) -> None:
    relay = relay_factory(s3rver.host, s3rver.port)
    with shim_before(relay, tmp_path, secret_key="not-the-secret") as shim:
        reply = get(shim, relay, "one.bin")
        head = get(shim, relay, "one.bin", method="HEAD")
    signature = signature_sent(relay)
    # The very request shim sent, straight to the origin: what must not reach a client.
    raw = direct(f"{relay.endpoint}{request_target(relay.request_heads[0])}")
    string_to_sign = raw.body.split(b"<StringToSign>")[1].split(b"</StringToSign>")[0]
    assert raw.status == 403
    assert f"<AWSAccessKeyId>{s3rver.access_key}</AWSAccessKeyId>".encode() in raw.body
    assert string_to_sign.startswith(b"AWS4-HMAC-SHA256\n")

    assert reply.status == 403
    assert reply.headers["X-Shim-Error"] == "origin_status"
    assert b"<Code>SignatureDoesNotMatch</Code>" in reply.body
    assert b"<StringToSign>REDACTED</StringToSign>" in reply.body
    for secret in (s3rver.access_key.encode(), string_to_sign, signature.encode()):
        assert secret not in reply.body
    assert head.status == 403
    assert head.body == b""
    assert s3rver.access_key not in str(head.headers) and signature not in str(head.headers)


def test_a_part_is_streamed_as_206_with_its_content_range_and_never_cached(
    tmp_path: Path, s3rver: S3Server, bucket: S3Client, relay_factory: RelayFactory
) -> None:
    relay = relay_factory(s3rver.host, s3rver.port)
    whole = os.urandom(300_000)
    part = whole[:100_000]
    content_range = f"bytes 0-{len(part) - 1}/{len(whole)}"
    # The ETag is the whole object's, as S3 sends with a part: no digest check may reject it.
    etag = f'"{hashlib.md5(whole, usedforsecurity=False).hexdigest()}"'
    relay.answer = lambda head: raw_response(
        206, {"Content-Range": content_range, "ETag": etag}, part
    )
    with shim_before(relay, tmp_path) as shim:
        first = get(shim, relay, "multi.bin?partNumber=1")
        second = get(shim, relay, "multi.bin?partNumber=1")
        assert cached_files(shim) == []
    assert first.status == 206, first.body[:300]
    assert first.body == part
    assert first.headers["Content-Range"] == content_range
    assert first.headers["Content-Length"] == str(len(part))
    assert first.headers["X-Shim-Cache"] == "MISS"
    assert (second.status, second.body) == (206, part)
    assert relay.connections == 2
    assert parse_qs(urlsplit(request_target(relay.request_heads[0])).query)["partNumber"] == ["1"]
