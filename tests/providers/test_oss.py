"""The OSS provider: config, URL shapes, and URLs signed through oss2 that the verifying OSS
gateway (tests/support/oss_gateway.py, checked against three official SDKs) accepts."""

from __future__ import annotations

import http.server
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import pytest

from shim._errors import ConfigError, RequestError, SigningError
from shim.config import dragonfly_endpoint_to_mapping, settings_from_mapping
from shim.identity import filtered_params, identify
from shim.providers import PROVIDERS
from shim.providers.oss import OssBucket, OssSigner
from shim.recognize import ObjectRef, recognize
from tests.support.http import Reply, direct
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
from tests.support.oss_verify import Credential

BUCKET = "models"
PROVIDER = PROVIDERS["oss"]


def _bucket(**fields: Any) -> OssBucket:
    raw: dict[str, Any] = {
        "provider": "oss",
        "bucket": BUCKET,
        "region": REGION,
        "credentials": {
            "source": "static",
            "access_key_id": ACCESS_KEY_ID,
            "access_key_secret": ACCESS_KEY_SECRET,
        },
        **fields,
    }
    return OssBucket.model_validate(raw)


def _settings_bucket(bucket: dict[str, Any], env: dict[str, str] | None = None) -> OssBucket:
    settings = settings_from_mapping({"buckets": [bucket]}, env=env or {})
    (only,) = settings.buckets
    assert isinstance(only, OssBucket)
    return only


def _query(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))


# -- config ---------------------------------------------------------------------------------------


def test_region_means_v4_on_the_regional_endpoint() -> None:
    bucket = _bucket(region="oss-cn-shanghai")  # ali-oss's spelling of the region
    assert bucket.region == "cn-shanghai"
    assert bucket.endpoint_url("https") == "https://oss-cn-shanghai.aliyuncs.com"
    url = OssSigner(bucket, 900).sign(ObjectRef(bucket, "a/b c.bin", (), "https"), "GET")
    assert url.startswith("https://models.oss-cn-shanghai.aliyuncs.com/a/b%20c.bin?")
    query = _query(url)
    assert query["x-oss-signature-version"] == "OSS4-HMAC-SHA256"
    assert query["x-oss-credential"].split("/")[2:] == ["cn-shanghai", "oss", "aliyun_v4_request"]
    assert query["x-oss-expires"] == "900"
    assert set(query) <= PROVIDER.signature_params


def test_no_region_means_v1_on_the_endpoint() -> None:
    bucket = _bucket(region=None, endpoint="oss-cn-beijing.aliyuncs.com")
    assert bucket.endpoint == "https://oss-cn-beijing.aliyuncs.com"
    url = OssSigner(bucket, 900).sign(ObjectRef(bucket, "m.bin", (), "http"), "GET")
    assert url.startswith("https://models.oss-cn-beijing.aliyuncs.com/m.bin?")
    assert set(_query(url)) == {"OSSAccessKeyId", "Expires", "Signature"}
    assert int(_query(url)["Expires"]) - time.time() == pytest.approx(900, abs=5)


@pytest.mark.parametrize(
    ("upgrade_http", "client_scheme", "origin_scheme"),
    [(True, "http", "https"), (True, "https", "https"), (False, "http", "http")],
)
def test_default_endpoint_scheme_follows_upgrade_http(
    upgrade_http: bool, client_scheme: str, origin_scheme: str
) -> None:
    bucket = _bucket(upgrade_http=upgrade_http)
    url = OssSigner(bucket, 900).sign(ObjectRef(bucket, "m.bin", (), client_scheme), "GET")
    assert urlsplit(url).scheme == origin_scheme


def test_neither_region_nor_endpoint_is_a_config_error() -> None:
    credentials = {"source": "static", "access_key_id": "a", "access_key_secret": "b"}
    with pytest.raises(ConfigError, match=r"buckets\[0\].*set region"):
        _settings_bucket({"provider": "oss", "bucket": BUCKET, "credentials": credentials})


@pytest.mark.parametrize("name", ["x", "Models", "under_score", "-models", "models-", "a" * 64])
def test_an_invalid_bucket_name_is_a_config_error(name: str) -> None:
    with pytest.raises(ConfigError, match=r"buckets\[0\]\.bucket: .*3 to 63"):
        settings_from_mapping(
            {"buckets": [{"provider": "oss", "bucket": name, "region": REGION}]},
            env={"OSS_ACCESS_KEY_ID": "a", "OSS_ACCESS_KEY_SECRET": "b"},
        )


