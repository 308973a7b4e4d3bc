"""Freshness through the real ``shim run``: an object overwritten or deleted at the strict
store is seen as the bucket's ``revalidate`` policy says, and revalidation costs the origin one
request however many clients ask. The origin sits behind a relay that counts what it is sent.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from shim.taskid import rust_task_id
from tests.support.dragonfly import require_dragonfly
from tests.support.http import Reply, via_proxy
from tests.support.p2p import Cluster, start_cluster
from tests.support.relay import Relay
from tests.support.servers import S3Server, put_object, s3_client
from tests.support.shim_process import ShimProcess, s3_bucket_config, start_shim
from tests.support.stores import ORIGINS, Origin

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

pytestmark = pytest.mark.slow

BUCKET = "fresh"
PERIOD = 1.5  # seconds: the short revalidation period of these tests


@pytest.fixture(scope="module")
def relay(s3rver: S3Server) -> Iterator[Relay]:
    with Relay(s3rver.host, s3rver.port) as relay:
        yield relay


@pytest.fixture(scope="module")
def bucket(s3rver: S3Server) -> S3Client:
    client = s3_client(s3rver)
    put_object(client, BUCKET, "seed", b"seed")
    return client


def s3_shim(tmp_path: Path, relay: Relay, **bucket: Any) -> ShimProcess:
    config = {"buckets": [{**s3_bucket_config(BUCKET, relay.endpoint), **bucket}]}
    return start_shim(tmp_path / "shim", config)


def entries(shim: ShimProcess) -> list[Path]:
    return sorted(p for p in (shim.cache_dir / "objects").glob("*/*") if p.suffix != ".json")


def get(shim: ShimProcess, url: str, method: str = "GET") -> Reply:
    return via_proxy(shim.proxy_port, url, method=method)


def revalidations(shim: ShimProcess, result: str) -> float:
    return shim.metrics().get(f'shim_revalidations_total{{result="{result}"}}', 0.0)


def test_an_overwrite_is_seen_after_the_period_and_not_before(
    tmp_path: Path, relay: Relay, bucket: S3Client
) -> None:
    v1, v2 = os.urandom(300_000), os.urandom(200_000)
    put_object(bucket, BUCKET, "model.mar", v1)
    url = f"{relay.endpoint}/{BUCKET}/model.mar"
    with s3_shim(tmp_path, relay, revalidate=f"{PERIOD}s") as shim:
        assert get(shim, url).body == v1
        put_object(bucket, BUCKET, "model.mar", v2)
        # Within the period, v1, by design: a hit costs the origin nothing.
        relay.reset_counters()
        within = get(shim, url)
        assert (within.body, within.headers["X-Shim-Cache"]) == (v1, "HIT")
        assert relay.bytes_up == 0
        time.sleep(PERIOD + 0.2)
        after = get(shim, url)
        assert (after.status, after.body) == (200, v2)
        assert after.headers["X-Shim-Cache"] == "MISS"
        # The revalidation's own answer became the fill: one request, one copy of v2.
        assert len(v2) <= relay.bytes_down < len(v2) + 16 * 1024
        assert revalidations(shim, "changed") == 1
        again = get(shim, url)
        assert (again.body, again.headers["X-Shim-Cache"]) == (v2, "HIT")
        assert len(entries(shim)) == 1
        # Unchanged after another period: a 304, and the entry serves on.
        time.sleep(PERIOD + 0.2)
        relay.reset_counters()
        checked = get(shim, url)
        assert (checked.body, checked.headers["X-Shim-Cache"]) == (v2, "HIT")
        assert revalidations(shim, "fresh") == 1
        assert relay.bytes_down < 4096  # a 304, no body
        assert "changed at the origin" in shim.output()


def test_revalidate_always_sees_an_overwrite_at_once(
    tmp_path: Path, relay: Relay, bucket: S3Client
) -> None:
    v1, v2 = os.urandom(100_000), os.urandom(100_001)
    put_object(bucket, BUCKET, "always.mar", v1)
    url = f"{relay.endpoint}/{BUCKET}/always.mar"
    with s3_shim(tmp_path, relay, revalidate="always") as shim:
        assert get(shim, url).body == v1
        hit = get(shim, url)
        assert (hit.body, hit.headers["X-Shim-Cache"]) == (v1, "HIT")
        assert revalidations(shim, "fresh") == 1
        head = get(shim, url, method="HEAD")  # a HEAD is checked with a signed HEAD
        assert (head.status, head.headers["Content-Length"]) == (200, str(len(v1)))
        assert revalidations(shim, "fresh") == 2
        put_object(bucket, BUCKET, "always.mar", v2)
        assert get(shim, url).body == v2
        assert get(shim, url).body == v2
        assert revalidations(shim, "changed") == 1


def test_a_deleted_object_is_404_and_leaves_the_cache(
    tmp_path: Path, relay: Relay, bucket: S3Client
) -> None:
    put_object(bucket, BUCKET, "deleted.mar", b"soon gone")
    url = f"{relay.endpoint}/{BUCKET}/deleted.mar"
    with s3_shim(tmp_path, relay, revalidate="always") as shim:
        assert get(shim, url).body == b"soon gone"
        assert len(entries(shim)) == 1
        bucket.delete_object(Bucket=BUCKET, Key="deleted.mar")
        gone = get(shim, url)
        assert gone.status == 404
        assert b"NoSuchKey" in gone.body
        assert gone.headers["X-Shim-Error"] == "origin_status"
        assert entries(shim) == []
        assert revalidations(shim, "gone") == 1
        assert get(shim, url).status == 404


def test_concurrent_revalidations_are_one_origin_request(
    tmp_path: Path, relay: Relay, bucket: S3Client
) -> None:
    body = os.urandom(50_000)
    put_object(bucket, BUCKET, "hot.mar", body)
    url = f"{relay.endpoint}/{BUCKET}/hot.mar"
    with s3_shim(tmp_path, relay, revalidate=f"{PERIOD}s") as shim:
        assert get(shim, url).body == body
        time.sleep(PERIOD + 0.2)
        relay.reset_counters()
        assert get(shim, url).body == body
        one_request = relay.bytes_up  # the conditional GET (its signed URL is reused)
        assert revalidations(shim, "fresh") == 1
        time.sleep(PERIOD + 0.2)
        relay.reset_counters()
        relay.rate_limit_bytes_per_s = 2000  # a slow 304: every client arrives while it runs
        try:
            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                replies = list(pool.map(lambda _: get(shim, url), range(16)))
        finally:
            relay.rate_limit_bytes_per_s = None
        assert [(r.status, r.body) for r in replies] == [(200, body)] * 16
        assert revalidations(shim, "fresh") == 2
        assert 0 < relay.bytes_up == one_request  # one request on the wire for 16 clients


def test_an_unreachable_origin_serves_the_stored_copy(
    tmp_path: Path, s3rver: S3Server, bucket: S3Client
) -> None:
    put_object(bucket, BUCKET, "outage.mar", b"still here")
    with (
        Relay(s3rver.host, s3rver.port) as relay,
        s3_shim(tmp_path, relay, revalidate="always") as shim,
    ):
        url = f"{relay.endpoint}/{BUCKET}/outage.mar"
        assert get(shim, url).body == b"still here"
        relay.stop()  # the origin is unreachable now
        stale = get(shim, url)
        assert (stale.status, stale.body, stale.headers["X-Shim-Cache"]) == (
            200,
            b"still here",
            "HIT",
        )
        assert revalidations(shim, "error") == 1
        assert "without revalidation: the origin is unreachable" in shim.output()


def test_a_silent_origin_holds_a_hit_for_seconds_not_forever(
    tmp_path: Path, s3rver: S3Server, bucket: S3Client
) -> None:
    put_object(bucket, BUCKET, "silent.mar", b"still here")
    with (
        Relay(s3rver.host, s3rver.port) as relay,
        s3_shim(tmp_path, relay, revalidate="always") as shim,
    ):
        url = f"{relay.endpoint}/{BUCKET}/silent.mar"
        assert get(shim, url).body == b"still here"
        relay.stall_after_bytes = 0  # the origin accepts the check and never answers
        try:
            start = time.monotonic()
            stale = get(shim, url)
            waited = time.monotonic() - start
        finally:
            relay.resume()
        assert (stale.status, stale.body, stale.headers["X-Shim-Cache"]) == (
            200,
            b"still here",
            "HIT",
        )
        assert 4.5 < waited < 15  # shim's answer wait (5 s), not the origin's timeouts
        assert "no answer from the origin in 5 s" in shim.output()


@pytest.mark.parametrize("keep_uncacheable", [False, True])
@pytest.mark.parametrize("cache_control", ["no-store", "private, max-age=60"])
def test_uncacheable_answers_are_not_kept_unless_asked(
    tmp_path: Path, relay: Relay, bucket: S3Client, cache_control: str, keep_uncacheable: bool
) -> None:
    key = f"uncacheable-{cache_control[:7]}-{keep_uncacheable}.mar"
    bucket.put_object(Bucket=BUCKET, Key=key, Body=b"careful", CacheControl=cache_control)
    url = f"{relay.endpoint}/{BUCKET}/{key}"
    with s3_shim(tmp_path, relay, keep_uncacheable=keep_uncacheable) as shim:
        first = get(shim, url)
        assert (first.body, first.headers["Cache-Control"]) == (b"careful", cache_control)
        second = get(shim, url)
        assert second.body == b"careful"
        assert second.headers["X-Shim-Cache"] == ("HIT" if keep_uncacheable else "MISS")
        assert len(entries(shim)) == (1 if keep_uncacheable else 0)


@pytest.fixture(scope="module", params=sorted(ORIGINS))
def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Origin]:
    """Every other store's origin (azurite, the GCS and OSS verifying gateways, OBS URLs on
    s3rver), behind its counting relay."""
    with ORIGINS[request.param](tmp_path_factory.mktemp(request.param)) as origin:
        yield origin


def test_every_store_sees_an_overwrite_after_the_period(tmp_path: Path, store: Origin) -> None:
    v1, v2 = os.urandom(120_000), os.urandom(120_000)
    store.put("fresh.mar", v1)
    url = store.url("fresh.mar")
    config = {"buckets": [{**store.buckets[0], "revalidate": {"after": f"{PERIOD}s"}}]}
    with start_shim(tmp_path / "shim", config) as shim:
        assert get(shim, url).body == v1
        store.put("fresh.mar", v2)
        assert get(shim, url).body == v1  # within the period
        time.sleep(PERIOD + 0.2)
        store.relay.reset_counters()
        assert get(shim, url).body == v2
        assert len(v2) <= store.relay.bytes_down < len(v2) + 16 * 1024  # one copy of v2
        assert get(shim, url).headers["X-Shim-Cache"] == "HIT"
        time.sleep(PERIOD + 0.2)
        store.relay.reset_counters()
        assert get(shim, url).body == v2
        if store.provider in ("azure", "obs"):  # real servers: a 304, no body
            assert store.relay.bytes_down < 4096
        # The GCS and OSS gateways ignore If-None-Match (the real stores honour it): their
        # 200 carries the stored ETag, which is "fresh" too, its body dropped unread.
        assert (revalidations(shim, "changed"), revalidations(shim, "fresh")) == (1, 1)


# -- through real Dragonfly: the ETag in the task's tag --------------------------------------

P2P_BUCKET = "p2p-fresh"


@pytest.fixture(scope="module")
def p2p(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Two nodes, each a Rust dfdaemon and a shim with a short revalidation period."""
    require_dragonfly()
    with start_cluster(
        tmp_path_factory.mktemp("p2p-fresh"), P2P_BUCKET, revalidate=PERIOD
    ) as cluster:
        yield cluster


