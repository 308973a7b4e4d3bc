"""The status page of a real ``shim run``, as Debian's headless Chromium renders it: a download in
flight (slowed by the relay), finished requests, the cache, each bucket's credential state."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.chromium import WINDOW, dump_dom, png_facts, screenshot, table_rows
from tests.support.http import Reply, via_proxy
from tests.support.procs import direct_opener
from tests.support.relay import RelayFactory
from tests.support.servers import S3Server, put_object, s3_client
from tests.support.shim_process import ShimProcess, s3_bucket_config, start_shim

pytestmark = pytest.mark.slow

BUCKET = "status"
BIG = 8 * 1024 * 1024
RATE = 256 * 1024  # bytes per second: the big object takes half a minute


NO_AWS_CREDENTIALS = {
    "AWS_CONFIG_FILE": "/nonexistent",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_ACCESS_KEY_ID": "",
    "AWS_SECRET_ACCESS_KEY": "",
}


def status_json(shim: ShimProcess) -> dict[str, Any]:
    with direct_opener.open(f"{shim.admin}/status.json", timeout=10) as response:
        data: dict[str, Any] = json.load(response)
        return data


def wait_for(shim: ShimProcess, what: str, condition: Callable[[dict[str, Any]], bool]) -> None:
    """Poll /status.json until ``condition`` holds of it."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = status_json(shim)
        if condition(status):
            return
        time.sleep(0.1)
    raise AssertionError(f"the status page never showed {what}: {status}")


def test_the_status_page_in_headless_chromium(
    tmp_path: Path, s3rver: S3Server, relay_factory: RelayFactory
) -> None:
    client = s3_client(s3rver)
    put_object(client, BUCKET, "small.bin", b"s" * 10_000)
    put_object(client, BUCKET, "big-model.mar", b"b" * BIG)
    relay = relay_factory(s3rver.host, s3rver.port)
    origin = f"{relay.endpoint}/{BUCKET}"
    keyless = {"provider": "s3", "bucket": "keyless", "endpoint": relay.endpoint}
    config = {"buckets": [s3_bucket_config(BUCKET, relay.endpoint), keyless]}
    with start_shim(tmp_path / "shim", config, env=NO_AWS_CREDENTIALS) as shim:
        assert via_proxy(shim.proxy_port, f"{origin}/small.bin").status == 200
        relay.rate_limit_bytes_per_s = RATE
        big: list[Reply] = []
        download = threading.Thread(
            target=lambda: big.append(via_proxy(shim.proxy_port, f"{origin}/big-model.mar"))
        )
        download.start()
        try:
            wait_for(
                shim,
                "the download in flight and both buckets' credentials",
                lambda s: (
                    s["downloads"]
                    and s["downloads"][0]["received"] > 0
                    and {b["credentials"] for b in s["buckets"]} == {"loaded", "not loaded"}
                ),
            )
            page = f"{shim.admin}/status"
            dom = dump_dom(page, tmp_path / "profile")
            shot = tmp_path / "status.png"
            screenshot(page, tmp_path / "profile", shot)
            with direct_opener.open(page, timeout=10) as response:
                headers = response.headers
        finally:
            relay.rate_limit_bytes_per_s = None
            download.join(60)
    assert big[0].status == 200 and len(big[0].body) == BIG

    (_, downloading) = table_rows(dom, "downloads")
    url, route, progress, received, rate, _, clients, task_id = downloading
    assert url == f"{origin}/big-model.mar"
    assert (route, clients) == ("direct", "1")
    assert progress.endswith("%") and received.endswith("/ 8.0 MiB")
    assert rate.endswith("/s") and len(task_id) == 12
    assert table_rows(dom, "buckets")[1:] == [
        [BUCKET, "s3", "loaded"],
        ["keyless", "s3", "not loaded (the log says why)"],
    ]
    assert "<dt>Entries</dt><dd>1</dd>" in dom  # small.bin; the big one is in flight
    assert s3rver.access_key not in dom  # the key ID the URLs were signed with
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in headers["Content-Security-Policy"]

    width, height, byte_values = png_facts(shot.read_bytes())
    assert (width, height) == WINDOW
    assert byte_values > 50  # text and colours, not a blank page


def test_finished_requests_show_on_the_status_page(
    tmp_path: Path, s3rver: S3Server, relay_factory: RelayFactory
) -> None:
    put_object(s3_client(s3rver), BUCKET, "small.bin", b"s" * 10_000)
    relay = relay_factory(s3rver.host, s3rver.port)
    origin = f"{relay.endpoint}/{BUCKET}"
    config = {"buckets": [s3_bucket_config(BUCKET, relay.endpoint)]}
    with start_shim(tmp_path / "shim", config) as shim:
        assert via_proxy(shim.proxy_port, f"{origin}/small.bin").status == 200  # a miss
        assert via_proxy(shim.proxy_port, f"{origin}/small.bin").status == 200  # a hit
        # A key a client chose to be markup: shown as text, never run.
        assert via_proxy(shim.proxy_port, f"{origin}/<script>alert(1)</script>").status == 404
        dom = dump_dom(f"{shim.admin}/status", tmp_path / "profile")
    recent = table_rows(dom, "recent")[1:]
    assert [row[1] for row in recent] == [
        f"GET {origin}/<script>alert(1)</script>",
        f"GET {origin}/small.bin",
        f"GET {origin}/small.bin",
    ]
    assert [(row[3], row[4]) for row in recent] == [
        ("404", "MISS"),
        ("200", "HIT"),
        ("200", "MISS"),
    ]
    assert "<script" not in dom.lower()  # the key is text in the DOM, not an element
    assert s3rver.access_key not in dom
