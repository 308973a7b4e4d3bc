"""Through real Dragonfly: a scheduler and Rust dfdaemons on loopback, one per "node", each node
with its own shim. The origin is a strict s3rver behind a relay that counts what it serves.

The dfdaemons are given no proxy rule: only shim's `X-Dragonfly-Use-P2P: true` puts a request
on the P2P network, and only its filter headers make re-signed URLs one task.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shim.taskid import rust_task_id
from tests.support.dragonfly import require_dragonfly, start_dfdaemon
from tests.support.http import via_proxy
from tests.support.p2p import Cluster, start_cluster
from tests.support.procs import free_port, terminate
from tests.support.servers import REPO_ROOT, put_object, s3_client
from tests.support.shim_process import s3_bucket_config, start_shim

pytestmark = [pytest.mark.slow, pytest.mark.dragonfly]
require_dragonfly()

BUCKET = "p2p"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with start_cluster(tmp_path_factory.mktemp("p2p"), BUCKET) as cluster:
        yield cluster


def test_two_nodes_share_one_origin_fetch_and_one_task(cluster: Cluster) -> None:
    body = os.urandom(12 * 1024 * 1024)
    put_object(s3_client(cluster.origin), BUCKET, "model v1.mar", body)
    url = cluster.url("model%20v1.mar")
    cluster.relay.reset_counters()
    before = cluster.b.shim.metrics()
    first = via_proxy(cluster.a.shim.proxy_port, url)
    assert (first.status, first.headers["X-Shim-Route"]) == (200, "dfdaemon")
    assert first.body == body
    origin_bytes = cluster.relay.bytes_down
    assert len(body) <= origin_bytes < len(body) + 64 * 1024
    second = via_proxy(cluster.b.shim.proxy_port, url)
    assert (second.status, second.headers["X-Shim-Route"]) == (200, "dfdaemon")
    assert second.body == body
    # One Dragonfly task for both signatures, and the object came from node A: the origin
    # only answered node B's size probe (a one-byte range), not the object again.
    assert second.headers["X-Shim-Task-Id"] == first.headers["X-Shim-Task-Id"]
    assert cluster.relay.bytes_down - origin_bytes < 4096
    # shim's own computation agrees with this dfdaemon's, for the tag that names the version
    # (the object's ETag; see the README's Freshness).
    assert first.headers["X-Shim-Task-Id"] == rust_task_id(
        url, tag=f";etag={first.headers['ETag']}"
    )
    # Nothing kept twice: the dfdaemon caches, the shim's own cache stays empty.
    assert cluster.a.shim.metrics()["shim_cache_entries"] == 0
    for node in (cluster.a, cluster.b):
        assert list((node.shim.cache_dir / "tmp").iterdir()) == []
    task = first.headers["X-Shim-Task-Id"]
    assert cluster.a.shim.metrics()[f'shim_dfdaemon_tasks_total{{task_id="{task}"}}'] == 1
    # Node B's bytes came through its dfdaemon (P2P), none from the origin directly.
    after = cluster.b.shim.metrics()
    received = {
        name: after[name] - before[name]
        for name in ("shim_dfdaemon_bytes_total", "shim_origin_bytes_total")
    }
    assert received == {"shim_dfdaemon_bytes_total": len(body), "shim_origin_bytes_total": 0}


def test_the_same_node_twice_is_a_local_hit(cluster: Cluster) -> None:
    """Node A's dfdaemon hard-links the task into shim's link_dir and shim sends that file;
    node B's streams it through its proxy. Same bytes, and no link is left behind."""
    body = os.urandom(9 * 1024 * 1024)  # several 4 MiB pieces; more than one check step
    put_object(s3_client(cluster.origin), BUCKET, "local.mar", body)
    url = cluster.url("local.mar")
    for node in (cluster.a, cluster.b):
        assert via_proxy(node.shim.proxy_port, url).body == body
    linked = 'shim_dfdaemon_requests_total{result="linked"}'
    before = cluster.a.shim.metrics()
    cluster.relay.reset_counters()
    for node in (cluster.a, cluster.b):
        again = via_proxy(node.shim.proxy_port, url)
        assert (again.status, again.body) == (200, body)
        assert again.headers["X-Shim-Route"] == "dfdaemon"
        # A range of a local hit, from the linked file too.
        part = via_proxy(node.shim.proxy_port, url, headers={"Range": "bytes=5000000-5000999"})
        assert (part.status, part.body) == (206, body[5000000:5001000])
    assert cluster.relay.bytes_down < 4 * 4096  # at most size probes
    after_a, after_b = cluster.a.shim.metrics(), cluster.b.shim.metrics()
    assert after_a.get(linked, 0) - before.get(linked, 0) == 2
    assert after_b.get(linked, 0) == 0
    # Every linked body was checked against shim's record of this version.
    verified = 'shim_integrity_total{kind="blake3",result="verified"}'
    assert after_a[verified] - before.get(verified, 0) == 2
    links = cluster.a.shim.workdir.parent / "links-a"
    assert links.is_dir() and list(links.iterdir()) == []
    assert links.stat().st_mode & 0o077 == 0