def etag_tag(body: bytes) -> str:
    return f';etag="{hashlib.md5(body).hexdigest()}"'  # s3rver's ETag: the body's MD5


@pytest.mark.dragonfly
def test_two_nodes_see_an_overwrite_as_a_new_task_fetched_once(p2p: Cluster) -> None:
    v1, v2 = os.urandom(6 * 1024 * 1024), os.urandom(6 * 1024 * 1024)
    client = s3_client(p2p.origin)
    put_object(client, P2P_BUCKET, "model.mar", v1)
    url = p2p.url("model.mar")
    first = [get(node, url) for node in (p2p.a.shim, p2p.b.shim)]
    assert [(r.status, r.body, r.headers["X-Shim-Route"]) for r in first] == [
        (200, v1, "dfdaemon")
    ] * 2
    v1_task = rust_task_id(url, tag=etag_tag(v1))
    assert {r.headers["X-Shim-Task-Id"] for r in first} == {v1_task}

    put_object(client, P2P_BUCKET, "model.mar", v2)
    # Within the period the task is still v1's, on every node, by design.
    assert get(p2p.a.shim, url).body == v1
    time.sleep(PERIOD + 0.2)
    p2p.relay.reset_counters()
    second = [get(node, url) for node in (p2p.a.shim, p2p.b.shim)]
    assert [(r.status, r.body) for r in second] == [(200, v2)] * 2
    v2_task = rust_task_id(url, tag=etag_tag(v2))
    assert {r.headers["X-Shim-Task-Id"] for r in second} == {v2_task} != {v1_task}
    # The origin served v2 once: each node's 1-byte check and the dfdaemons' size probe
    # besides, never a second copy from a peer that asked the origin again.
    assert len(v2) <= p2p.relay.bytes_down < len(v2) + 64 * 1024
    for node in (p2p.a.shim, p2p.b.shim):
        assert node.metrics()['shim_revalidations_total{result="changed"}'] == 1
        assert node.metrics()["shim_cache_entries"] == 0  # the dfdaemon caches, not shim


