"""`shim preheat` through a real Dragonfly manager (v2.5.1, on a private MariaDB and Redis), a
scheduler that takes its jobs, and two Rust dfdaemons ("nodes"), each with its own shim; the
last test adds a seed peer (a third dfdaemon). The origin is a strict s3rver (a private bucket:
unsigned requests get 403) behind a relay that counts what it serves.

The dfdaemons are given no proxy rule, as in test_dragonfly.py: only shim's headers put a
request on the P2P network, so a node's download hits the preheated task only if preheat asked
for the very task shim asks for.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from shim.taskid import rust_task_id
from tests.support.dragonfly import (
    Dfdaemon,
    Scheduler,
    require_dragonfly,
    start_dfdaemon,
    start_dfdaemons,
    start_scheduler,
)
from tests.support.http import via_proxy
from tests.support.manager import (
    Manager,
    require_manager,
    scheduler_config,
    start_manager,
    start_mariadb,
    start_redis,
    wait_announced,
)
from tests.support.relay import Relay
from tests.support.servers import S3Server, put_object, s3_client, start_s3rver
from tests.support.shim_process import ShimProcess, s3_bucket_config, shim_command, start_shim

pytestmark = [pytest.mark.slow, pytest.mark.dragonfly]
require_dragonfly()
require_manager()

BUCKET = "preheat"
NODES = ("node-a", "node-b")
# How often the scheduler (v2.5.1) re-reads which announced seed peers are healthy
# (scheduler/resource/standard SeedPeerRefreshInterval): only then can it pick one.
SEED_PEER_REFRESH = 30.0


@dataclass
class Cluster:
    origin: S3Server
    relay: Relay
    manager: Manager
    scheduler: Scheduler
    scheduler_started: float  # time.monotonic() once it served, after its refresh ticker began
    dfdaemons: list[Dfdaemon]
    shims: list[ShimProcess]
    workdir: Path

    def url(self, key: str) -> str:
        return f"{self.relay.endpoint}/{BUCKET}/{key}"

    def preheat_config(self, **manager: Any) -> Path:
        """A node's config (its bucket and dfdaemon) with the manager and a token file."""
        token_file = self.workdir / "manager-token"
        token_file.write_text(self.manager.token + "\n")
        token_file.chmod(0o600)
        config = {
            "dfdaemon": self.dfdaemons[0].proxy_url,
            "buckets": [s3_bucket_config(BUCKET, self.relay.endpoint)],
            "manager": {"url": self.manager.url, "token_file": str(token_file), **manager},
        }
        path = self.workdir / "preheat.yaml"
        path.write_text(yaml.safe_dump(config))
        return path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("preheat")
    with contextlib.ExitStack() as stack:
        db = stack.enter_context(start_mariadb(tmp / "mariadb"))
        redis = stack.enter_context(start_redis(tmp / "redis"))
        manager = stack.enter_context(start_manager(tmp / "manager", db=db, redis=redis))
        scheduler = stack.enter_context(
            start_scheduler(tmp / "scheduler", config=scheduler_config(manager))
        )
        scheduler_started = time.monotonic()
        daemons = start_dfdaemons(tmp, NODES, scheduler=scheduler, proxy_rules=[])
        for daemon in daemons:
            stack.enter_context(daemon)
        origin = stack.enter_context(start_s3rver(tmp / "origin"))
        relay = stack.enter_context(Relay(origin.host, origin.port))
        s3_client(origin).create_bucket(Bucket=BUCKET)
        bucket = s3_bucket_config(BUCKET, relay.endpoint)
        shims = [
            stack.enter_context(
                start_shim(
                    tmp / f"shim-{daemon.name}",
                    {"dfdaemon": {"url": daemon.proxy_url, "fallback": False}, "buckets": [bucket]},
                )
            )
            for daemon in daemons
        ]
        wait_announced(scheduler, daemons)
        yield Cluster(origin, relay, manager, scheduler, scheduler_started, daemons, shims, tmp)


def _shim_preheat(*args: str) -> subprocess.CompletedProcess[str]:
    return shim_command("preheat", "--poll-interval", "1", *args, timeout=240)


