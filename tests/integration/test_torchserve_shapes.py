"""Unmodified TorchServe downloads models through the shim, in the three ways users deploy it.

TorchServe holds no cloud credentials in any shape. The origin is a strict s3rver speaking TLS
(so plain http:// bucket URLs prove the upgrade towards the origin); clients name the bucket by
its AWS host, which the shim maps to that origin through the bucket's `hosts`.

1. explicit proxy: JAVA_TOOL_OPTIONS from `shim env`, truststore from `shim ca`;
2. transparent: TorchServe in its own network namespace, no proxy settings, iptables REDIRECT;
3. standalone: TorchServe registers http://SHIM/ALIAS/KEY, no proxy settings.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.http import via_proxy
from tests.support.netns import NetnsHost, make_test_host, require_netns
from tests.support.procs import free_port
from tests.support.servers import REPO_ROOT, S3Server, s3_client, start_s3rver
from tests.support.shim_process import ShimProcess, s3_bucket_config, start_shim
from tests.support.tls import make_pki
from tests.support.torchserve import (
    LinearExpectation,
    TorchServe,
    build_echo_archive,
    build_linear_archive,
    echo_reply,
    java_tool_options_from_shim_env,
    require_torchserve,
    start_torchserve,
)

pytestmark = [pytest.mark.slow, pytest.mark.torchserve]
require_torchserve()
require_netns()

BUCKET = "ts-models"
BUCKET_HOST = f"{BUCKET}.s3.us-east-1.amazonaws.com"
GONE_HOST = "gone-bucket.s3.us-east-1.amazonaws.com"


@dataclass
class World:
    origin: S3Server
    plain_s3: S3Server  # the session's plain-HTTP s3rver, for an unconfigured bucket
    shim: ShimProcess
    echo: bytes
    linear: bytes
    linear_case: LinearExpectation
    reverse_port: int
    transparent_port: int
    truststore: Path
    netns: NetnsHost


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, s3rver: S3Server) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("shapes")
    pki = make_pki(tmp / "pki")
    archives = tmp / "archives"
    echo_path = build_echo_archive(archives)
    linear_path, linear_case = build_linear_archive(archives)
    with (
        make_test_host() as netns,
        start_s3rver(tmp / "origin", tls=(pki.server_cert, pki.server_key)) as origin,
    ):
        client = s3_client(origin, ca_bundle=pki.ca_cert)
        client.create_bucket(Bucket=BUCKET)
        for path in (echo_path, linear_path):
            client.upload_file(str(path), BUCKET, path.name)
        s3_client(s3rver).create_bucket(Bucket="unconfigured")
        s3_client(s3rver).upload_file(str(echo_path), "unconfigured", "unconfigured.mar")
        reverse_port, transparent_port = free_port(), free_port()
        config = {
            "reverse": f"127.0.0.1:{reverse_port}",
            "transparent": f"{netns.gateway}:{transparent_port}",
            # Loopback (the explicit and standalone shapes) and the TorchServe namespace.
            "clients": ["127.0.0.0/8", f"{netns.address}/32"],
            "buckets": [
                {**s3_bucket_config(BUCKET, origin.endpoint), "hosts": [BUCKET_HOST],
                 "alias": "models"},
                # Configured, but its origin is not running: a stopped origin.
                {**s3_bucket_config("gone", f"http://127.0.0.1:{free_port()}"),
                 "hosts": [GONE_HOST]},
            ],
        }  # fmt: skip
        env = {"SSL_CERT_FILE": str(pki.ca_cert)}
        with start_shim(tmp / "shim", config, env=env) as shim:
            subprocess.run(
                [sys.executable, "-m", "shim", "ca", "--config", str(tmp / "shim" / "shim.yaml"),
                 "--out", str(tmp / "trust")],
                check=True, cwd=REPO_ROOT, capture_output=True,
            )  # fmt: skip
            netns.redirect(80, transparent_port)
            netns.resolve({BUCKET_HOST: netns.gateway, GONE_HOST: netns.gateway})
            yield World(
                origin, s3rver, shim, echo_path.read_bytes(), linear_path.read_bytes(),
                linear_case, reverse_port, transparent_port, tmp / "trust" / "truststore.p12",
                netns,
            )  # fmt: skip


@dataclass
class Shape:
    start: Callable[[Path], TorchServe]
    url: Callable[[str], str]  # archive name -> the URL TorchServe registers
    unconfigured_url: str
    gone_url: str


def shape(world: World, name: str) -> Shape:
    if name == "explicit":
        options = java_tool_options_from_shim_env(
            world.shim.proxy_port, truststore=world.truststore
        )
        return Shape(
            lambda wd: start_torchserve(wd, java_tool_options=options),
            lambda key: f"http://{BUCKET_HOST}/{key}",
            f"http://127.0.0.1:{world.plain_s3.port}/unconfigured/unconfigured.mar",
            f"http://{GONE_HOST}/gone.mar",
        )
    if name == "transparent":
        host = world.netns
        return Shape(
            lambda wd: start_torchserve(wd, netns=host.name, api_host=host.address),
            lambda key: f"http://{BUCKET_HOST}/{key}",
            # An unknown host: refused (passthrough: none), as everywhere.
            "http://unconfigured.example.test/unconfigured.mar",
            f"http://{GONE_HOST}/gone.mar",
        )
    return Shape(
        start_torchserve,
        lambda key: f"http://127.0.0.1:{world.reverse_port}/models/{key}",
        f"http://127.0.0.1:{world.reverse_port}/unconfigured/unconfigured.mar",
        f"http://127.0.0.1:{world.reverse_port}/gone/gone.mar",
    )


def register_and_predict_echo(ts: TorchServe, url: str) -> None:
    status, body = ts.register(url)
    assert status == 200, body
    status, body = ts.scale("echo")
    assert status == 200, body
    status, reply = ts.predict("echo", b"hello")
    assert (status, reply) == (200, echo_reply(b"hello"))


@pytest.mark.parametrize("name", ["explicit", "transparent", "standalone"])
def test_torchserve_registers_and_predicts_through_the_shim(
    world: World, name: str, tmp_path: Path
) -> None:
    current = shape(world, name)
    with current.start(tmp_path / "first") as ts:
        register_and_predict_echo(ts, current.url("echo.mar"))
        assert (ts.model_store / "echo.mar").read_bytes() == world.echo
        # The failures: each fails the registration and leaves TorchServe healthy.
        for failing in (current.url("absent.mar"), current.unconfigured_url, current.gone_url):
            status, body = ts.register(failing)
            assert status >= 400, (failing, body)
            assert "DownloadArchiveException" in body
            assert ts.ping() == 200
    after_first = world.shim.metrics()
    with current.start(tmp_path / "second") as ts:
        register_and_predict_echo(ts, current.url("echo.mar"))
        assert (ts.model_store / "echo.mar").read_bytes() == world.echo
    after_second = world.shim.metrics()
    hits = after_second["shim_cache_hits_total"] - after_first["shim_cache_hits_total"]
    fetches = after_second["shim_origin_fetches_total"] - after_first["shim_origin_fetches_total"]
    assert (hits, fetches) == (1, 0), "the second TorchServe must be served from the cache"


def test_https_bucket_url_through_connect_with_the_shim_truststore(
    world: World, tmp_path: Path
) -> None:
    current = shape(world, "explicit")
    with current.start(tmp_path) as ts:
        status, body = ts.register(f"https://{BUCKET_HOST}/linear.mar")
        assert status == 200, body
        assert ts.scale("linear")[0] == 200
        status, reply = ts.predict("linear", world.linear_case.request_body)
        assert status == 200
        assert world.linear_case.matches(reply)
        assert (ts.model_store / "linear.mar").read_bytes() == world.linear


def test_the_shim_passes_the_real_status_through(world: World) -> None:
    # What TorchServe's JVM got in the failing registrations above, seen by a plain client.
    proxy = world.shim.proxy_port
    assert via_proxy(proxy, f"http://{BUCKET_HOST}/absent.mar").status == 404
    unconfigured = f"http://127.0.0.1:{world.plain_s3.port}/unconfigured/unconfigured.mar"
    refused = via_proxy(proxy, unconfigured)  # shim's own refusal: passthrough is none
    assert (refused.status, refused.headers["X-Shim-Error"]) == (403, "passthrough")
    assert via_proxy(proxy, f"http://{GONE_HOST}/gone.mar").status == 502
