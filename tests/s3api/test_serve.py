"""shim.s3api.serve: the answers made without the store (bucket head and location, providers
that do not list), and the cache's failures told in S3's XML with its own headers kept."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest

from shim.cache.server import ERROR_HEADER, Reply
from shim.config import settings_from_mapping
from shim.providers import provider_of
from shim.s3api.errors import S3Error
from shim.s3api.listing import ListRequest
from shim.s3api.request import BucketRead
from shim.s3api.serve import BucketRequests, object_reply, refusal
from tests.support.nginx import start_nginx

S3_BUCKET = {
    "provider": "s3",
    "bucket": "real",
    "alias": "models",
    "region": "eu-west-1",
    "credentials": {"source": "static", "access_key_id": "AKIDTEST", "secret_access_key": "x"},
}
GCS_BUCKET = {"provider": "gcs", "bucket": "gcs-models"}  # signs nothing: never asked to


def answer(raw: dict[str, Any], operation: Any, listing: ListRequest | None = None) -> Reply:
    bucket = settings_from_mapping({"buckets": [raw]}, env={}).buckets[0]
    signer = provider_of(bucket).signer(bucket, 3600)
    requests = BucketRequests(origin_timeout=5)

    async def run() -> Reply:
        try:
            return await requests.answer(BucketRead(bucket, operation, listing), signer, {})
        finally:
            await requests.close()

    return asyncio.run(run())


def test_head_bucket_and_location_are_answered_from_the_config() -> None:
    head = answer(S3_BUCKET, "head")
    assert (head.status, head.headers["x-amz-bucket-region"]) == (200, "eu-west-1")
    location = answer(S3_BUCKET, "location")
    root = ElementTree.fromstring(location.body)
    assert (location.status, root.text) == (200, "eu-west-1")


def test_stores_shim_cannot_list_answer_not_implemented() -> None:
    reply = answer(GCS_BUCKET, "list", ListRequest(2))
    root = ElementTree.fromstring(reply.body)
    assert (reply.status, root.findtext("Code")) == (501, "NotImplemented")
    assert "gcs" in (root.findtext("Message") or "")


@pytest.mark.parametrize(
    ("status", "body", "code"),
    [
        (404, b"<Error><Code>NoSuchKey</Code><Key>k</Key></Error>", "NoSuchKey"),
        (412, b"shim: precondition failed\n", "PreconditionFailed"),
        (416, b"", "InvalidRange"),
        (502, b"shim: the origin cut the body\n", "InternalError"),
    ],
)
def test_failures_of_object_reads_are_s3_errors_keeping_the_cache_headers(
    status: int, body: bytes, code: str
) -> None:
    cache = {"X-Shim-Cache": "MISS", "X-Shim-Task-Id": "t", "Content-Range": "bytes */10"}
    reply = object_reply(
        Reply(status, {**cache, "Content-Type": "text/plain"}, body), "GET", "/m/k"
    )
    assert reply.status == status
    assert reply.headers["Content-Type"] == "application/xml"
    assert reply.headers["X-Shim-Cache"] == "MISS" and reply.headers["X-Shim-Task-Id"] == "t"
    root = ElementTree.fromstring(reply.body)
    assert (root.findtext("Code"), root.findtext("Resource")) == (code, "/m/k")
    assert reply.headers["x-amz-request-id"] == root.findtext("RequestId")
    assert object_reply(Reply(status, {}, body), "HEAD", "/m/k").body == b""


@pytest.mark.parametrize(
    ("status", "told", "kind"),
    [
        (404, "origin_status", "origin_status"),  # the origin's answer, to a HEAD without body
        (502, "origin", "origin"),  # a fetch that failed
        (412, None, "request"),  # the request's own condition, whatever the body says
        (416, None, "request"),
    ],
)
def test_a_failure_is_told_as_the_kind_the_cache_told(
    status: int, told: str | None, kind: str
) -> None:
    for method, body in (("GET", b"shim: some failure\n"), ("HEAD", b"")):
        for name in (ERROR_HEADER, ERROR_HEADER.lower()):  # relayed, the name in any case
            headers = {"X-Shim-Cache": "MISS", **({name: told} if told else {})}
            reply = object_reply(Reply(status, headers, body), method, "/m/k")
            errors = [
                value for key, value in reply.headers.items() if key.lower() == "x-shim-error"
            ]
            assert errors == [kind], (method, name)


def test_answers_that_are_no_failure_pass_unchanged() -> None:
    for status in (200, 206, 304):
        reply = Reply(status, {"ETag": '"e"'}, b"")
        assert object_reply(reply, "GET", "/m/k") is reply


def test_a_refusal_carries_its_xml_and_its_kind() -> None:
    refused = refusal(S3Error(403, "AccessDenied", "read-only", "/m/k", "method"), "PUT")
    headers = dict(refused.headers)
    assert (refused.status, refused.kind, headers[ERROR_HEADER]) == (403, "method", "method")
    assert refused.body is not None
    assert ElementTree.fromstring(refused.body).findtext("Code") == "AccessDenied"
    assert refusal(S3Error(403, "AccessDenied", "x"), "HEAD").body == b""


@pytest.mark.origin
def test_a_listing_redirect_is_not_followed(tmp_path: Path) -> None:
    """nginx answers 301 for a directory named without its final slash: the listing is an
    error, and nothing (the signed URL, the configured headers) went to the redirect's target."""
    root = tmp_path / "root"
    (root / "real").mkdir(parents=True)
    with start_nginx(root, tmp_path / "nginx") as nginx:
        reply = answer({**S3_BUCKET, "endpoint": nginx.endpoint}, "list", ListRequest(2))
    requests = (nginx.prefix / "access.log").read_text().splitlines()  # read once stopped
    assert reply.status != 200
    assert ElementTree.fromstring(reply.body).findtext("Code") is not None
    assert len(requests) == 1 and '" 301 ' in requests[0]
