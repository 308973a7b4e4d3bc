"""Fixtures of the cache's in-process tests: a real origin (the strict s3rver, shared by the
session, behind a relay of each test's own) and a small filesystem to fill up."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cache.origin import Origin
from tests.support.disk import tmpfs
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
    with tmpfs(tmp_path / "disk", SMALL_DISK) as disk:
        yield disk