@pytest.mark.parametrize(
    ("credentials", "message"),
    [
        ({"source": "static", "access_key_id": "a"}, "needs both"),
        ({"source": "ecs_ram_role"}, "needs role_name"),
        ({"source": "default"}, "source"),
    ],
)
def test_incomplete_credentials_are_config_errors(
    credentials: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        _settings_bucket(
            {"provider": "oss", "bucket": BUCKET, "region": REGION, "credentials": credentials}
        )


def test_env_is_the_default_source_with_oss2s_variable_names() -> None:
    env = {
        "OSS_ACCESS_KEY_ID": STS_ACCESS_KEY_ID,
        "OSS_ACCESS_KEY_SECRET": STS_ACCESS_KEY_SECRET,
        "OSS_SESSION_TOKEN": STS_TOKEN,
    }
    bucket = _settings_bucket({"provider": "oss", "bucket": BUCKET, "region": REGION}, env)
    creds = bucket.credentials
    assert creds.source == "static"
    assert creds.access_key_id is not None and creds.security_token is not None
    assert creds.access_key_id.get_secret_value() == STS_ACCESS_KEY_ID
    assert creds.security_token.get_secret_value() == STS_TOKEN
    for secret in (STS_ACCESS_KEY_SECRET, STS_TOKEN):
        assert secret not in repr(bucket)
        assert secret not in str(bucket.model_dump())


def test_env_variable_names_can_be_chosen() -> None:
    raw = {
        "provider": "oss",
        "bucket": BUCKET,
        "region": REGION,
        "credentials": {
            "source": "env",
            "access_key_id_env": "MY_ID",
            "access_key_secret_env": "MY_SECRET",
        },
    }
    bucket = _settings_bucket(raw, {"MY_ID": "id", "MY_SECRET": "secret"})
    assert bucket.credentials.access_key_secret is not None
    assert bucket.credentials.access_key_secret.get_secret_value() == "secret"
    assert bucket.credentials.security_token is None


def test_missing_env_variable_names_it() -> None:
    with pytest.raises(ConfigError) as info:
        _settings_bucket({"provider": "oss", "bucket": BUCKET, "region": REGION}, {})
    assert "buckets[0].credentials.access_key_id_env" in str(info.value)
    assert "'OSS_ACCESS_KEY_ID'" in str(info.value)


def test_dragonfly_endpoint_oss_config_maps_unchanged() -> None:
    doc = {
        "addr": "http://127.0.0.1:4001",
        "filter": "a&b",
        "object_storage": {
            "type": "oss",
            "bucket_name": BUCKET,
            "endpoint": "https://oss-cn-hangzhou.aliyuncs.com",
            "access_key_id": ACCESS_KEY_ID,
            "access_key_secret": ACCESS_KEY_SECRET,
        },
    }
    settings = settings_from_mapping(dragonfly_endpoint_to_mapping(doc, "config.json"), env={})
    (bucket,) = settings.buckets
    assert isinstance(bucket, OssBucket)
    assert (bucket.bucket, bucket.endpoint, bucket.region) == (
        BUCKET,
        "https://oss-cn-hangzhou.aliyuncs.com",
        None,
    )
    assert bucket.credentials.access_key_secret is not None
    assert bucket.credentials.access_key_secret.get_secret_value() == ACCESS_KEY_SECRET
    doc["object_storage"]["region"] = "cn-hangzhou"  # type: ignore[index]
    settings = settings_from_mapping(dragonfly_endpoint_to_mapping(doc, "config.json"), env={})
    assert settings.buckets[0].region == "cn-hangzhou"  # type: ignore[union-attr]


def test_parameters_and_checksums() -> None:
    assert PROVIDER.dragonfly_type == "oss"
    assert {"versionId", "response-content-type"} <= PROVIDER.object_params
    for name in ("OSSAccessKeyId", "Signature", "security-token", "x-oss-signature"):
        assert name in PROVIDER.signature_params - PROVIDER.public_params
    assert "x-oss-hash-crc64ecma" in PROVIDER.checksum_headers
    assert filtered_params("oss") == tuple(sorted(PROVIDER.signature_params))


# -- recognition ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://models.oss-cn-hangzhou.aliyuncs.com/dir/a%20b.mar",
        "http://models.oss-cn-hangzhou.aliyuncs.com/dir/a%20b.mar",
        "https://models.oss-cn-hangzhou-internal.aliyuncs.com/dir/a%20b.mar",
        "https://models.oss-accelerate.aliyuncs.com/dir/a%20b.mar",
        "https://models.oss-accelerate-overseas.aliyuncs.com/dir/a%20b.mar",
        "https://models.oss.example.com:8443/dir/a%20b.mar",
        "https://oss.example.com:8443/models/dir/a%20b.mar",
        "https://cdn.example.org/dir/a%20b.mar",
    ],
)
def test_every_url_shape_names_the_object(url: str) -> None:
    bucket = _bucket(endpoint="https://oss.example.com:8443", hosts=["cdn.example.org"])
    ref = recognize(url, [bucket])
    assert ref is not None
    assert (ref.bucket, ref.key) == (bucket, "dir/a b.mar")


