"""The issue's proof: ``shim prefetch`` through shim warms the very Dragonfly task that a later
TorchServe download of the same URL uses, on real Dragonfly (scheduler and Rust dfdaemons, see
tests/support/p2p.py) and a real TorchServe: that download is a local-peer hit.

Node A's dfdaemon hard-links the tasks shim asks for, and does so only when it had the whole
task before the request (``X-Dragonfly-Task-Download-Finished: true``, shim's ``linked``
result): that is the local-peer hit. The origin's relay shows it sent nothing but a size probe.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.dragonfly import require_dragonfly
from tests.support.p2p import start_cluster
from tests.support.servers import put_object, s3_client
from tests.support.shim_process import shim_command

pytestmark = [pytest.mark.slow, pytest.mark.dragonfly, pytest.mark.torchserve]
require_dragonfly()

BUCKET = "warmed"


def test_prefetch_warms_the_task_torchserve_then_downloads_from_the_local_peer(
    tmp_path: Path,
) -> None:
    from tests.support.torchserve import (
        build_echo_archive,
        require_torchserve,
        serve_echo_through_shim,
    )

    require_torchserve()
    weights = tmp_path / "weights.bin"
    weights.write_bytes(os.urandom(6 * 1024 * 1024))  # several pieces, incompressible
    archive = build_echo_archive(tmp_path / "archives", extra_files=[weights])
    with start_cluster(tmp_path / "p2p", BUCKET) as cluster:
        put_object(s3_client(cluster.origin), BUCKET, "echo.mar", archive.read_bytes())
        url = cluster.url("echo.mar")
        node = cluster.a.shim
        config = str(node.workdir / "shim.yaml")
        result = shim_command("prefetch", "--config", config, url, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        (row,) = [line for line in result.stdout.splitlines() if url in line and "|" in line]
        warmed_task = row.split("|")[-2].strip()
        assert len(warmed_task) == 64 and "dfdaemon" in row  # the dfdaemon's own task ID
        assert cluster.relay.bytes_down >= archive.stat().st_size  # fetched once, by prefetch

        cluster.relay.reset_counters()
        before = node.metrics()
        serve_echo_through_shim(
            tmp_path / "ts", node.proxy_port, url, archive.read_bytes(), b"warm"
        )
        after = node.metrics()

    def delta(sample: str) -> float:
        return after.get(sample, 0) - before.get(sample, 0)

    # TorchServe's download was the same task, which the dfdaemon already held whole.
    assert delta(f'shim_dfdaemon_tasks_total{{task_id="{warmed_task}"}}') == 1
    assert delta('shim_dfdaemon_requests_total{result="linked"}') == 1
    assert delta('shim_dfdaemon_requests_total{result="ok"}') == 0
    assert cluster.relay.bytes_down < 4096  # at most the size probe of shim's version check
