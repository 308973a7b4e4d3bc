"""S3Signer: SigV4 presigned URLs for a configured bucket."""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import pytest

from shim._errors import SigningError
from shim.providers import PROVIDERS
from shim.providers.s3 import SIGNATURE_PARAMS, S3Bucket, S3Signer
from shim.recognize import ObjectRef, recognize
from tests.support.servers import put_object, s3_client, start_s3rver

ACCESS_KEY = "AKIDEXAMPLESIGNER"
SECRET_KEY = "wJalrXUtnFEMI-signer-secret"
SESSION_TOKEN = "session-token-value"


def _bucket(**fields: Any) -> S3Bucket:
    raw: dict[str, Any] = {
        "provider": "s3",
        "bucket": "models",
        "credentials": {
            "source": "static",
            "access_key_id": ACCESS_KEY,
            "secret_access_key": SECRET_KEY,
        },
        **fields,
    }
    return S3Bucket.model_validate(raw)


def _sign(
    bucket: S3Bucket,
    key: str = "dir/model.bin",
    *,
    params: tuple[tuple[str, str], ...] = (),
    scheme: str = "https",
    method: str = "GET",
    expires: int = 3600,
) -> str:
    return S3Signer(bucket, expires).sign(ObjectRef(bucket, key, params, scheme), method)


def _query(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))


@pytest.fixture
def no_aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An environment where boto3's default chain finds nothing and probes no network."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "BOTO_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("expires", [60, 900, 604800])
def test_sigv4_query_params_are_present(method: str, expires: int) -> None:
    url = _sign(_bucket(region="eu-central-1"), method=method, expires=expires)
    query = _query(url)
    assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert query["X-Amz-Expires"] == str(expires)
    assert query["X-Amz-SignedHeaders"] == "host"
    access_key, _date, region, service, terminator = query["X-Amz-Credential"].split("/")
    assert (access_key, region, service, terminator) == (
        ACCESS_KEY,
        "eu-central-1",
        "s3",
        "aws4_request",
    )
    assert len(query["X-Amz-Signature"]) == 64
    assert set(query) <= SIGNATURE_PARAMS


def test_get_and_head_signatures_differ() -> None:
    bucket = _bucket()
    get = _query(_sign(bucket, method="GET"))["X-Amz-Signature"]
    head = _query(_sign(bucket, method="HEAD"))["X-Amz-Signature"]
    assert get != head


def test_session_token_is_signed_in() -> None:
    bucket = _bucket(
        credentials={
            "source": "static",
            "access_key_id": ACCESS_KEY,
            "secret_access_key": SECRET_KEY,
            "session_token": SESSION_TOKEN,
        }
    )
    assert _query(_sign(bucket))["X-Amz-Security-Token"] == SESSION_TOKEN


def test_secret_key_never_appears_in_the_url() -> None:
    assert SECRET_KEY not in unquote(_sign(_bucket()))


@pytest.mark.parametrize(
    "endpoint", ["http://minio.local:9000", "https://obs.example.com", "https://10.0.0.5:8443"]
)
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_custom_endpoint_is_used_verbatim(endpoint: str, scheme: str) -> None:
    url = _sign(_bucket(endpoint=endpoint, addressing_style="path"), scheme=scheme)
    assert url.startswith(f"{endpoint}/models/dir/model.bin?")


def test_custom_endpoint_virtual_addressing_puts_bucket_in_host() -> None:
    url = _sign(_bucket(endpoint="https://obs.example.com", addressing_style="virtual"))
    assert url.startswith("https://models.obs.example.com/dir/model.bin?")


@pytest.mark.parametrize(
    ("upgrade_http", "client_scheme", "origin_scheme"),
    [
        (True, "https", "https"),
        (True, "http", "https"),
        (False, "https", "https"),
        (False, "http", "http"),
    ],
)
def test_aws_bucket_scheme_follows_upgrade_http(
    upgrade_http: bool, client_scheme: str, origin_scheme: str
) -> None:
    bucket = _bucket(region="eu-west-1", upgrade_http=upgrade_http)
    parts = urlsplit(_sign(bucket, scheme=client_scheme))
    assert parts.scheme == origin_scheme
    assert parts.hostname is not None
    assert parts.hostname.endswith("s3.eu-west-1.amazonaws.com")


def test_aws_bucket_signature_recognised_again_as_the_same_object() -> None:
    bucket = _bucket(region="eu-west-1")
    ref = ObjectRef(bucket, "dir/a b.bin", (("versionId", "v1"),), "https")
    url = S3Signer(bucket, 3600).sign(ref, "GET")
    assert recognize(url, [bucket]) == ref


def test_version_id_and_response_params_pass_through() -> None:
    params = (
        ("versionId", "3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY"),
        ("response-content-type", "text/plain; charset=utf-8"),
        ("response-content-disposition", 'attachment; filename="a b.bin"'),
    )
    query = _query(_sign(_bucket(endpoint="http://minio.local:9000"), params=params))
    for name, value in params:
        assert query[name] == value