def test_a_link_dir_the_dfdaemon_cannot_link_into_is_left_after_one_try(
    cluster: Cluster, tmp_path: Path
) -> None:
    """On another filesystem than the dfdaemon's storage (/dev/shm is tmpfs) the hard link
    fails: the request is sent again without it, served, and linking is off from then on."""
    body = os.urandom(2 * 1024 * 1024)
    put_object(s3_client(cluster.origin), BUCKET, "elsewhere.mar", body)
    url = cluster.url("elsewhere.mar")
    elsewhere = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="shim-links-"))
    route = {"url": cluster.a.dfdaemon.proxy_url, "fallback": False, "link_dir": str(elsewhere)}
    config = {"dfdaemon": route, "buckets": [s3_bucket_config(BUCKET, cluster.relay.endpoint)]}
    try:
        storage = cluster.a.dfdaemon.storage_dir
        assert elsewhere.stat().st_dev != storage.stat().st_dev, "/dev/shm is no other filesystem"
        with start_shim(tmp_path / "elsewhere", config) as shim:
            for _ in range(3):
                reply = via_proxy(shim.proxy_port, url)
                assert (reply.status, reply.body) == (200, body)
            metrics = shim.metrics()
            assert metrics['shim_dfdaemon_requests_total{result="ok"}'] == 3
            assert metrics.get('shim_dfdaemon_requests_total{result="linked"}', 0) == 0
            assert shim.output().count("cannot hard-link into") == 1
            assert list(elsewhere.iterdir()) == []
    finally:
        shutil.rmtree(elsewhere, ignore_errors=True)


def test_an_origin_error_passes_through_the_dfdaemon(cluster: Cluster) -> None:
    reply = via_proxy(cluster.a.shim.proxy_port, cluster.url("absent.mar"))
    assert reply.status == 404


def test_stopped_dfdaemon_falls_back_or_fails_clearly(cluster: Cluster, tmp_path: Path) -> None:
    body = os.urandom(1024 * 1024)
    put_object(s3_client(cluster.origin), BUCKET, "fallback.mar", body)
    bucket = s3_bucket_config(BUCKET, cluster.relay.endpoint)
    with (
        start_dfdaemon(tmp_path / "dfc", name="node-c", scheduler=cluster.scheduler) as dfc,
        start_shim(tmp_path / "on", {"dfdaemon": dfc.proxy_url, "buckets": [bucket]}) as on,
        start_shim(
            tmp_path / "off",
            {"dfdaemon": {"url": dfc.proxy_url, "fallback": False}, "buckets": [bucket]},
        ) as off,
    ):
        dfc.stop()
        url = cluster.url("fallback.mar")
        fell_back = via_proxy(on.proxy_port, url)
        assert (fell_back.status, fell_back.body) == (200, body)
        assert fell_back.headers["X-Shim-Route"] == "fallback"
        assert on.metrics()['shim_dfdaemon_requests_total{result="fallback"}'] == 1
        failed = via_proxy(off.proxy_port, url)
        assert failed.status == 502
        assert b"dfdaemon unreachable" in failed.body
        assert b"fallback to the origin is off" in failed.body


@pytest.mark.torchserve
def test_torchserve_registers_a_model_through_shim_and_dfdaemon(
    cluster: Cluster, tmp_path: Path
) -> None:
    from tests.support.torchserve import (
        build_echo_archive,
        require_torchserve,
        serve_echo_through_shim,
    )

    require_torchserve()
    archive = build_echo_archive(tmp_path / "archives").read_bytes()
    put_object(s3_client(cluster.origin), BUCKET, "echo.mar", archive)
    before = cluster.b.shim.metrics()
    url = cluster.url("echo.mar")
    serve_echo_through_shim(tmp_path / "ts", cluster.b.shim.proxy_port, url, archive, b"p2p")
    after = cluster.b.shim.metrics()
    ok = 'shim_dfdaemon_requests_total{result="ok"}'
    assert after[ok] - before.get(ok, 0) == 1


