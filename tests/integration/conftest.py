"""Fixtures for integration tests against real local servers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests.support.azurite import AzuriteServer, put_blob, start_azurite
from tests.support.relay import Relay, RelayFactory
from tests.support.servers import S3Server, s3_client, start_s3rver

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client


@pytest.fixture(scope="session")
def s3rver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A strict s3rver shared by the session (signed requests only); tests pick unique buckets."""
    with start_s3rver(tmp_path_factory.mktemp("s3rver")) as server:
        yield server


@pytest.fixture
def s3(s3rver: S3Server) -> S3Client:
    """A boto3 client signing with SigV4 for the session's s3rver."""
    return s3_client(s3rver)


@pytest.fixture
def relay_factory() -> Iterator[RelayFactory]:
    """Makes started relays to a target (host, port); all are stopped after the test."""
    relays: list[Relay] = []

    def make(
        target_host: str,
        target_port: int,
        *,
        rate_limit_bytes_per_s: float | None = None,
        cut_after_bytes: int | None = None,
    ) -> Relay:
        relay = Relay(
            target_host,
            target_port,
            rate_limit_bytes_per_s=rate_limit_bytes_per_s,
            cut_after_bytes=cut_after_bytes,
        )
        relays.append(relay)
        relay.start()
        return relay

    yield make
    for relay in relays:
        relay.stop()


@pytest.fixture(scope="module")
def azurite(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[AzuriteServer]:
    """azurite for a test module, with the module's ``CONTAINER`` made (a blob ``seed`` in it)."""
    with start_azurite(tmp_path_factory.mktemp("azurite")) as server:
        container = getattr(request.module, "CONTAINER", None)
        if container is not None:
            put_blob(server, container, "seed", b"seed")
        yield server
