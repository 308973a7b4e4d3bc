"""The running shim against the verifying GCS gateway (tests/support/gcs_gateway.py): clients
send plain, unsigned URLs through the explicit proxy or the reverse listener, and shim signs
them with google-cloud-storage, from a key in its environment or through IAM signBlob."""

from __future__ import annotations

import concurrent.futures
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from shim.providers.gcs import GcsBucket, GcsSigner
from shim.recognize import ObjectRef
from tests.support.gcs_gateway import (
    TEST_SERVICE_ACCOUNT_FILE,
    GcsGateway,
    ServiceAccount,
    account_json,
    load_service_account,
    start_gateway,
)
from tests.support.http import direct, via_proxy
from tests.support.keys import AWKWARD_KEYS
from tests.support.procs import free_port
from tests.support.shim_process import ShimProcess, start_shim

pytestmark = pytest.mark.slow

BUCKET = "models"
AMBIENT = "ambient"  # signed with Application Default Credentials, through IAM signBlob
FORGED = "forged"  # signed with another key claiming the test account: the gateway says 403
KEY_JSON = TEST_SERVICE_ACCOUNT_FILE.read_text()
ACCOUNT = load_service_account(TEST_SERVICE_ACCOUNT_FILE)
FORGED_KEY_JSON = json.dumps(
    account_json(
        ServiceAccount(
            ACCOUNT.email,
            ACCOUNT.project_id,
            "0" * 40,
            rsa.generate_private_key(public_exponent=65537, key_size=2048),
        )
    )
)
PRIVATE_KEY_LINES = [
    line
    for key_json in (KEY_JSON, FORGED_KEY_JSON)
    for line in json.loads(key_json)["private_key"].splitlines()[1:-1]
]
AWKWARD_KEYS = AWKWARD_KEYS


def gcs_bucket(gateway: GcsGateway, bucket: str = BUCKET, **fields: Any) -> dict[str, Any]:
    """A bucket on the gateway signing with the key in GOOGLE_SERVICE_ACCOUNT_JSON."""
    return {
        "provider": "gcs",
        "bucket": bucket,
        "endpoint": gateway.endpoint,
        "credentials": {"source": "env"},
        **fields,
    }


def shim_env(gateway: GcsGateway, tmp_path: Path) -> dict[str, str]:
    """The key for ``source: env``; for ``source: default``, the gateway as the metadata
    server and nothing else (no key file, no gcloud credentials)."""
    return {
        "GOOGLE_SERVICE_ACCOUNT_JSON": KEY_JSON,
        "GOOGLE_APPLICATION_CREDENTIALS": "",
        "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"),
        "GCE_METADATA_HOST": gateway.metadata_host,
        "GCE_METADATA_IP": gateway.metadata_host,
    }


def object_url(gateway: GcsGateway, key: str, bucket: str = BUCKET) -> str:
    return f"{gateway.endpoint}/{bucket}/{quote(key, safe='/')}"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcsGateway]:
    with start_gateway(tmp_path_factory.mktemp("gcs")) as server:
        yield server


@pytest.fixture(scope="module")
def reverse_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def shim(
    gateway: GcsGateway, reverse_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ShimProcess]:
    workdir = tmp_path_factory.mktemp("shim")
    ambient = {
        **gcs_bucket(gateway, AMBIENT),
        "credentials": {"source": "default", "iam_endpoint": gateway.endpoint},
    }
    forged = {
        **gcs_bucket(gateway, FORGED),
        "credentials": {"source": "static", "service_account_json": FORGED_KEY_JSON},
    }
    config = {
        "reverse": f"127.0.0.1:{reverse_port}",
        "buckets": [gcs_bucket(gateway), ambient, forged],
    }
    with start_shim(workdir, config, env=shim_env(gateway, workdir)) as process:
        # The start-up credential check (metadata server, token) is over before any test.
        checked = 'shim_bucket_credentials{bucket="ambient",provider="gcs"}'
        deadline = time.monotonic() + 20
        while checked not in process.metrics() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert process.metrics()[checked] == 1
        yield process


