"""The running shim against the verifying OSS gateway (V1, V4 and STS signatures checked as
Alibaba specifies, cross-checked with three official SDKs in tests/providers/test_oss_verifier.py).

Clients send plain, unsigned URLs, through the explicit proxy or to the reverse listener, as
TorchServe does; shim signs them with oss2.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import oss2  # type: ignore[import-untyped]
import pytest

from tests.support.http import Reply, direct, via_proxy
from tests.support.oss_gateway import (
    ACCESS_KEY_ID,
    ACCESS_KEY_SECRET,
    AWKWARD_KEYS,
    REGION,
    STS_ACCESS_KEY_ID,
    STS_ACCESS_KEY_SECRET,
    STS_TOKEN,
    OssGateway,
)
from tests.support.procs import direct_opener, free_port
from tests.support.shim_process import ShimProcess, start_shim

pytestmark = pytest.mark.slow

# bucket -> (region, credentials config): V4, V1, STS from the environment, a wrong secret.
STATIC = {
    "source": "static",
    "access_key_id": ACCESS_KEY_ID,
    "access_key_secret": ACCESS_KEY_SECRET,
}
BUCKETS: dict[str, tuple[str | None, dict[str, Any]]] = {
    "models-v4": (REGION, STATIC),
    "models-v1": (None, STATIC),
    "models-sts": (REGION, {"source": "env"}),
    "models-wrong": (REGION, {**STATIC, "access_key_secret": "wrong-secret"}),
}
STS_ENV = {
    "OSS_ACCESS_KEY_ID": STS_ACCESS_KEY_ID,
    "OSS_ACCESS_KEY_SECRET": STS_ACCESS_KEY_SECRET,
    "OSS_SESSION_TOKEN": STS_TOKEN,
}
SIGNING = ["models-v4", "models-v1", "models-sts"]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OssGateway]:
    with OssGateway(tmp_path_factory.mktemp("oss")) as running:
        for bucket in BUCKETS:
            running.create_bucket(bucket)
        yield running


@pytest.fixture(scope="module")
def reverse_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def shim(
    gateway: OssGateway, reverse_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ShimProcess]:
    buckets = [
        {
            "provider": "oss",
            "bucket": name,
            "endpoint": gateway.endpoint,
            "credentials": credentials,
            **({"region": region} if region else {}),
        }
        for name, (region, credentials) in BUCKETS.items()
    ]
    config = {"reverse": f"127.0.0.1:{reverse_port}", "buckets": buckets}
    with start_shim(tmp_path_factory.mktemp("shim"), config, env=STS_ENV) as process:
        yield process


def cache_files(shim: ShimProcess) -> list[Path]:
    return sorted(p for p in (shim.cache_dir / "objects").glob("*/*") if p.suffix != ".json")


def test_the_gateway_refuses_unsigned_and_tampered_requests(gateway: OssGateway) -> None:
    gateway.put("models-v4", "strict.mar", b"x" * 100)
    assert direct(gateway.url("models-v4", "strict.mar")).status == 403
    auth = oss2.AuthV4(ACCESS_KEY_ID, ACCESS_KEY_SECRET)
    client = oss2.Bucket(auth, gateway.endpoint, "models-v4", region=REGION)
    signed: str = client.sign_url("GET", "strict.mar", 60)
    assert direct(signed).status == 200
    tampered = signed[:-1] + ("0" if signed[-1] != "0" else "1")
    assert direct(tampered).status == 403


@pytest.mark.parametrize("bucket", SIGNING)
def test_awkward_keys_are_byte_identical_through_proxy_and_reverse(
    shim: ShimProcess, gateway: OssGateway, reverse_port: int, bucket: str
) -> None:
    for key in AWKWARD_KEYS:
        body = os.urandom(50_000) + key.encode()
        gateway.put(bucket, key, body)
        proxied = via_proxy(shim.proxy_port, gateway.url(bucket, key))
        assert (proxied.status, proxied.body) == (200, body), (key, proxied.body[:300])
        assert proxied.headers["X-Shim-Cache"] == "MISS"
        reverse = direct(f"http://127.0.0.1:{reverse_port}/{bucket}/{quote(key, safe='/')}")
        assert (reverse.status, reverse.body) == (200, body), key
        assert reverse.headers["X-Shim-Cache"] == "HIT"
        assert reverse.headers["X-Shim-Task-Id"] == proxied.headers["X-Shim-Task-Id"]
        assert len(gateway.fetches(bucket, key)) == 1


def test_a_virtual_hosted_oss_url_is_signed_towards_the_endpoint(
    shim: ShimProcess, gateway: OssGateway
) -> None:
    body = os.urandom(10_000)
    gateway.put("models-v4", "dir/virtual host.mar", body)
    url = f"http://models-v4.oss-{REGION}.aliyuncs.com/dir/virtual%20host.mar"
    reply = via_proxy(shim.proxy_port, url)
    assert (reply.status, reply.body) == (200, body)


def test_two_downloads_are_one_cache_entry_and_one_origin_fetch(
    shim: ShimProcess, gateway: OssGateway
) -> None:
    body = os.urandom(2 * 1024 * 1024)
    key = "popular/model v2+.mar"
    gateway.put("models-v1", key, body)
    entries_before = len(cache_files(shim))
    url = gateway.url("models-v1", key)
    first, second = via_proxy(shim.proxy_port, url), via_proxy(shim.proxy_port, url)
    assert (first.body, second.body) == (body, body)
    assert [first.headers["X-Shim-Cache"], second.headers["X-Shim-Cache"]] == ["MISS", "HIT"]
    assert first.headers["X-Shim-Task-Id"] == second.headers["X-Shim-Task-Id"]
    assert len(gateway.fetches("models-v1", key)) == 1
    assert len(cache_files(shim)) == entries_before + 1
    # A range of the cached object comes from the cache too.
    part = via_proxy(shim.proxy_port, url, headers={"Range": "bytes=100-199"})
    assert (part.status, part.body) == (206, body[100:200])
    assert len(gateway.fetches("models-v1", key)) == 1


def test_a_refused_signature_passes_the_403_through_redacted(
    shim: ShimProcess, gateway: OssGateway
) -> None:
    gateway.put("models-wrong", "m.mar", b"m")
    reply = via_proxy(shim.proxy_port, gateway.url("models-wrong", "m.mar"))
    assert reply.status == 403
    assert b"<Code>SignatureDoesNotMatch</Code>" in reply.body
    # The gateway echoed the key ID, the string to sign and the signature, as OSS does.
    (refused,) = [s for s in gateway.served if s.bucket == "models-wrong"]
    assert "x-oss-signature=" in refused.query
    assert ACCESS_KEY_ID.encode() not in reply.body
    assert b"OSS4-HMAC-SHA256\n" not in reply.body
    assert [v for v in _signature_values([refused.query]) if v.encode() in reply.body] == []
    for element in (b"OSSAccessKeyId", b"SignatureProvided", b"StringToSign"):
        assert b"<%s>REDACTED</%s>" % (element, element) in reply.body


def _signature_values(queries: list[str]) -> set[str]:
    """The secret values of the signed queries shim sent: signatures, credentials, tokens."""
    secret = {"Signature", "x-oss-signature", "x-oss-credential", "security-token"}
    secret |= {"x-oss-security-token", "OSSAccessKeyId"}
    values = set()
    for query in queries:
        for piece in query.split("&"):
            name, _, value = piece.partition("=")
            if unquote(name) in secret and value:
                values |= {value, unquote(value)}
    return values


def test_no_secret_or_signature_in_shims_output_metrics_or_errors(
    shim: ShimProcess, gateway: OssGateway
) -> None:
    replies: list[Reply] = []
    for bucket in BUCKETS:
        gateway.put(bucket, "scan.mar", b"scan")
        replies.append(via_proxy(shim.proxy_port, gateway.url(bucket, "scan.mar")))
        replies.append(via_proxy(shim.proxy_port, gateway.url(bucket, "absent.mar")))
    assert sorted(r.status for r in replies) == [200, 200, 200, 403, 403, 404, 404, 404]
    signed = [s.query for s in gateway.served if "scan" in s.key or "absent" in s.key]
    produced = _signature_values(signed)
    assert len(produced) >= 8
    secrets = {
        ACCESS_KEY_ID,
        ACCESS_KEY_SECRET,
        STS_ACCESS_KEY_ID,
        STS_ACCESS_KEY_SECRET,
        STS_TOKEN,
    }
    secrets |= {"wrong-secret", *produced}
    with direct_opener.open(f"{shim.admin}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    for text in (shim.output(), metrics):
        assert [secret for secret in secrets if secret in text] == []
    for reply in replies:
        if reply.status != 200:
            assert [s for s in secrets if s.encode() in reply.body] == []
