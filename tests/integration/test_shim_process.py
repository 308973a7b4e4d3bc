"""The shim as a process: start-up, configuration sources, admin endpoints, clean stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml

from tests.support.http import via_proxy
from tests.support.procs import direct_opener, free_port
from tests.support.servers import REPO_ROOT, S3Server, put_object, s3_client
from tests.support.shim_process import s3_bucket_config, shim_command, start_shim

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bucket(s3rver: S3Server) -> S3Client:
    client = s3_client(s3rver)
    put_object(client, "proc", "model.mar", b"m" * 100_000)
    return client


def test_sigterm_stops_cleanly(tmp_path: Path, s3rver: S3Server) -> None:
    shim = start_shim(tmp_path, {"buckets": [s3_bucket_config("proc", s3rver.endpoint)]})
    with direct_opener.open(f"{shim.admin}/healthz", timeout=5) as response:
        assert (response.status, response.read()) == (200, b"ok\n")
    started = time.monotonic()
    assert shim.stop() == 0
    assert time.monotonic() - started < 10


def test_metrics_page_lists_every_family(
    tmp_path: Path, s3rver: S3Server, bucket: S3Client
) -> None:
    config = {"buckets": [s3_bucket_config("proc", s3rver.endpoint)]}
    with start_shim(tmp_path, config) as shim:
        via_proxy(shim.proxy_port, f"{s3rver.endpoint}/proc/model.mar")
        via_proxy(shim.proxy_port, f"{s3rver.endpoint}/proc/model.mar")
        metrics = shim.metrics()
    assert metrics['shim_requests_total{route="miss"}'] == 1
    assert metrics['shim_requests_total{route="hit"}'] == 1
    assert metrics["shim_response_bytes_total"] == 200_000
    assert metrics["shim_origin_bytes_total"] == 100_000
    assert metrics["shim_cache_entries"] == 1
    assert metrics["shim_cache_bytes"] == 100_000


def test_a_bucket_without_credentials_is_reported_at_start_up(
    tmp_path: Path, s3rver: S3Server
) -> None:
    """Before any download: the log names the bucket and the reason, and a gauge says which
    buckets can sign; the other buckets serve."""
    keyless = {"provider": "s3", "bucket": "keyless", "endpoint": s3rver.endpoint}
    config = {"buckets": [s3_bucket_config("proc", s3rver.endpoint), keyless]}
    no_aws = {
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ACCESS_KEY_ID": "",
        "AWS_SECRET_ACCESS_KEY": "",
    }
    with start_shim(tmp_path, config, env=no_aws) as shim:
        deadline = time.monotonic() + 20
        while "'keyless' (s3)" not in shim.output() and time.monotonic() < deadline:
            time.sleep(0.1)
        metrics = shim.metrics()
        output = shim.output()
    (line,) = [line for line in output.splitlines() if "'keyless' (s3)" in line]
    assert "no credentials found for bucket 'keyless'" in line
    assert metrics['shim_bucket_credentials{bucket="keyless",provider="s3"}'] == 0
    assert metrics['shim_bucket_credentials{bucket="proc",provider="s3"}'] == 1


def test_broken_config_stops_start_up_with_one_message(tmp_path: Path) -> None:
    config = tmp_path / "shim.yaml"
    config.write_text(yaml.safe_dump({"buckets": [{"provider": "s3", "bucket": "b"}], "lisen": 1}))
    result = shim_command("run", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "lisen: Extra inputs are not permitted" in result.stderr


def test_dragonfly_endpoint_config_json_is_read_unchanged(
    tmp_path: Path, s3rver: S3Server, bucket: S3Client
) -> None:
    # The format dragonfly-endpoint users already have, located the way the plugin locates it.
    config_json = tmp_path / "config.json"
    config_json.write_text(
        json.dumps(
            {
                # Its dfdaemon, which is not running here: shim falls back to the origin.
                "addr": f"http://127.0.0.1:{free_port()}",
                "header": {},
                "filter": "X-Amz-Algorithm&X-Amz-Credential&X-Amz-Date&X-Amz-Expires&"
                "X-Amz-SignedHeaders&X-Amz-Signature",
                "object_storage": {
                    "type": "s3",
                    "bucket_name": "proc",
                    "region": "us-east-1",
                    "endpoint": s3rver.endpoint,
                    "access_key": s3rver.access_key,
                    "secret_key": s3rver.secret_key,
                },
            }
        )
    )
    proxy_port, admin_port = free_port(), free_port()
    env = {
        **os.environ,
        "DRAGONFLY_ENDPOINT_CONFIG": str(config_json),
        "XDG_CACHE_HOME": str(tmp_path / "xdg-cache"),
        "XDG_DATA_HOME": str(tmp_path / "xdg-data"),
    }
    env.pop("SHIM_CONFIG", None)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shim",
            "run",
            "--listen",
            f"127.0.0.1:{proxy_port}",
            "--admin",
            f"127.0.0.1:{admin_port}",
        ],
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_healthy(admin_port, process)
        reply = via_proxy(proxy_port, f"{s3rver.endpoint}/proc/model.mar")
        assert (reply.status, reply.body) == (200, b"m" * 100_000)
        assert reply.headers["X-Shim-Route"] == "fallback"
        assert (tmp_path / "xdg-cache" / "shim" / "objects").is_dir()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0


def test_addon_loads_into_plain_mitmdump(
    tmp_path: Path, s3rver: S3Server, bucket: S3Client
) -> None:
    admin_port, proxy_port = free_port(), free_port()
    config = tmp_path / "shim.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "admin": f"127.0.0.1:{admin_port}",
                "cache": {"dir": str(tmp_path / "cache")},
                "buckets": [s3_bucket_config("proc", s3rver.endpoint)],
            }
        )
    )
    mitmdump = Path(sys.executable).with_name("mitmdump")
    process = subprocess.Popen(
        [
            str(mitmdump),
            "-q",
            "--listen-host",
            "127.0.0.1",
            "-p",
            str(proxy_port),
            "--set",
            f"confdir={tmp_path / 'conf'}",
            "-s",
            str(REPO_ROOT / "addons" / "shim_addon.py"),
            "--set",
            f"shim_config={config}",
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_healthy(admin_port, process)
        reply = via_proxy(proxy_port, f"{s3rver.endpoint}/proc/model.mar")
        assert (reply.status, reply.body) == (200, b"m" * 100_000)
        assert reply.headers["X-Shim-Cache"] == "MISS"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)


def _wait_healthy(admin_port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, "the proxy exited during start-up"
        try:
            with direct_opener.open(
                f"http://127.0.0.1:{admin_port}/healthz", timeout=1
            ) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("the proxy did not become healthy")