def test_the_configured_tag_reaches_the_dfdaemon_and_names_another_task(
    cluster: Cluster, tmp_path: Path
) -> None:
    body = os.urandom(512 * 1024)
    put_object(s3_client(cluster.origin), BUCKET, "tagged.mar", body)
    config = {
        "dfdaemon": {"url": cluster.a.dfdaemon.proxy_url, "tag": "models-v2"},
        "buckets": [s3_bucket_config(BUCKET, cluster.relay.endpoint)],
    }
    url = cluster.url("tagged.mar")
    with start_shim(tmp_path / "tagged", config) as tagged:
        reply = via_proxy(tagged.proxy_port, url)
    assert (reply.status, reply.body) == (200, body)
    etag = reply.headers["ETag"]
    assert reply.headers["X-Shim-Task-Id"] == rust_task_id(url, tag=f"models-v2;etag={etag}")
    assert reply.headers["X-Shim-Task-Id"] != rust_task_id(url, tag=f";etag={etag}")


@pytest.fixture(scope="module")
def file_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A plain file server (Range-capable, ignores query strings): any query names one file."""
    root = tmp_path_factory.mktemp("files")
    (root / "f.bin").write_bytes(os.urandom(64 * 1024))
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "bench" / "fileserver.py"), str(root), str(port)]
    )
    try:
        _wait_for_port(port)
        yield f"http://127.0.0.1:{port}/f.bin"
    finally:
        terminate(server, 10)


@pytest.mark.parametrize(
    ("query", "filtered", "tag"),
    [
        ("sig=1&exp=2&keep=3", ["sig"], ""),
        ("b=a%20b&a=x%2By&c=%E4%B8%AD&sig=9", ["sig"], ""),
        ("b=2&a=1&b=1&sig=0", ["sig"], "models-v2"),
        ("a=1;x&b=2&sig=1", ["sig"], ""),
        ("z=1&B=2&a=3&X-Amz-Signature=s", ["X-Amz-Signature", "none"], ""),
    ],
)
def test_task_ids_match_the_real_dfdaemon(
    cluster: Cluster, file_origin: str, query: str, filtered: list[str], tag: str
) -> None:
    url = f"{file_origin}?{query}"
    headers = {
        "X-Dragonfly-Use-P2P": "true",
        "X-Dragonfly-Filtered-Query-Params": ",".join(filtered),
        **({"X-Dragonfly-Tag": tag} if tag else {}),
    }
    conn = http.client.HTTPConnection("127.0.0.1", cluster.a.dfdaemon.proxy_port, timeout=30)
    try:
        conn.request("GET", url, headers=headers)  # absolute form, as shim sends it
        response = conn.getresponse()
        response.read()
    finally:
        conn.close()
    assert response.status == 200
    reported = response.getheader("X-Dragonfly-Task-Id")
    assert reported == rust_task_id(url, filtered=filtered, tag=tag)


def test_a_dfdaemon_failure_dressed_as_success_falls_back(cluster: Cluster, tmp_path: Path) -> None:
    # An origin without Range support: the dfdaemon answers 200 with an empty body and
    # X-Dragonfly-Error-Type. shim must not pass that on as the object.
    root = tmp_path / "www"
    (root / "plain").mkdir(parents=True)
    body = os.urandom(9 * 1024 * 1024)  # more than one 4 MiB piece
    (root / "plain" / "model.mar").write_bytes(body)
    port = free_port()
    origin = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port)
        config = {
            "dfdaemon": cluster.a.dfdaemon.proxy_url,
            "buckets": [s3_bucket_config("plain", f"http://127.0.0.1:{port}")],
        }
        with start_shim(tmp_path / "shim", config) as shim:
            reply = via_proxy(shim.proxy_port, f"http://127.0.0.1:{port}/plain/model.mar")
            assert (reply.status, reply.body) == (200, body)
            assert reply.headers["X-Shim-Route"] == "fallback"
    finally:
        terminate(origin, 10)


def _wait_for_port(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}")