@pytest.mark.parametrize(
    "url",
    [
        "https://other.oss-cn-hangzhou.aliyuncs.com/a.mar",  # another bucket
        "https://models.oss-cn-beijing.aliyuncs.com/a.mar",  # another region
        "https://oss-cn-hangzhou.aliyuncs.com/models/a.mar",  # OSS has no path style
        "https://models.s3.amazonaws.com/a.mar",
        "https://oss.example.com:8443/other/a.mar",
    ],
)
def test_other_urls_are_not_this_bucket(url: str) -> None:
    bucket = _bucket(endpoint="https://oss.example.com:8443")
    assert recognize(url, [bucket]) is None


def test_without_a_region_the_endpoint_and_accelerate_hosts_are_routed() -> None:
    bucket = _bucket(region=None, endpoint="http://127.0.0.1:9000")
    assert recognize("http://127.0.0.1:9000/models/a.mar", [bucket]) is not None
    assert recognize("https://models.oss-accelerate.aliyuncs.com/a.mar", [bucket]) is not None
    assert recognize("https://models.oss-cn-hangzhou.aliyuncs.com/a.mar", [bucket]) is None


def test_object_params_are_kept_and_signature_params_dropped() -> None:
    bucket = _bucket()
    url = (
        "https://models.oss-cn-hangzhou.aliyuncs.com/a.mar?versionId=v1&OSSAccessKeyId=x"
        "&Expires=1&Signature=s&security-token=t&response-content-type=text%2Fplain"
        "&x-oss-signature=s&x-oss-credential=c&x-oss-date=d&x-oss-expires=1"
    )
    ref = recognize(url, [bucket])
    assert ref is not None
    assert ref.params == (("versionId", "v1"), ("response-content-type", "text/plain"))


# -- signing against the verifying gateway --------------------------------------------------------


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[OssGateway]:
    with OssGateway(tmp_path / "store") as running:
        running.create_bucket(BUCKET)
        yield running


# (region, access key, secret, token): V1 and V4, each with a permanent and an STS key.
SIGNINGS = {
    "v1": (None, ACCESS_KEY_ID, ACCESS_KEY_SECRET, None),
    "v4": (REGION, ACCESS_KEY_ID, ACCESS_KEY_SECRET, None),
    "v1-sts": (None, STS_ACCESS_KEY_ID, STS_ACCESS_KEY_SECRET, STS_TOKEN),
    "v4-sts": (REGION, STS_ACCESS_KEY_ID, STS_ACCESS_KEY_SECRET, STS_TOKEN),
}


def _gateway_bucket(gateway: OssGateway, signing: str, **fields: Any) -> OssBucket:
    region, akid, secret, token = SIGNINGS[signing]
    credentials = {"source": "static", "access_key_id": akid, "access_key_secret": secret}
    if token:
        credentials["security_token"] = token
    return _bucket(region=region, endpoint=gateway.endpoint, credentials=credentials, **fields)


def _sign_client_url(bucket: OssBucket, url: str, method: str = "GET", expires: int = 600) -> str:
    """What shim does with a client's URL: recognise it, then sign the object it names."""
    ref = recognize(url, [bucket])
    assert ref is not None
    return PROVIDER.signer(bucket, expires).sign(ref, method)


def _flip_signature(url: str) -> str:
    head, _, query = url.partition("?")
    pieces = []
    for piece in query.split("&"):
        name, _, value = piece.partition("=")
        if name in ("Signature", "x-oss-signature"):
            value = ("A" if value[0] != "A" else "B") + value[1:]
        pieces.append(f"{name}={value}")
    return f"{head}?{'&'.join(pieces)}"


each_signing = pytest.mark.parametrize("signing", list(SIGNINGS))


