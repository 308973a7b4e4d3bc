"""The S3 API through real Dragonfly (a scheduler and a Rust dfdaemon on loopback): an object
read by URL and the same object read through the S3 API are one Dragonfly task, fetched from
the origin once."""

from __future__ import annotations

import os
from pathlib import Path

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config

from tests.support.dragonfly import require_dragonfly, start_dfdaemon, start_scheduler
from tests.support.http import via_proxy
from tests.support.procs import free_port
from tests.support.relay import Relay
from tests.support.servers import S3Server, put_object, s3_client
from tests.support.shim_process import s3_bucket_config, start_shim

pytestmark = [pytest.mark.slow, pytest.mark.dragonfly]
require_dragonfly()

BUCKET = "s3api-p2p"


def test_the_s3_api_and_a_url_share_one_dragonfly_task(tmp_path: Path, s3rver: S3Server) -> None:
    s3_client(s3rver).create_bucket(Bucket=BUCKET)
    body = os.urandom(3 * 1024 * 1024)
    put_object(s3_client(s3rver), BUCKET, "weights.safetensors", body)
    port = free_port()
    with (
        Relay(s3rver.host, s3rver.port) as relay,
        start_scheduler(tmp_path / "scheduler") as scheduler,
        start_dfdaemon(
            tmp_path / "dfdaemon", name="node", scheduler=scheduler, proxy_rules=[]
        ) as dfdaemon,
        start_shim(
            tmp_path / "shim",
            {
                "s3_api": f"127.0.0.1:{port}",
                "dfdaemon": {"url": dfdaemon.proxy_url, "fallback": False},
                "buckets": [{**s3_bucket_config(BUCKET, relay.endpoint), "alias": "models"}],
            },
        ) as shim,
    ):
        by_url = via_proxy(shim.proxy_port, f"{relay.endpoint}/{BUCKET}/weights.safetensors")
        assert (by_url.status, by_url.headers["X-Shim-Route"]) == (200, "dfdaemon")
        assert by_url.body == body
        origin_bytes = relay.bytes_down
        s3 = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name="us-east-1",
            config=Config(signature_version=UNSIGNED),
        )
        got = s3.get_object(Bucket="models", Key="weights.safetensors", Range="bytes=1000-1999")
        headers = got["ResponseMetadata"]["HTTPHeaders"]
        assert got["Body"].read() == body[1000:2000]
        assert headers["x-shim-route"] == "dfdaemon"
        assert headers["x-shim-task-id"] == by_url.headers["X-Shim-Task-Id"]
        # The dfdaemon had the task: the origin answered at most a size probe.
        assert relay.bytes_down - origin_bytes < 4096