def _signed(gateway: GcsGateway, key: str) -> str:
    bucket = GcsBucket.model_validate(
        {
            "provider": "gcs",
            "bucket": BUCKET,
            "endpoint": gateway.endpoint,
            "credentials": {
                "source": "file",
                "service_account_file": str(TEST_SERVICE_ACCOUNT_FILE),
            },
        }
    )
    return GcsSigner(bucket, 600).sign(ObjectRef(bucket, key, (), "http"), "GET")


def test_the_gateway_refuses_unsigned_and_tampered_requests(gateway: GcsGateway) -> None:
    gateway.put(BUCKET, "strict.bin", b"strict")
    assert direct(object_url(gateway, "strict.bin")).status == 403
    signed = _signed(gateway, "strict.bin")
    assert direct(signed).status == 200
    tampered = signed[:-1] + ("0" if signed[-1] != "0" else "1")
    assert direct(tampered).status == 403


@pytest.mark.parametrize("key", AWKWARD_KEYS)
def test_awkward_keys_through_the_proxy_and_the_reverse_listener(
    shim: ShimProcess, gateway: GcsGateway, reverse_port: int, key: str
) -> None:
    body = os.urandom(70_000) + key.encode()
    gateway.put(BUCKET, key, body)
    before = len(gateway.object_requests(200))
    proxied = via_proxy(shim.proxy_port, object_url(gateway, key))
    assert proxied.status == 200, proxied.body[:300]
    assert (proxied.body, proxied.headers["X-Shim-Cache"]) == (body, "MISS")
    reverse = direct(f"http://127.0.0.1:{reverse_port}/{BUCKET}/{quote(key, safe='/')}")
    assert (reverse.status, reverse.body) == (200, body)
    # Both name one object: the reverse listener's download is the proxy's cache entry.
    assert reverse.headers["X-Shim-Cache"] == "HIT"
    assert reverse.headers["X-Shim-Task-Id"] == proxied.headers["X-Shim-Task-Id"]
    assert len(gateway.object_requests(200)) == before + 1


def test_default_credentials_sign_through_iam_in_the_running_shim(
    shim: ShimProcess, gateway: GcsGateway
) -> None:
    gateway.put(AMBIENT, "ambient model.mar", b"ambient")
    blobs_before = len(gateway.sign_blob_tokens)
    reply = via_proxy(shim.proxy_port, object_url(gateway, "ambient model.mar", AMBIENT))
    assert (reply.status, reply.body) == (200, b"ambient")
    assert len(gateway.sign_blob_tokens) == blobs_before + 1


def test_concurrent_downloads_cost_one_origin_fetch(shim: ShimProcess, gateway: GcsGateway) -> None:
    body = os.urandom(8 * 1024 * 1024)
    gateway.put(BUCKET, "popular.mar", body)
    url = object_url(gateway, "popular.mar")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda _: via_proxy(shim.proxy_port, url), range(4)))
    assert [(r.status, r.body == body) for r in replies] == [(200, True)] * 4
    fetched = [s for s in gateway.object_requests() if s.target.startswith("/models/popular.mar?")]
    assert [(s.method, s.status, s.body_bytes) for s in fetched] == [("GET", 200, len(body))]