@pytest.mark.origin
@each_signing
def test_signed_urls_fetch_awkward_keys_byte_identical(gateway: OssGateway, signing: str) -> None:
    bucket = _gateway_bucket(gateway, signing)
    for key in AWKWARD_KEYS:
        body = os.urandom(3000) + key.encode()
        gateway.put(BUCKET, key, body)
        signed = _sign_client_url(bucket, gateway.url(BUCKET, key))
        reply = direct(signed)
        assert (reply.status, reply.body) == (200, body), (key, reply.body[:300])
        token_param = "x-oss-security-token" if bucket.region else "security-token"
        assert (token_param in _query(signed)) == signing.endswith("sts")


@pytest.mark.origin
@each_signing
def test_tampered_unsigned_and_expired_urls_are_refused(gateway: OssGateway, signing: str) -> None:
    gateway.put(BUCKET, "strict.mar", b"s" * 100)
    bucket = _gateway_bucket(gateway, signing)
    signed = _sign_client_url(bucket, gateway.url(BUCKET, "strict.mar"), expires=60)
    assert direct(signed).status == 200
    refused: list[Reply] = [
        direct(_flip_signature(signed)),
        direct(gateway.url(BUCKET, "strict.mar")),
        direct(signed, method="HEAD"),
        direct(signed.replace("strict.mar", "strict.max")),
    ]
    gateway.clock = lambda: time.time() + 120
    refused.append(direct(signed))
    assert [r.status for r in refused] == [403] * len(refused)
    assert b"<Code>" in refused[0].body


@pytest.mark.origin
@each_signing
def test_head_and_params_are_signed(gateway: OssGateway, signing: str) -> None:
    body = os.urandom(5000)
    gateway.put(BUCKET, "dir/m.mar", body)
    bucket = _gateway_bucket(gateway, signing)
    url = gateway.url(BUCKET, "dir/m.mar")
    head = direct(_sign_client_url(bucket, url, "HEAD"), method="HEAD")
    assert (head.status, head.headers["Content-Length"], head.body) == (200, "5000", b"")
    shaped = _sign_client_url(bucket, url + "?response-content-type=text%2Fplain%3B%20x%3D1")
    reply = direct(shaped)
    assert (reply.status, reply.body) == (200, body)
    assert reply.headers["Content-Type"] == "text/plain; x=1"
    # A version that does not exist: the signature is good, the store says 404.
    missing = direct(_sign_client_url(bucket, url + "?versionId=v-nonexistent"))
    assert missing.status == 404
    assert b"NoSuchVersion" in missing.body


@pytest.mark.origin
def test_wrong_secret_or_missing_token_is_refused(gateway: OssGateway) -> None:
    gateway.put(BUCKET, "m.mar", b"m")
    url = gateway.url(BUCKET, "m.mar")
    wrong_secret = {"source": "static", "access_key_id": ACCESS_KEY_ID, "access_key_secret": "no"}
    no_token = {
        "source": "static",
        "access_key_id": STS_ACCESS_KEY_ID,
        "access_key_secret": STS_ACCESS_KEY_SECRET,
    }
    for region in (None, REGION):
        for credentials in (wrong_secret, no_token):
            bucket = _bucket(region=region, endpoint=gateway.endpoint, credentials=credentials)
            assert direct(_sign_client_url(bucket, url)).status == 403


@pytest.mark.origin
def test_urls_signed_at_different_times_are_one_task(gateway: OssGateway) -> None:
    gateway.put(BUCKET, "dir/a b+c.mar", b"x" * 10)
    url = gateway.url(BUCKET, "dir/a b+c.mar")
    buckets = [_gateway_bucket(gateway, signing) for signing in SIGNINGS]
    first = [_sign_client_url(bucket, url) for bucket in buckets]
    time.sleep(1.1)  # V1 Expires and V4 x-oss-date count whole seconds
    second = [_sign_client_url(bucket, url) for bucket in buckets]
    urls = first + second
    assert len(set(urls)) == len(urls)
    assert all(direct(signed).status == 200 for signed in urls)
    identities = {identify(signed, filtered_params("oss")) for signed in urls}
    assert len(identities) == 1
    (identity,) = identities
    assert identity.url == f"{gateway.endpoint}/models/dir/a%20b%2Bc.mar"


# -- credentials ----------------------------------------------------------------------------------


def test_env_credentials_left_unread_are_a_signing_error() -> None:
    bucket = OssBucket.model_validate({"provider": "oss", "bucket": BUCKET, "region": REGION})
    signer = OssSigner(bucket, 600)
    with pytest.raises(SigningError, match=r"'models'.*environment"):
        signer.check()
    with pytest.raises(SigningError, match="'models'"):
        signer.sign(ObjectRef(bucket, "a.mar", (), "https"), "GET")


