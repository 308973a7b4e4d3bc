"""The running shim against a real, strict S3 server (s3rver with its no-signature gate).

Clients send plain, unsigned URLs through the proxy, as TorchServe does; the shim signs them.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import http.client
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import pytest

from tests.support.http import Reply, direct, via_proxy
from tests.support.keys import AWKWARD_KEYS
from tests.support.relay import RelayFactory
from tests.support.servers import S3Server, put_object, s3_client, start_s3rver
from tests.support.shim_process import ShimProcess, s3_bucket_config, start_shim
from tests.support.tls import make_pki

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

pytestmark = pytest.mark.slow

BUCKET = "models"


def object_url(endpoint: str, key: str, bucket: str = BUCKET) -> str:
    return f"{endpoint}/{bucket}/{quote(key, safe='/')}"


def cache_files(shim: ShimProcess) -> list[Path]:
    return sorted(p for p in (shim.cache_dir / "objects").glob("*/*") if p.suffix != ".json")


@pytest.fixture(scope="module")
def shim(s3rver: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShimProcess]:
    config = {"buckets": [s3_bucket_config(BUCKET, s3rver.endpoint)]}
    with start_shim(tmp_path_factory.mktemp("shim"), config) as process:
        yield process


@pytest.fixture(scope="module")
def bucket(s3rver: S3Server) -> S3Client:
    client = s3_client(s3rver)
    put_object(client, BUCKET, "seed", b"seed")
    return client


# -- the server is strict, so the 200s below mean the shim signed correctly ----------------------


def test_origin_refuses_unsigned_and_tampered_requests(s3rver: S3Server, bucket: S3Client) -> None:
    put_object(bucket, BUCKET, "strict.bin", b"x" * 100)
    url = object_url(s3rver.endpoint, "strict.bin")
    assert direct(url).status == 403
    signed = bucket.generate_presigned_url(
        "get_object", Params={"Bucket": BUCKET, "Key": "strict.bin"}
    )
    assert direct(signed).status == 200
    tampered = signed[:-1] + ("0" if signed[-1] != "0" else "1")
    assert direct(tampered).status == 403


# -- signing ----

SPECIAL_KEYS = AWKWARD_KEYS


@pytest.mark.parametrize("key", SPECIAL_KEYS)
def test_unsigned_get_is_signed_and_byte_identical(
    shim: ShimProcess, s3rver: S3Server, bucket: S3Client, key: str
) -> None:
    body = os.urandom(70_000) + key.encode()
    put_object(bucket, BUCKET, key, body)
    reply = via_proxy(shim.proxy_port, object_url(s3rver.endpoint, key))
    assert reply.status == 200, reply.body[:300]
    assert reply.body == body
    assert reply.headers["X-Shim-Cache"] == "MISS"
    assert len(reply.headers["X-Shim-Task-Id"]) == 64


def test_stale_client_signature_is_replaced(
    shim: ShimProcess, s3rver: S3Server, bucket: S3Client
) -> None:
    put_object(bucket, BUCKET, "presigned.mar", b"p" * 5000)
    stale = bucket.generate_presigned_url(
        "get_object", Params={"Bucket": BUCKET, "Key": "presigned.mar"}, ExpiresIn=1
    )
    # An expired, pasted URL: the shim drops its signature and signs afresh.
    reply = via_proxy(shim.proxy_port, stale.replace("X-Amz-Expires=1", "X-Amz-Expires=0"))
    assert reply.status == 200
    assert reply.body == b"p" * 5000


def test_unconfigured_bucket_is_refused_by_default(
    shim: ShimProcess, s3rver: S3Server, bucket: S3Client
) -> None:
    put_object(bucket, "other-bucket", "model.mar", b"secret")
    reply = via_proxy(shim.proxy_port, object_url(s3rver.endpoint, "model.mar", "other-bucket"))
    assert reply.status == 403
    assert reply.headers["X-Shim-Error"] == "passthrough"
    assert b"passthrough" in reply.body
    assert "X-Shim-Cache" not in reply.headers


def test_missing_object_passes_the_origin_status_through(
    shim: ShimProcess, s3rver: S3Server, bucket: S3Client
) -> None:
    reply = via_proxy(shim.proxy_port, object_url(s3rver.endpoint, "does/not/exist.mar"))
    assert reply.status == 404
    assert b"NoSuchKey" in reply.body
    assert not any("exist" in str(p) for p in cache_files(shim))


def test_unsupported_query_parameter_is_refused(shim: ShimProcess, s3rver: S3Server) -> None:
    reply = via_proxy(shim.proxy_port, object_url(s3rver.endpoint, "a.mar") + "?acl")
    assert reply.status == 400
    assert reply.headers["X-Shim-Error"] == "request"
    assert b"'acl'" in reply.body


def test_head_is_signed_and_later_answered_from_cache(
    shim: ShimProcess, s3rver: S3Server, bucket: S3Client
) -> None:
    body = os.urandom(12_345)
    put_object(bucket, BUCKET, "head.bin", body)
    url = object_url(s3rver.endpoint, "head.bin")
    miss = via_proxy(shim.proxy_port, url, method="HEAD")
    assert (miss.status, miss.headers["Content-Length"], miss.body) == (200, "12345", b"")
    assert miss.headers["X-Shim-Cache"] == "MISS"
    via_proxy(shim.proxy_port, url)
    hit = via_proxy(shim.proxy_port, url, method="HEAD")
    assert (hit.status, hit.headers["Content-Length"]) == (200, "12345")
    assert hit.headers["X-Shim-Cache"] == "HIT"
    assert hit.headers["ETag"] == miss.headers["ETag"]


# -- the cache ----


def test_hit_is_served_with_the_origin_stopped(tmp_path: Path, s3rver: S3Server) -> None:
    with start_s3rver(tmp_path / "origin") as origin:
        body = os.urandom(3 * 1024 * 1024)
        put_object(s3_client(origin), BUCKET, "model.mar", body)
        config = {"buckets": [s3_bucket_config(BUCKET, origin.endpoint)]}
        with start_shim(tmp_path / "shim", config) as shim:
            url = object_url(origin.endpoint, "model.mar")
            first = via_proxy(shim.proxy_port, url)
            assert (first.status, first.headers["X-Shim-Cache"]) == (200, "MISS")
            origin.stop()
            with pytest.raises(ConnectionRefusedError):
                direct(url)
            for ca in (None, shim.ca_cert):
                target = url if ca is None else url.replace("http://", "https://")
                again = via_proxy(shim.proxy_port, target, ca_cert=ca)
                assert again.status == 200
                assert again.headers["X-Shim-Cache"] == "HIT"
                assert again.headers["X-Shim-Task-Id"] == first.headers["X-Shim-Task-Id"]
                assert again.body == body
            metrics = shim.metrics()
            assert metrics["shim_cache_hits_total"] == 2
            assert metrics["shim_cache_misses_total"] == 1
            assert metrics["shim_origin_bytes_total"] == len(body)


def test_concurrent_cold_downloads_cost_one_origin_fetch(
    tmp_path: Path, s3rver: S3Server, bucket: S3Client, relay_factory: RelayFactory
) -> None:
    body = os.urandom(24 * 1024 * 1024)
    put_object(bucket, BUCKET, "popular.mar", body)
    # Slow the origin to ~40 MB/s so all eight requests overlap one fetch.
    relay = relay_factory(s3rver.host, s3rver.port, rate_limit_bytes_per_s=40e6)
    config = {"buckets": [s3_bucket_config(BUCKET, relay.endpoint)]}
    with start_shim(tmp_path / "shim", config) as shim:
        url = object_url(relay.endpoint, "popular.mar")
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda _: via_proxy(shim.proxy_port, url), range(8)))
        digest = hashlib.sha256(body).hexdigest()
        assert [r.status for r in replies] == [200] * 8
        assert {hashlib.sha256(r.body).hexdigest() for r in replies} == {digest}
        assert [r.headers["X-Shim-Cache"] for r in replies] == ["MISS"] * 8
        assert relay.connections == 1
        assert len(body) <= relay.bytes_down < len(body) + 4096
        assert shim.metrics()["shim_origin_fetches_total"] == 1


def test_origin_cut_mid_body_fails_the_transfer_and_caches_nothing(
    tmp_path: Path, s3rver: S3Server, bucket: S3Client, relay_factory: RelayFactory
) -> None:
    body = os.urandom(4 * 1024 * 1024)
    put_object(bucket, BUCKET, "cut.mar", body)
    relay = relay_factory(s3rver.host, s3rver.port, cut_after_bytes=len(body) // 2)
    # Room for one copy only: space held for the failed fill must come back.
    config = {
        "cache": {"max_size": "6MiB"},
        "buckets": [s3_bucket_config(BUCKET, relay.endpoint)],
    }
    with start_shim(tmp_path / "shim", config) as shim:
        url = object_url(relay.endpoint, "cut.mar")
        with pytest.raises((http.client.IncompleteRead, ConnectionError)):
            via_proxy(shim.proxy_port, url)
        assert cache_files(shim) == []
        assert list((shim.cache_dir / "tmp").iterdir()) == []
        relay.cut_after_bytes = None
        whole = via_proxy(shim.proxy_port, url)
        assert (whole.status, whole.headers["X-Shim-Cache"]) == (200, "MISS")
        assert whole.body == body
        assert via_proxy(shim.proxy_port, url).headers["X-Shim-Cache"] == "HIT"


def test_client_accept_encoding_never_reaches_the_origin(
    tmp_path: Path, s3rver: S3Server, bucket: S3Client, relay_factory: RelayFactory
) -> None:
    body = b"compressible " * 10_000
    put_object(bucket, BUCKET, "text.bin", body)
    relay = relay_factory(s3rver.host, s3rver.port)
    config = {"buckets": [s3_bucket_config(BUCKET, relay.endpoint)]}
    with start_shim(tmp_path / "shim", config) as shim:
        url = object_url(relay.endpoint, "text.bin")
        first = via_proxy(shim.proxy_port, url, headers={"Accept-Encoding": "gzip, br"})
        second = via_proxy(shim.proxy_port, url)
        assert first.body == second.body == body
        assert "Content-Encoding" not in second.headers
        (head,) = relay.request_heads
        assert b"\r\nAccept-Encoding: identity\r\n" in head
        assert b"gzip" not in head


# -- ranges ----


@pytest.mark.parametrize("https", [False, True], ids=["http", "https"])
def test_ranges_are_served_on_miss_and_from_cache(
    shim: ShimProcess, s3rver: S3Server, bucket: S3Client, https: bool
) -> None:
    key = f"ranged-{https}.bin"
    body = os.urandom(1_000_000)
    put_object(bucket, BUCKET, key, body)
    url = object_url(s3rver.endpoint, key)
    if https:
        url = url.replace("http://", "https://")
    ca = shim.ca_cert if https else None
    for state in ("MISS", "HIT"):
        reply = via_proxy(shim.proxy_port, url, headers={"Range": "bytes=1000-1999"}, ca_cert=ca)
        assert (reply.status, reply.headers["X-Shim-Cache"]) == (206, state)
        assert reply.headers["Content-Range"] == "bytes 1000-1999/1000000"
        assert reply.body == body[1000:2000]
        # The whole object, once the fill that the range joined has ended.
        assert via_proxy(shim.proxy_port, url, ca_cert=ca).body == body
    suffix = via_proxy(shim.proxy_port, url, headers={"Range": "bytes=-10"}, ca_cert=ca)
    assert (suffix.status, suffix.body) == (206, body[-10:])
    past = via_proxy(shim.proxy_port, url, headers={"Range": "bytes=2000000-"}, ca_cert=ca)
    assert past.status == 416
    assert past.headers["Content-Range"] == "bytes */1000000"


# -- https through CONNECT ----


def test_https_through_connect_with_the_shim_ca(
    shim: ShimProcess, s3rver: S3Server, bucket: S3Client
) -> None:
    body = os.urandom(200_000)
    put_object(bucket, BUCKET, "tls.mar", body)
    url = object_url(s3rver.endpoint, "tls.mar").replace("http://", "https://")
    reply = via_proxy(shim.proxy_port, url, ca_cert=shim.ca_cert)
    assert (reply.status, reply.body) == (200, body)
    with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
        via_proxy(shim.proxy_port, url)  # without the shim's CA the client must refuse


# -- integrity and stalls ----


def test_body_corrupted_in_transit_fails_the_etag_check_and_caches_nothing(
    tmp_path: Path, s3rver: S3Server, bucket: S3Client, relay_factory: RelayFactory
) -> None:
    body = os.urandom(2 * 1024 * 1024)
    put_object(bucket, BUCKET, "corrupt.mar", body)  # single-part: the ETag is the body's MD5
    relay = relay_factory(s3rver.host, s3rver.port)
    relay.corrupt_at_byte = 1024 * 1024  # well past the response head
    config = {"buckets": [s3_bucket_config(BUCKET, relay.endpoint)]}
    with start_shim(tmp_path / "shim", config) as shim:
        url = object_url(relay.endpoint, "corrupt.mar")
        with pytest.raises((http.client.IncompleteRead, ConnectionError)):
            via_proxy(shim.proxy_port, url)
        assert cache_files(shim) == []
        assert shim.metrics()['shim_errors_total{kind="origin"}'] == 1
        relay.corrupt_at_byte = None
        assert via_proxy(shim.proxy_port, url).body == body


def test_stalled_origin_times_out_and_caches_nothing(
    tmp_path: Path, s3rver: S3Server, bucket: S3Client, relay_factory: RelayFactory
) -> None:
    body = os.urandom(1024 * 1024)
    put_object(bucket, BUCKET, "stall.mar", body)
    relay = relay_factory(s3rver.host, s3rver.port)
    relay.stall_after_bytes = 300_000
    config = {"origin_timeout": 1.0, "buckets": [s3_bucket_config(BUCKET, relay.endpoint)]}
    with start_shim(tmp_path / "shim", config) as shim:
        url = object_url(relay.endpoint, "stall.mar")
        with pytest.raises((http.client.IncompleteRead, ConnectionError)):
            via_proxy(shim.proxy_port, url, timeout=20)
        assert cache_files(shim) == []
        assert "origin stalled after" in shim.output()


# -- http upgraded to https towards the origin ----


def test_plain_http_client_url_is_fetched_over_https(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    with start_s3rver(tmp_path / "origin", tls=(pki.server_cert, pki.server_key)) as origin:
        assert origin.endpoint.startswith("https://")
        body = os.urandom(300_000)
        put_object(s3_client(origin, ca_bundle=pki.ca_cert), BUCKET, "tls-origin.mar", body)
        plain_url = object_url(origin.endpoint.replace("https://", "http://"), "tls-origin.mar")
        with pytest.raises(http.client.RemoteDisconnected):
            direct(plain_url)  # the origin speaks TLS only
        config = {"buckets": [s3_bucket_config(BUCKET, origin.endpoint)]}
        # The shim trusts the test CA the way any OpenSSL client does; the client needs none.
        env = {"SSL_CERT_FILE": str(pki.ca_cert)}
        with start_shim(tmp_path / "shim", config, env=env) as shim:
            reply = via_proxy(shim.proxy_port, plain_url)
            assert (reply.status, reply.body) == (200, body)


# -- the size cap ----


def test_size_cap_evicts_the_least_recently_used_entry(
    tmp_path: Path, s3rver: S3Server, bucket: S3Client
) -> None:
    bodies = {key: os.urandom(1024 * 1024) for key in ("lru-a", "lru-b", "lru-c")}
    for key, body in bodies.items():
        put_object(bucket, BUCKET, key, body)
    config = {
        "cache": {"max_size": "2500KiB"},  # room for two of the three
        "buckets": [s3_bucket_config(BUCKET, s3rver.endpoint)],
    }
    with start_shim(tmp_path / "shim", config) as shim:

        def fetch(key: str) -> Reply:
            return via_proxy(shim.proxy_port, object_url(s3rver.endpoint, key))

        assert fetch("lru-a").headers["X-Shim-Cache"] == "MISS"
        assert fetch("lru-b").headers["X-Shim-Cache"] == "MISS"
        assert fetch("lru-a").headers["X-Shim-Cache"] == "HIT"  # a is now the most recent
        third = fetch("lru-c")  # evicts b, the least recently used
        assert (third.headers["X-Shim-Cache"], third.body) == ("MISS", bodies["lru-c"])
        assert fetch("lru-a").headers["X-Shim-Cache"] == "HIT"
        assert fetch("lru-b").headers["X-Shim-Cache"] == "MISS"
        assert shim.metrics()["shim_cache_bytes"] <= 2500 * 1024


def test_an_entry_deleted_behind_the_shims_back_is_fetched_again(
    shim: ShimProcess, s3rver: S3Server, bucket: S3Client
) -> None:
    body = os.urandom(300_000)
    put_object(bucket, BUCKET, "deleted.mar", body)
    url = object_url(s3rver.endpoint, "deleted.mar")
    first = via_proxy(shim.proxy_port, url)
    data = shim.cache_dir / "objects" / first.headers["X-Shim-Task-Id"][:2]
    (data / first.headers["X-Shim-Task-Id"]).unlink()
    for ca in (None, shim.ca_cert):  # the zero-copy path, then the streamed one
        target = url if ca is None else url.replace("http://", "https://")
        again = via_proxy(shim.proxy_port, target, ca_cert=ca)
        assert (again.status, again.body) == (200, body)
    assert via_proxy(shim.proxy_port, url).headers["X-Shim-Cache"] == "HIT"