@pytest.mark.parametrize(
    "key",
    [
        "a b.bin",
        "a+b.bin",
        "100%.bin",
        "q?x=1#frag",
        "semi;colon&amp=",
        "café/模型.bin",
        "deep/nested/dir/file",
        "trailing/",
        "tilde~and'quote\"",
    ],
)
def test_special_characters_in_keys_round_trip(key: str) -> None:
    bucket = _bucket(endpoint="http://minio.local:9000", addressing_style="path")
    url = _sign(bucket, key)
    parts = urlsplit(url)
    assert parts.path.startswith("/models/")
    assert unquote(parts.path[len("/models/") :], errors="strict") == key
    assert "?" not in parts.path
    assert not parts.fragment
    ref = recognize(url, [bucket])
    assert ref is not None
    assert ref.key == key


def test_the_s3_provider_gives_an_s3_signer() -> None:
    signer = PROVIDERS["s3"].signer(_bucket(), 900)
    assert isinstance(signer, S3Signer)


@pytest.mark.usefixtures("no_aws_environment")
def test_default_source_without_credentials_is_a_signing_error_naming_the_bucket() -> None:
    bucket = S3Bucket(provider="s3", bucket="models-without-creds", region="eu-west-1")
    with pytest.raises(SigningError) as info:
        _sign(bucket)
    message = str(info.value)
    assert "'models-without-creds'" in message
    assert "credentials" in message


@pytest.mark.usefixtures("no_aws_environment")
def test_default_source_uses_the_environment_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDFROMENVIRONMENT")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    bucket = S3Bucket(provider="s3", bucket="models", region="eu-west-1")
    assert _query(_sign(bucket))["X-Amz-Credential"].startswith("AKIDFROMENVIRONMENT/")


@pytest.mark.usefixtures("no_aws_environment")
def test_unknown_profile_is_a_signing_error_without_secrets() -> None:
    bucket = S3Bucket.model_validate(
        {
            "provider": "s3",
            "bucket": "models",
            "credentials": {"source": "default", "profile": "no-such-profile"},
        }
    )
    with pytest.raises(SigningError) as info:
        _sign(bucket)
    assert "'models'" in str(info.value)
    assert SECRET_KEY not in str(info.value)


def test_signing_error_never_carries_a_secret(
    monkeypatch: pytest.MonkeyPatch, no_aws_environment: None
) -> None:
    # Credentials present in the environment but the bucket uses a missing profile: whatever
    # boto3 raises, the message must not echo what it found.
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    bucket = S3Bucket.model_validate(
        {"provider": "s3", "bucket": "models", "credentials": {"profile": "absent"}}
    )
    with pytest.raises(SigningError) as info:
        _sign(bucket)
    assert SECRET_KEY not in str(info.value)
    assert info.value.__cause__ is None


# A credential_process that hands out the next of ROTATING key pairs on each call, valid for
# nine minutes: inside botocore's mandatory refresh window, so each signature asks again.
_ROTATING_PROCESS = """
import datetime, json, pathlib, sys
counter = pathlib.Path(sys.argv[1])
n = int(counter.read_text()) if counter.exists() else 0
counter.write_text(str(n + 1))
expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=9)
print(json.dumps({"Version": 1, "AccessKeyId": f"ROT{n}", "SecretAccessKey": f"secret{n}",
                  "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}))
"""


@pytest.mark.origin
@pytest.mark.usefixtures("no_aws_environment")
def test_expiring_credentials_are_refreshed_and_every_download_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pairs = {f"ROT{n}": f"secret{n}" for n in range(6)}
    script, counter = tmp_path / "creds.py", tmp_path / "calls"
    script.write_text(_ROTATING_PROCESS)
    config = tmp_path / "aws-config"
    config.write_text(
        f"[profile rotating]\ncredential_process = {sys.executable} {script} {counter}\n"
    )
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    with start_s3rver(tmp_path / "s3", extra_key_pairs=pairs) as s3:
        client = s3_client(s3)
        for n in range(3):
            put_object(client, "models", f"m{n}.bin", f"model {n}".encode())
        bucket = _bucket(
            endpoint=s3.endpoint, credentials={"source": "default", "profile": "rotating"}
        )
        signer = S3Signer(bucket, 600)
        used = []
        for n in range(3):
            url = signer.sign(ObjectRef(bucket, f"m{n}.bin", (), "http"), "GET")
            used.append(_query(url)["X-Amz-Credential"].split("/")[0])
            with urllib.request.urlopen(url, timeout=10) as response:
                assert response.read() == f"model {n}".encode()
    assert len(set(used)) == 3, used  # a fresh key pair for each signature
    assert int(counter.read_text()) >= 3
