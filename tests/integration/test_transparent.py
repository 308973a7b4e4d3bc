"""Transparent mode: a client with no proxy settings, in its own network namespace, whose
port-80 traffic an iptables REDIRECT hands to the shim."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.netns import NetnsHost, make_test_host, require_netns
from tests.support.procs import free_port
from tests.support.servers import S3Server, put_object, s3_client
from tests.support.shim_process import ShimProcess, s3_bucket_config, start_shim

pytestmark = pytest.mark.slow
require_netns()

BUCKET_HOST = "models.s3.us-east-1.amazonaws.com"


@pytest.fixture
def test_host() -> Iterator[NetnsHost]:
    with make_test_host() as host:
        yield host


@pytest.fixture
def shim(
    tmp_path: Path, s3rver: S3Server, test_host: NetnsHost, request: pytest.FixtureRequest
) -> Iterator[ShimProcess]:
    port = free_port()
    bucket = {
        **s3_bucket_config("transparent", s3rver.endpoint),
        # The client asks for the bucket by its AWS name; the test's origin is s3rver.
        "hosts": [BUCKET_HOST],
    }
    config = {
        "transparent": f"{test_host.gateway}:{port}",
        # The listener is on the link to the test's namespace: only that host may use it.
        "clients": [f"{test_host.address}/32"],
        "passthrough": getattr(request, "param", "none"),
        "buckets": [bucket],
    }
    with start_shim(tmp_path / "shim", config) as process:
        test_host.redirect(80, port)
        test_host.resolve({BUCKET_HOST: test_host.gateway, "elsewhere.test": test_host.gateway})
        yield process


def curl_in(host: NetnsHost, url: str, out: Path) -> str:
    result = subprocess.run(
        [*host.exec_prefix(), "curl", "-sS", "-o", str(out), "-w", "%{http_code}", url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.stdout


def test_plain_bucket_url_is_intercepted_signed_and_cached(
    shim: ShimProcess, s3rver: S3Server, test_host: NetnsHost, tmp_path: Path
) -> None:
    body = os.urandom(500_000)
    put_object(s3_client(s3rver), "transparent", "resnet 18.mar", body)
    out = tmp_path / "out"
    url = f"http://{BUCKET_HOST}/resnet%2018.mar"
    assert curl_in(test_host, url, out) == "200"
    assert out.read_bytes() == body
    assert curl_in(test_host, url, out) == "200"
    assert out.read_bytes() == body
    metrics = shim.metrics()
    assert (metrics["shim_cache_misses_total"], metrics["shim_cache_hits_total"]) == (1, 1)


def test_other_hosts_are_refused_by_default(
    shim: ShimProcess, test_host: NetnsHost, tmp_path: Path
) -> None:
    status = curl_in(test_host, "http://elsewhere.test/x.mar", tmp_path / "out")
    assert status == "403"
    assert b"passthrough" in (tmp_path / "out").read_bytes()
    metrics = shim.metrics()
    assert metrics['shim_errors_total{kind="passthrough"}'] == 1
    assert 'shim_requests_total{route="pass"}' not in metrics


@pytest.mark.parametrize("shim", [["elsewhere.test"]], indirect=True)
def test_allowed_hosts_pass_through_unsigned_to_the_name_not_the_address(
    shim: ShimProcess, test_host: NetnsHost, tmp_path: Path
) -> None:
    # The redirected packets went to the gateway, where nothing listens for this; shim connects
    # to the name decided on instead, which does not resolve outside the test's namespace: a
    # gateway error, and nothing was signed or cached.
    status = curl_in(test_host, "http://elsewhere.test/x.mar", tmp_path / "out")
    assert status == "502"
    assert shim.metrics()['shim_requests_total{route="pass"}'] == 1