def test_preheat_puts_the_object_on_every_node_for_the_task_shim_downloads(
    cluster: Cluster,
) -> None:
    body = os.urandom(9 * 1024 * 1024)  # three pieces
    put_object(s3_client(cluster.origin), BUCKET, "models/resnet v1.mar", body)
    url = cluster.url("models/resnet%20v1.mar")
    cluster.relay.reset_counters()
    done = _shim_preheat("--config", str(cluster.preheat_config()), url)
    assert done.returncode == 0, done.stdout + done.stderr
    # The peers fetched the object from the private bucket with the signed URL.
    assert cluster.relay.bytes_down >= len(body)
    (line,) = [line for line in done.stdout.splitlines() if line.startswith(f"{url}  task ")]
    task = line.split()[2]
    for name in NODES:
        assert f"{name} (127.0.0.1)" in line
    assert "SUCCESS" in done.stdout
    # Each node's dfdaemon stores the task under the ID shim computed, before anyone asked.
    for daemon in cluster.dfdaemons:
        assert any(daemon.storage_dir.rglob(task)), f"{daemon.name} holds no task {task}"
    cluster.relay.reset_counters()
    for shim in cluster.shims:
        reply = via_proxy(shim.proxy_port, url)
        assert (reply.status, reply.headers["X-Shim-Route"]) == (200, "dfdaemon")
        assert reply.body == body
        # The dfdaemon's own task ID: the one preheated, as shim computes it.
        assert reply.headers["X-Shim-Task-Id"] == task
        assert task == rust_task_id(url, tag=f";etag={reply.headers['ETag']}")
    # Each node's dfdaemon served its own copy: the origin answered nothing but one-byte
    # probes (shim's check of the object's version), not the object again.
    heads = cluster.relay.request_heads
    assert heads and all(b"range: bytes=0-0" in head.lower() for head in heads)
    assert cluster.relay.bytes_down < 4096
    # Neither the token nor a signature is shown.
    shown = done.stdout + done.stderr
    assert cluster.manager.token not in shown
    assert "Signature" not in shown


def test_a_failed_job_exits_non_zero_with_the_reason(cluster: Cluster) -> None:
    """Dragonfly's default scope needs a seed peer, and this cluster has none yet: the
    scheduler fails the job, and shim says why."""
    put_object(s3_client(cluster.origin), BUCKET, "seeded.mar", b"x" * 1024)
    config = cluster.preheat_config(scope="single_seed_peer")
    failed = _shim_preheat("--config", str(config), cluster.url("seeded.mar"))
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "FAILURE" in failed.stdout
    assert "no available seed peer" in failed.stderr


def test_a_token_the_manager_refuses_is_a_clear_error_that_does_not_show_it(
    cluster: Cluster, tmp_path: Path
) -> None:
    put_object(s3_client(cluster.origin), BUCKET, "refused.mar", b"x" * 1024)
    wrong = tmp_path / "token"
    wrong.write_text("not-a-token-of-this-manager")
    wrong.chmod(0o600)
    config = cluster.preheat_config()
    refused = _shim_preheat(
        "--config", str(config), "--token-file", str(wrong), cluster.url("refused.mar")
    )
    assert refused.returncode == 1
    assert "401 Unauthorized" in refused.stderr
    assert "not-a-token-of-this-manager" not in refused.stdout + refused.stderr


def test_an_object_the_origin_does_not_have_creates_no_job(cluster: Cluster) -> None:
    absent = _shim_preheat("--config", str(cluster.preheat_config()), cluster.url("absent.mar"))
    assert absent.returncode == 1
    assert "absent.mar: the origin answered with no ETag" in absent.stderr
    assert "job" not in absent.stdout


def test_a_seed_peer_preheat_lets_every_node_download_from_it(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Dragonfly's default scope: one seed peer fetches the object; the nodes then download it
    from that peer, not from the origin. (Runs last: the seed peer stays known to the
    scheduler.)"""
    body = os.urandom(5 * 1024 * 1024)
    put_object(s3_client(cluster.origin), BUCKET, "seeded/v2.mar", body)
    url = cluster.url("seeded/v2.mar")
    seed_config = {"seedPeer": {"enable": True, "type": "super"}}
    with start_dfdaemon(
        tmp_path / "seed", name="seed-1", scheduler=cluster.scheduler, config=seed_config
    ) as seed:
        wait_announced(cluster.scheduler, [seed])
        # Until the scheduler's next refresh after the announcement, it knows no seed peer.
        since_start = time.monotonic() - cluster.scheduler_started
        time.sleep(SEED_PEER_REFRESH - since_start % SEED_PEER_REFRESH + 2)
        config = cluster.preheat_config(scope="single_seed_peer")
        cluster.relay.reset_counters()
        done = _shim_preheat("--config", str(config), url)
        assert done.returncode == 0, done.stdout + done.stderr
        assert cluster.relay.bytes_down >= len(body)
        (line,) = [line for line in done.stdout.splitlines() if line.startswith(f"{url}  task ")]
        task = line.split()[2]
        assert line.endswith("on seed-1 (127.0.0.1)")
        assert any(seed.storage_dir.rglob(task))
        cluster.relay.reset_counters()
        for shim in cluster.shims:
            reply = via_proxy(shim.proxy_port, url)
            assert (reply.status, reply.body) == (200, body)
            assert reply.headers["X-Shim-Task-Id"] == task
        heads = cluster.relay.request_heads
        assert heads and all(b"range: bytes=0-0" in head.lower() for head in heads)
        assert cluster.relay.bytes_down < 8192