def test_urls_signed_differently_are_one_cache_entry_and_one_origin_fetch(
    gateway: GcsGateway, tmp_path: Path
) -> None:
    """A second shim on the same cache signs with another URL lifetime (another signature):
    its download is the first one's cache entry, and the origin is not asked again."""
    body = os.urandom(300_000)
    gateway.put(BUCKET, "dir/shared model.mar", body)
    url = object_url(gateway, "dir/shared model.mar")
    replies = []
    for expires in (3600, 900):
        config = {"buckets": [gcs_bucket(gateway, presign_expires=expires)]}
        with start_shim(tmp_path, config, env=shim_env(gateway, tmp_path)) as shim:
            replies.append(via_proxy(shim.proxy_port, url))
    assert [(r.status, r.body == body) for r in replies] == [(200, True), (200, True)]
    assert [r.headers["X-Shim-Cache"] for r in replies] == ["MISS", "HIT"]
    assert replies[0].headers["X-Shim-Task-Id"] == replies[1].headers["X-Shim-Task-Id"]
    fetched = [s for s in gateway.object_requests() if "/shared%20model.mar?" in s.target]
    assert len(fetched) == 1
    entries = [p for p in (tmp_path / "cache" / "objects").glob("*/*") if p.suffix != ".json"]
    assert len(entries) == 1


def test_missing_credentials_are_reported_at_start_up(gateway: GcsGateway, tmp_path: Path) -> None:
    no_file = {"source": "file", "service_account_file": str(tmp_path / "absent-key.json")}
    config = {
        "buckets": [
            gcs_bucket(gateway),
            gcs_bucket(gateway, "keyfile-missing", credentials=no_file),
            gcs_bucket(gateway, "no-default", credentials={"source": "default"}),
        ]
    }
    env = {
        **shim_env(gateway, tmp_path),
        "GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "absent-adc.json"),
    }
    with start_shim(tmp_path, config, env=env) as shim:
        deadline = time.monotonic() + 20
        while "'no-default' (gcs)" not in shim.output() and time.monotonic() < deadline:
            time.sleep(0.1)
        output = shim.output()
        metrics = shim.metrics()
        gateway.put("keyfile-missing", "m.mar", b"m")
        refused = via_proxy(shim.proxy_port, object_url(gateway, "m.mar", "keyfile-missing"))
    (file_line,) = [line for line in output.splitlines() if "'keyfile-missing' (gcs)" in line]
    assert "cannot read the service account key file" in file_line
    assert "absent-key.json" in file_line
    assert "No such file" in file_line
    (default_line,) = [line for line in output.splitlines() if "'no-default' (gcs)" in line]
    assert "no Google default credentials found" in default_line
    assert metrics['shim_bucket_credentials{bucket="keyfile-missing",provider="gcs"}'] == 0
    assert metrics['shim_bucket_credentials{bucket="no-default",provider="gcs"}'] == 0
    assert metrics['shim_bucket_credentials{bucket="models",provider="gcs"}'] == 1
    assert (refused.status, refused.headers["X-Shim-Error"]) == (502, "signing")


def test_no_private_key_or_signature_in_the_log_or_error_bodies(
    shim: ShimProcess, gateway: GcsGateway
) -> None:
    gateway.put(BUCKET, "logged.mar", b"logged")
    assert via_proxy(shim.proxy_port, object_url(gateway, "logged.mar")).status == 200
    missing = via_proxy(shim.proxy_port, object_url(gateway, "absent.mar"))
    assert missing.status == 404
    # GCS echoes the string to sign and canonical request of a signature that does not match.
    gateway.put(FORGED, "forged.mar", b"forged")
    mismatch = via_proxy(shim.proxy_port, object_url(gateway, "forged.mar", FORGED))
    assert mismatch.status == 403
    assert b"<Code>SignatureDoesNotMatch</Code>" in mismatch.body
    assert b"<StringToSign>REDACTED</StringToSign>" in mismatch.body
    assert b"<CanonicalRequest>REDACTED</CanonicalRequest>" in mismatch.body
    signatures = {
        value
        for served in gateway.object_requests()
        for value in parse_qs(urlsplit(served.target).query).get("X-Goog-Signature", [])
    }
    assert signatures
    output = shim.output()
    assert [line for line in PRIVATE_KEY_LINES if line in output] == []
    assert [signature for signature in signatures if signature in output] == []
    for reply in (missing, mismatch):
        assert [s for s in signatures if s.encode() in reply.body] == []
        assert ACCOUNT.email.encode() not in reply.body
    assert [token for token in gateway.sign_blob_tokens if token in output] == []