def test_whitespace_key_is_a_request_error() -> None:
    bucket = _bucket()
    with pytest.raises(RequestError, match="whitespace"):
        OssSigner(bucket, 600).sign(ObjectRef(bucket, " ", (), "https"), "GET")


class _Metadata:
    """An ECS metadata service on loopback answering for one RAM role; ``answer`` may change."""

    def __init__(self, role: str) -> None:
        self.answer: dict[str, str] = {}
        self.status = 200
        self.requests = 0
        metadata = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                metadata.requests += 1
                found = self.path == f"/latest/meta-data/ram/security-credentials/{role}"
                body = json.dumps(metadata.answer).encode() if found else b"not found"
                self.send_response(metadata.status if found else 404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def issue(self, akid: str, secret: str, token: str, *, lasts: int, age: int) -> None:
        """Credentials valid ``lasts`` seconds in all, issued ``age`` seconds ago."""
        now = time.time()
        stamp = "%Y-%m-%dT%H:%M:%SZ"
        self.answer = {
            "Code": "Success",
            "AccessKeyId": akid,
            "AccessKeySecret": secret,
            "SecurityToken": token,
            "Expiration": time.strftime(stamp, time.gmtime(now - age + lasts)),
            "LastUpdated": time.strftime(stamp, time.gmtime(now - age)),
        }


@pytest.fixture
def metadata() -> Iterator[_Metadata]:
    service = _Metadata("shim-role")
    yield service
    service.server.shutdown()
    service.server.server_close()


@pytest.mark.origin
def test_ecs_ram_role_credentials_are_used_and_renewed(
    gateway: OssGateway, metadata: _Metadata
) -> None:
    gateway.put(BUCKET, "m.mar", b"ecs")
    # The first credentials have lived most of their hour: oss2 renews them on next use.
    metadata.issue("STS.first", "first-secret", "token/one+", lasts=3600, age=3500)
    gateway.credentials["STS.first"] = Credential("first-secret", "token/one+")
    credentials = {
        "source": "ecs_ram_role",
        "role_name": "shim-role",
        "metadata_endpoint": metadata.endpoint,
    }
    bucket = _bucket(endpoint=gateway.endpoint, credentials=credentials)
    signer = OssSigner(bucket, 600)
    signer.check()
    ref = ObjectRef(bucket, "m.mar", (), "http")
    first = signer.sign(ref, "GET")
    assert _query(first)["x-oss-security-token"] == "token/one+"
    assert direct(first).body == b"ecs"
    # The role's credentials rotate; the old ones stop working.
    metadata.issue("STS.second", "second-secret", "token-two", lasts=3600, age=0)
    gateway.credentials = {"STS.second": Credential("second-secret", "token-two")}
    second = signer.sign(ref, "GET")
    assert _query(second)["x-oss-credential"].startswith("STS.second/")
    assert direct(second).body == b"ecs"
    # Fresh credentials are kept, not fetched for every URL.
    asked = metadata.requests
    signer.sign(ref, "GET")
    assert metadata.requests == asked


@pytest.mark.origin
def test_ecs_ram_role_failure_is_a_signing_error_without_secrets(metadata: _Metadata) -> None:
    metadata.issue("STS.x", "leaky-secret", "leaky-token", lasts=3600, age=0)
    metadata.answer["Code"] = "Failure"
    credentials = {
        "source": "ecs_ram_role",
        "role_name": "shim-role",
        "metadata_endpoint": metadata.endpoint,
    }
    bucket = _bucket(credentials=credentials)
    with pytest.raises(SigningError) as info:
        OssSigner(bucket, 600).check()
    assert "'models'" in str(info.value)
    assert "leaky" not in str(info.value)
    assert info.value.__cause__ is None
    unknown_role = _bucket(credentials={**credentials, "role_name": "no-such-role"})
    with pytest.raises(SigningError, match="'models'"):
        OssSigner(unknown_role, 600).check()


def test_signed_key_is_quoted_once_and_keeps_slashes() -> None:
    bucket = _bucket()
    for key in AWKWARD_KEYS:
        url = OssSigner(bucket, 600).sign(ObjectRef(bucket, key, (), "https"), "GET")
        assert urlsplit(url).path == "/" + quote(key, safe="/~")
        again = recognize(url, [bucket])
        assert again is not None
        assert again.key == key
