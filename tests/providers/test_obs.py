"""Huawei OBS: its URL shapes, and URLs signed through the S3 signer against its endpoint,
checked by the strict S3 server (which also verifies what Huawei's own SDK signs)."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
from obs import ObsClient

from shim.config import dragonfly_endpoint_to_mapping, settings_from_mapping
from shim.identity import filtered_params, identify
from shim.providers import PROVIDERS
from shim.providers.obs import ObsBucket
from shim.recognize import ObjectRef, recognize
from tests.support.servers import S3Server, put_object, s3_client, start_s3rver

KEYS = ["plain.mar", "a b+c.mar", "100%=&.bin", "dir/sub/ü-名.pt", "x,y;z@~!$'()*.bin"]


def _bucket(**fields: Any) -> ObsBucket:
    raw = {
        "provider": "obs",
        "bucket": "models",
        "region": "cn-north-4",
        "credentials": {
            "source": "static",
            "access_key_id": "S3RVER",
            "secret_access_key": "S3RVER",
        },
        **fields,
    }
    return ObsBucket.model_validate(raw)


@pytest.mark.parametrize(
    ("url", "key"),
    [
        ("https://models.obs.cn-north-4.myhuaweicloud.com/dir/m.mar", "dir/m.mar"),
        ("http://models.obs.cn-north-4.myhuaweicloud.com/m.mar", "m.mar"),
        ("https://obs.cn-north-4.myhuaweicloud.com/models/a%20b.mar", "a b.mar"),
        ("https://models.obs.cn-north-4.myhuaweicloud.com/k?versionId=v1&AccessKeyId=AK", "k"),
    ],
)
def test_obs_hosts_are_recognised(url: str, key: str) -> None:
    bucket = _bucket()
    ref = recognize(url, [bucket])
    assert ref is not None
    assert (ref.bucket, ref.key) == (bucket, key)


@pytest.mark.parametrize(
    "url",
    [
        "https://models.obs.ap-southeast-1.myhuaweicloud.com/k",  # another region
        "https://models.s3.cn-north-4.amazonaws.com/k",
        "https://obs.cn-north-4.myhuaweicloud.com/other/k",
    ],
)
def test_other_hosts_and_buckets_are_not(url: str) -> None:
    assert recognize(url, [_bucket()]) is None


def test_signing_targets_the_obs_endpoint_virtual_hosted() -> None:
    ref = ObjectRef(_bucket(), "dir/m.mar", (), "https")
    url = PROVIDERS["obs"].signer(ref.bucket, 600).sign(ref, "GET")
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == (
        "https",
        "models.obs.cn-north-4.myhuaweicloud.com",
        "/dir/m.mar",
    )
    assert dict(parse_qsl(parts.query))["X-Amz-Expires"] == "600"


def test_credentials_come_from_obs_variables_by_default() -> None:
    env = {"OBS_ACCESS_KEY_ID": "AK", "OBS_SECRET_ACCESS_KEY": "SK", "AWS_ACCESS_KEY_ID": "no"}
    raw = {"buckets": [{"provider": "obs", "bucket": "models"}]}
    creds = settings_from_mapping(raw, env=env).buckets[0].credentials
    assert creds.source == "static"
    assert creds.access_key_id is not None and creds.access_key_id.get_secret_value() == "AK"


@pytest.fixture(scope="module")
def s3rver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with start_s3rver(tmp_path_factory.mktemp("s3rver")) as server:
        client = s3_client(server)
        for key in KEYS:
            put_object(client, "models", key, f"bytes of {key}".encode())
        yield server


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _sign_against(server: S3Server, key: str) -> str:
    bucket = _bucket(endpoint=server.endpoint)
    return PROVIDERS["obs"].signer(bucket, 600).sign(ObjectRef(bucket, key, (), "http"), "GET")


@pytest.mark.origin
@pytest.mark.parametrize("key", KEYS)
def test_signed_urls_download_awkward_keys_byte_identical(s3rver: S3Server, key: str) -> None:
    assert _get(_sign_against(s3rver, key)) == (200, f"bytes of {key}".encode())


def _with_query(url: str, query: list[tuple[str, str]]) -> str:
    return urlunsplit(urlsplit(url)._replace(query=urlencode(query)))


@pytest.mark.origin
def test_the_store_refuses_tampered_and_unsigned_urls(s3rver: S3Server) -> None:
    url = _sign_against(s3rver, "plain.mar")
    query = parse_qsl(urlsplit(url).query)
    flipped = [(k, v[:-1] + ("0" if v[-1] != "0" else "1")) for k, v in query]
    tampered = [
        (k, f if k == "X-Amz-Signature" else v)
        for (k, v), (_, f) in zip(query, flipped, strict=True)
    ]
    assert _get(_with_query(url, tampered))[0] == 403
    assert _get(_with_query(url, []))[0] == 403
    other_key = url.replace("/plain.mar", "/a%20b%2Bc.mar")
    assert _get(other_key)[0] == 403


@pytest.mark.origin
@pytest.mark.parametrize("signature", ["v2", "v4"])
def test_huawei_sdk_urls_verify_and_share_shims_identity(s3rver: S3Server, signature: str) -> None:
    """What Huawei's own SDK signs, the strict server accepts, and once its signature
    parameters are filtered it is the very object shim signs: one cache entry, one task."""
    client = ObsClient(
        access_key_id="S3RVER",
        secret_access_key="S3RVER",
        server=s3rver.endpoint,
        signature=signature,
        path_style=True,
    )
    key = "dir/sub/ü-名.pt"
    theirs = client.createSignedUrl(
        "GET", bucketName="models", objectKey=key, expires=300
    ).signedUrl
    assert _get(theirs) == (200, f"bytes of {key}".encode())
    filtered = filtered_params("obs")
    assert identify(theirs, filtered) == identify(_sign_against(s3rver, key), filtered)


def test_a_url_huawei_signed_with_sts_is_recognised_and_resigned() -> None:
    client = ObsClient(
        access_key_id="AK",
        secret_access_key="SK",
        server="https://obs.cn-north-4.myhuaweicloud.com",
        signature="obs",
        security_token="TOKEN",
    )
    pasted = client.createSignedUrl(
        "GET", bucketName="models", objectKey="k", expires=300
    ).signedUrl
    assert "x-obs-security-token=" in pasted and "AccessKeyId=" in pasted
    ref = recognize(pasted, [_bucket()])
    assert ref is not None
    assert (ref.key, ref.params) == ("k", ())


def test_dragonfly_endpoint_config_json_of_type_obs() -> None:
    doc = {
        "object_storage": {
            "type": "obs",
            "bucket_name": "models",
            "region": "cn-north-4",
            "access_key": "AK",
            "secret_key": "SK",
        }
    }
    mapping = dragonfly_endpoint_to_mapping(doc, "config.json")
    (bucket,) = settings_from_mapping(mapping, env={}).buckets
    assert isinstance(bucket, ObsBucket)
    assert (bucket.bucket, bucket.region, bucket.credentials.source) == (
        "models",
        "cn-north-4",
        "static",
    )