# -- through a real TorchServe -----------------------------------------------------------------


@pytest.mark.torchserve
def test_torchserve_registers_the_overwritten_archive(
    tmp_path: Path, relay: Relay, bucket: S3Client
) -> None:
    from tests.support.torchserve import (
        build_echo_archive,
        echo_reply,
        java_tool_options_from_shim_env,
        require_torchserve,
        start_torchserve,
    )

    require_torchserve()
    # Two versions of one model archive: the same handler, different weights riding along.
    archives = []
    for version in (1, 2):
        weights = tmp_path / f"weights-{version}" / "weights.bin"
        weights.parent.mkdir()
        weights.write_bytes(os.urandom(256 * 1024))
        archive = build_echo_archive(tmp_path / f"v{version}", extra_files=[weights])
        archives.append(archive.read_bytes())
    v1, v2 = archives
    put_object(bucket, BUCKET, "echo.mar", v1)
    url = f"{relay.endpoint}/{BUCKET}/echo.mar"
    with (
        s3_shim(tmp_path, relay, revalidate=f"{PERIOD}s") as shim,
        start_torchserve(
            tmp_path / "ts", java_tool_options=java_tool_options_from_shim_env(shim.proxy_port)
        ) as ts,
    ):
        status, text = ts.register(url)
        assert status == 200, text
        assert (ts.model_store / "echo.mar").read_bytes() == v1
        assert ts.unregister("echo")[0] == 200
        put_object(bucket, BUCKET, "echo.mar", v2)
        time.sleep(PERIOD + 0.2)
        status, text = ts.register(url)
        assert status == 200, text
        assert (ts.model_store / "echo.mar").read_bytes() == v2
        assert ts.scale("echo")[0] == 200
        assert ts.predict("echo", b"v2") == (200, echo_reply(b"v2"))
        assert revalidations(shim, "changed") == 1
