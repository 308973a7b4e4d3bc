"""Fixtures of the cache's in-process tests: a real origin (the strict s3rver, shared by the
session, behind a relay of each test's own) and a small filesystem to fill up."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cache.origin import Origin
from tests.support.procs import require
from tests.support.relay import Relay
from tests.support.servers import S3Server, start_s3rver

SMALL_DISK = 8 * 1024 * 1024


@pytest.fixture(scope="session")
def s3rver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with start_s3rver(tmp_path_factory.mktemp("s3rver")) as server:
        yield server


@pytest.fixture
def origin(s3rver: S3Server, request: pytest.FixtureRequest) -> Iterator[Origin]:
    """A bucket of the test's own on s3rver, reached through a fresh relay."""
    with Relay(s3rver.host, s3rver.port) as relay:
        bucket = "cache-" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:24]
        yield Origin(s3rver, relay, bucket)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An empty filesystem of SMALL_DISK bytes (tmpfs), unmounted after the test. Mounting
    needs root: skipped without it, failed under SHIM_REQUIRE_NETNS (set by make test and CI,
    whose network-namespace tests need root as well)."""
    require("SHIM_REQUIRE_NETNS", None if os.geteuid() == 0 else "mounting a tmpfs needs root")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SMALL_DISK}", "tmpfs", str(mount_point)],
        check=True,
    )
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], check=False).returncode != 0:
            subprocess.run(["umount", "--lazy", str(mount_point)], check=True)
            pytest.fail("the small disk was still in use after the test: a file left open")
