"""``shim cache`` on the directory of a running ``shim run`` (real s3rver): what it lists, a
removal the shim notices (a miss that refills, gauges that follow without a request), totals
that agree with /metrics, and a flipped byte that verify catches and the shim then refetches."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shim.cache.server import CACHE_STATUS_HEADER
from tests.support.http import via_proxy
from tests.support.servers import S3Server, put_object, s3_client
from tests.support.shim_process import ShimProcess, s3_bucket_config, shim_command, start_shim

pytestmark = pytest.mark.slow

BUCKET = "inspect"
BODIES = {name: os.urandom(size) for name, size in [("a.bin", 300_000), ("b.bin", 20_000)]}
BODIES["c.bin"] = os.urandom(150_000)


@pytest.fixture
def shim(tmp_path: Path, s3rver: S3Server) -> Iterator[ShimProcess]:
    client = s3_client(s3rver)
    for name, body in BODIES.items():
        put_object(client, BUCKET, name, body)
    with start_shim(tmp_path, {"buckets": [s3_bucket_config(BUCKET, s3rver.endpoint)]}) as shim:
        yield shim


def _url(s3rver: S3Server, name: str) -> str:
    return f"{s3rver.endpoint}/{BUCKET}/{name}"


def _get(shim: ShimProcess, s3rver: S3Server, name: str) -> str:
    """Download ``name`` through shim, check its bytes; its X-Shim-Cache."""
    reply = via_proxy(shim.proxy_port, _url(s3rver, name))
    assert (reply.status, reply.body == BODIES[name]) == (200, True)
    return reply.headers[CACHE_STATUS_HEADER]


def _cache(shim: ShimProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """``shim cache ARGS`` on the running shim's config, as an operator runs it."""
    return shim_command("cache", *args, "--config", str(shim.workdir / "shim.yaml"))


def _listed(shim: ShimProcess) -> dict[str, dict[str, Any]]:
    """``shim cache ls --json``, by object."""
    result = _cache(shim, "ls", "--json")
    assert result.returncode == 0, result.stderr
    return {entry["object"]: entry for entry in json.loads(result.stdout)}


def _eventually[T](probe: Callable[[], T], ok: Callable[[T], bool], what: str) -> T:
    """``probe()`` once ``ok`` of it (shim writes its usage and checks its files every 5 s)."""
    deadline = time.monotonic() + 20
    while not ok(value := probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}; last: {value!r}")
        time.sleep(0.2)
    return value


def _gauges_and_stats(shim: ShimProcess) -> tuple[tuple[float, float], tuple[int, int]]:
    metrics = shim.metrics()
    result = _cache(shim, "stats", "--json")
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    return (
        (metrics["shim_cache_entries"], metrics["shim_cache_bytes"]),
        (stats["entries"], stats["bytes"]),
    )


def test_the_cache_of_a_running_shim_can_be_listed_pruned_and_verified(
    shim: ShimProcess, s3rver: S3Server
) -> None:
    assert [_get(shim, s3rver, name) for name in ("a.bin", "a.bin", "b.bin", "c.bin")] == [
        "MISS",
        "HIT",
        "MISS",
        "MISS",
    ]
    listed = _eventually(
        lambda: _listed(shim), lambda e: e.get("a.bin", {}).get("hits") == 1, "ls shows a's hit"
    )
    assert listed.keys() == set(BODIES)
    assert {name: entry["size"] for name, entry in listed.items()} == {
        name: len(body) for name, body in BODIES.items()
    }
    assert listed["b.bin"]["url"] == _url(s3rver, "b.bin")
    assert (listed["b.bin"]["bucket"], listed["b.bin"]["hits"]) == (BUCKET, 0)

    # Removed while shim runs: the next request is a miss that stores it again, whole.
    removed = _cache(shim, "rm", _url(s3rver, "b.bin"))
    assert removed.returncode == 0 and listed["b.bin"]["key"] in removed.stdout
    assert _get(shim, s3rver, "b.bin") == "MISS"
    assert _get(shim, s3rver, "b.bin") == "HIT"

    # Removed with no request after it: shim's accounting follows the disk all the same.
    assert _cache(shim, "rm", listed["c.bin"]["key"][:10]).returncode == 0
    expected = (2, len(BODIES["a.bin"]) + len(BODIES["b.bin"]))
    gauges, stats = _eventually(
        lambda: _gauges_and_stats(shim), lambda pair: pair[0] == pair[1], "the gauges agree"
    )
    assert gauges == stats == expected

    # A flipped byte on disk: verify names the entry, removes it, and shim fetches it again.
    verified = _cache(shim, "verify")
    assert verified.returncode == 0, verified.stdout
    assert verified.stdout.startswith("2 entries: 2 ok, 0 bad")
    key = listed["a.bin"]["key"]
    data = shim.cache_dir / "objects" / key[:2] / key
    with data.open("r+b") as file:
        file.seek(123_456)
        byte = file.read(1)
        file.seek(123_456)
        file.write(bytes([byte[0] ^ 0x20]))
    verified = _cache(shim, "verify")
    assert verified.returncode == 1
    assert f"bad: {key} {_url(s3rver, 'a.bin')}" in verified.stdout
    assert "removed" in verified.stdout and not data.exists()
    assert _get(shim, s3rver, "a.bin") == "MISS"
    assert _cache(shim, "verify").returncode == 0
    assert "Traceback" not in shim.output()
