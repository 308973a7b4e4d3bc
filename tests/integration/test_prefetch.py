"""Warm-up through the real ``shim run``: ``shim prefetch`` through its proxy, and the admin
port's token-guarded prefetch jobs and cache removal. The origin is the session's strict
s3rver: a 200 proves shim signed."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shim.taskid import rust_task_id
from tests.support.http import via_proxy
from tests.support.procs import direct_opener
from tests.support.servers import S3Server, put_objects
from tests.support.shim_process import ShimProcess, s3_bucket_config, shim_command, start_shim

pytestmark = pytest.mark.slow

BUCKET = "warm"
TOKEN = "prefetch-token-0123456789abcdef"
PROXY_PASSWORD = "proxy-password-for-prefetch"


@pytest.fixture(scope="module")
def objects(s3rver: S3Server) -> dict[str, bytes]:
    bodies = {
        "model a.mar": os.urandom(3 * 1024 * 1024),
        "b.mar": os.urandom(200_000),
        "job.mar": os.urandom(1024 * 1024),
        "removed.mar": os.urandom(100_000),
    }
    put_objects(s3rver, {f"{BUCKET}/{key}": body for key, body in bodies.items()})
    return bodies


def _url(s3rver: S3Server, key: str) -> str:
    return f"{s3rver.endpoint}/{BUCKET}/{key.replace(' ', '%20')}"


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory, s3rver: S3Server) -> Iterator[ShimProcess]:
    """A shim with the admin token in a file only its user can read, and proxy credentials
    that ``shim prefetch`` finds in the same config."""
    workdir = tmp_path_factory.mktemp("prefetch")
    token_file = workdir / "admin-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    config = {
        "buckets": [s3_bucket_config(BUCKET, s3rver.endpoint)],
        "admin_token_file": str(token_file),
        "proxy_auth": {"username": "warmer", "password": PROXY_PASSWORD},
    }
    with start_shim(workdir, config) as process:
        yield process


def _prefetch(shim: ShimProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return shim_command("prefetch", "--config", str(shim.workdir / "shim.yaml"), *args, timeout=120)


def _proxy_headers() -> dict[str, str]:
    credentials = base64.b64encode(f"warmer:{PROXY_PASSWORD}".encode()).decode()
    return {"Proxy-Authorization": f"Basic {credentials}"}


# -- shim prefetch ------------------------------------------------------------------------------


def test_prefetch_fills_the_cache_and_later_requests_hit(
    shim: ShimProcess, s3rver: S3Server, objects: dict[str, bytes]
) -> None:
    urls = [_url(s3rver, "model a.mar"), _url(s3rver, "b.mar")]
    # One by argument, one from a file, over https through shim's CA (from its confdir).
    listed = shim.workdir / "urls.txt"
    listed.write_text(f"# models\n\n{urls[1].replace('http://', 'https://')}\n")
    before = shim.metrics()
    result = _prefetch(shim, urls[0], "--from-file", str(listed))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    # Not a terminal: plain lines, no control sequences, every URL on one line.
    assert "\x1b" not in out
    assert f"done     {urls[0]} 3.0 MiB" in out
    assert "MISS via direct" in out
    assert "prefetch summary" in out
    assert result.stderr == ""
    after = shim.metrics()
    assert after["shim_cache_entries"] - before["shim_cache_entries"] == 2
    for url, key in zip(urls, ("model a.mar", "b.mar"), strict=True):
        reply = via_proxy(shim.proxy_port, url, headers=_proxy_headers())
        assert (reply.status, reply.headers["X-Shim-Cache"]) == (200, "HIT")
        assert reply.body == objects[key]
    assert shim.metrics()["shim_origin_fetches_total"] == after["shim_origin_fetches_total"]


def test_prefetch_names_each_failure_and_exits_1(
    shim: ShimProcess, s3rver: S3Server, objects: dict[str, bytes]
) -> None:
    missing = _url(s3rver, "absent.mar")
    elsewhere = "http://127.0.0.1:9/no-bucket/x.mar"
    result = _prefetch(shim, _url(s3rver, "b.mar"), missing, elsewhere)
    assert result.returncode == 1
    failures = [line for line in result.stderr.splitlines() if "prefetch failed" in line]
    assert failures == [
        f"shim: prefetch failed: {missing}: 404 Not Found from the origin",
        f"shim: prefetch failed: {elsewhere}: 403 Forbidden (passthrough): 127.0.0.1:9 is not "
        "a configured bucket, and the passthrough setting does not allow it",
    ]
    assert "shim: 2 of 3 object(s) failed" in result.stderr
    assert f"done     {_url(s3rver, 'b.mar')}" in result.stdout


def test_prefetch_without_a_reachable_proxy_says_so(shim: ShimProcess, s3rver: S3Server) -> None:
    result = _prefetch(shim, "--proxy", "127.0.0.1:9", _url(s3rver, "b.mar"))
    assert result.returncode == 1
    assert "cannot connect to the proxy at http://127.0.0.1:9" in result.stderr


def test_prefetch_refuses_a_bad_list_before_fetching(shim: ShimProcess) -> None:
    result = _prefetch(shim, "ftp://example.com/x")
    assert (result.returncode, result.stderr) == (
        2,
        "shim: URL 1: expected an http:// or https:// URL\n",
    )


# -- the admin port -----------------------------------------------------------------------------


def _admin(
    shim: ShimProcess,
    method: str,
    path: str,
    *,
    token: str | None = TOKEN,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    request = urllib.request.Request(
        f"{shim.admin}{path}", data=body, method=method, headers=headers or {}
    )
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with direct_opener.open(request, timeout=30) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read())


def _finished_job(shim: ShimProcess, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status, _, job = _admin(shim, "GET", f"/prefetch/{job_id}")
        assert status == 200
        if job["state"] != "running":
            return job  # type: ignore[no-any-return]
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still running")


def test_a_prefetch_job_warms_what_a_later_request_hits(
    shim: ShimProcess, s3rver: S3Server, objects: dict[str, bytes]
) -> None:
    url = _url(s3rver, "job.mar")
    urls = [url, _url(s3rver, "absent.mar"), "http://127.0.0.1:9/no-bucket/x.mar"]
    status, headers, job = _admin(shim, "POST", "/prefetch", body=json.dumps(urls).encode())
    assert status == 202
    assert headers["Location"] == f"/prefetch/{job['id']}"
    done = _finished_job(shim, job["id"])
    assert (done["state"], done["counts"]) == (
        "failed",
        {"queued": 0, "running": 0, "done": 1, "failed": 2},
    )
    warm, absent, elsewhere = done["objects"]
    assert warm["state"] == "done" and warm["bytes"] == warm["size"] == len(objects["job.mar"])
    assert (warm["status"], warm["cache"], warm["route"]) == (200, "MISS", "direct")
    assert (absent["state"], absent["status"]) == ("failed", 404)
    assert elsewhere["error"].startswith("refused (passthrough): the URL names no object")
    # The later request is a hit on the very key the job warmed, the key of the signed URL
    # without its signature, as a client's request computes it.
    reply = via_proxy(shim.proxy_port, url, headers=_proxy_headers())
    assert (reply.status, reply.headers["X-Shim-Cache"]) == (200, "HIT")
    assert reply.headers["X-Shim-Task-Id"] == warm["task_id"]
    assert warm["task_id"] == rust_task_id(url)
    assert reply.body == objects["job.mar"]


def test_cache_removal_by_key_and_by_url(
    shim: ShimProcess, s3rver: S3Server, objects: dict[str, bytes]
) -> None:
    url = _url(s3rver, "removed.mar")
    first = via_proxy(shim.proxy_port, url, headers=_proxy_headers())
    key = first.headers["X-Shim-Task-Id"]
    assert _admin(shim, "DELETE", f"/cache/{key}")[::2] == (200, {"key": key, "removed": True})
    assert _admin(shim, "DELETE", f"/cache/{key}")[0] == 404
    again = via_proxy(shim.proxy_port, url, headers=_proxy_headers())
    assert again.headers["X-Shim-Cache"] == "MISS"
    by_url = _admin(shim, "DELETE", f"/cache?url={urllib.parse.quote(url)}")
    assert by_url[::2] == (200, {"key": key, "removed": True})
    assert _admin(shim, "DELETE", "/cache/not-a-key")[0] == 400


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/prefetch"), ("GET", "/prefetch/x"), ("DELETE", f"/cache/{'0' * 64}")],
)
def test_a_missing_or_wrong_token_is_401_and_never_logged(
    shim: ShimProcess, method: str, path: str
) -> None:
    wrong = "wrong-token-abcdefghijklmnop"
    for token in (None, wrong, TOKEN[:-1]):
        status, headers, body = _admin(shim, method, path, token=token, body=b"[]")
        assert status == 401
        assert headers["WWW-Authenticate"] == 'Bearer realm="shim-admin"'
        assert body == {"error": "missing or wrong bearer token ('Authorization: Bearer TOKEN')"}
    basic = {"Authorization": f"Basic {TOKEN}"}
    assert _admin(shim, method, path, token=None, headers=basic, body=b"[]")[0] == 401
    output = shim.output()
    assert TOKEN[:-1] not in output and wrong not in output
    assert f"admin {method} {path} from 127.0.0.1 -> 401" in output


def test_read_only_pages_need_no_token(shim: ShimProcess) -> None:
    for page in ("/healthz", "/metrics"):
        with direct_opener.open(f"{shim.admin}{page}", timeout=5) as response:
            assert response.status == 200


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b"x" * (512 * 1024 + 1), 413, "the body is larger than 524288 bytes"),
        (b"{", 400, "the body is not JSON; expected an array of URLs"),
        (b'{"urls": []}', 400, "expected a JSON array of URL strings"),
        (
            json.dumps([f"http://h/{i}" for i in range(1001)]).encode(),
            400,
            "more than 1000 URLs in one prefetch request",
        ),
    ],
)
def test_a_bad_prefetch_request_is_refused_whole(
    shim: ShimProcess, body: bytes, status: int, error: str
) -> None:
    assert _admin(shim, "POST", "/prefetch", body=body)[::2] == (status, {"error": error})


def test_without_a_configured_token_state_changing_endpoints_are_403(
    tmp_path: Path, s3rver: S3Server
) -> None:
    config = {"buckets": [s3_bucket_config(BUCKET, s3rver.endpoint)]}
    with start_shim(tmp_path, config) as tokenless:
        for method, path in (("POST", "/prefetch"), ("DELETE", f"/cache/{'0' * 64}")):
            status, _, body = _admin(tokenless, method, path, token=TOKEN, body=b"[]")
            assert status == 403
            assert "configure admin_token or admin_token_file" in body["error"]


def test_a_world_readable_token_file_stops_start_up(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o644)
    config = tmp_path / "shim.yaml"
    config.write_text(json.dumps({"admin_token_file": str(token_file)}))
    result = shim_command("run", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr == (
        f"shim: admin_token_file {token_file} is readable by every user (mode 644): chmod "
        "o-rwx it (a Kubernetes Secret volume: defaultMode 0400, or 0440 with fsGroup)\n"
    )
    assert TOKEN not in result.stderr
