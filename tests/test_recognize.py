"""recognize(): which request URLs name an object of a configured bucket, and which key."""

from __future__ import annotations

import pytest

from shim._errors import RequestError
from shim.providers.obs import ObsBucket
from shim.providers.s3 import S3Bucket
from shim.recognize import ObjectRef, recognize

AWS = S3Bucket(provider="s3", bucket="my-bucket", region="eu-west-1")
MINIO = S3Bucket(provider="s3", bucket="data", endpoint="http://minio.local:9000")
OBS = S3Bucket(provider="s3", bucket="models", endpoint="https://obs.example.com")
BUCKETS = (AWS, MINIO, OBS)


def _recognize(url: str) -> ObjectRef | None:
    return recognize(url, BUCKETS)


def _key(url: str) -> str:
    ref = _recognize(url)
    assert ref is not None, url
    return ref.key


# -- AWS buckets (no endpoint) ----------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://my-bucket.s3.amazonaws.com/dir/model.bin",
        "https://my-bucket.s3.eu-west-1.amazonaws.com/dir/model.bin",
        "https://my-bucket.s3-eu-west-1.amazonaws.com/dir/model.bin",
        "https://my-bucket.s3.dualstack.eu-west-1.amazonaws.com/dir/model.bin",
        "https://s3.eu-west-1.amazonaws.com/my-bucket/dir/model.bin",
        "https://s3-eu-west-1.amazonaws.com/my-bucket/dir/model.bin",
        "https://s3.dualstack.eu-west-1.amazonaws.com/my-bucket/dir/model.bin",
        "https://s3.amazonaws.com/my-bucket/dir/model.bin",
        "http://my-bucket.s3.eu-west-1.amazonaws.com/dir/model.bin",
        "http://s3.eu-west-1.amazonaws.com/my-bucket/dir/model.bin",
        "https://my-bucket.s3.eu-west-1.amazonaws.com:443/dir/model.bin",
        "http://my-bucket.s3.eu-west-1.amazonaws.com:80/dir/model.bin",
        "https://MY-BUCKET.S3.EU-WEST-1.AMAZONAWS.COM/dir/model.bin",
    ],
)
def test_aws_url_spellings_name_the_object(url: str) -> None:
    ref = _recognize(url)
    assert ref is not None
    assert ref.bucket is AWS
    assert ref.key == "dir/model.bin"
    assert ref.params == ()
    assert ref.client_scheme == url.split("://", 1)[0]


@pytest.mark.parametrize(
    "url",
    [
        "https://my-bucket.s3.us-east-1.amazonaws.com/k",
        "https://my-bucket.s3-us-east-1.amazonaws.com/k",
        "https://my-bucket.s3.dualstack.us-east-1.amazonaws.com/k",
        "https://s3.us-east-1.amazonaws.com/my-bucket/k",
    ],
)
def test_aws_host_of_another_region_is_not_matched(url: str) -> None:
    assert _recognize(url) is None


@pytest.mark.parametrize(
    "url",
    [
        "https://other-bucket.s3.eu-west-1.amazonaws.com/k",
        "https://s3.eu-west-1.amazonaws.com/other-bucket/k",
        "https://s3.eu-west-1.amazonaws.com/my-bucket-2/k",
        "https://s3.eu-west-1.amazonaws.com/My-Bucket/k",
        "https://x.my-bucket.s3.eu-west-1.amazonaws.com/k",
        "https://my-bucket.s3.eu-west-1.amazonaws.com.evil.example/k",
        "https://example.com/my-bucket/k",
        "https://my-bucket.s3.eu-west-1.amazonaws.com:8443/k",
        "http://my-bucket.s3.eu-west-1.amazonaws.com:443/k",
    ],
)
def test_other_buckets_hosts_and_ports_are_not_recognised(url: str) -> None:
    assert _recognize(url) is None


def test_path_style_without_a_key_separator_is_not_recognised() -> None:
    assert _recognize("https://s3.eu-west-1.amazonaws.com/my-bucket") is None


def test_explicit_port_zero_is_not_the_default_port() -> None:
    assert _recognize("https://my-bucket.s3.eu-west-1.amazonaws.com:0/k") is None


# -- custom endpoints ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["http://minio.local:9000/data/a/b.bin", "http://data.minio.local:9000/a/b.bin"],
)
def test_custom_endpoint_with_port_path_and_virtual_hosted(url: str) -> None:
    ref = _recognize(url)
    assert ref is not None
    assert ref.bucket is MINIO
    assert ref.key == "a/b.bin"
    assert ref.client_scheme == "http"


@pytest.mark.parametrize(
    "url",
    [
        "http://minio.local/data/k",
        "http://minio.local:9001/data/k",
        "http://data.minio.local/k",
        "https://minio.local:443/data/k",
        "http://other.local:9000/data/k",
    ],
)
def test_custom_endpoint_port_or_host_mismatch_is_not_recognised(url: str) -> None:
    assert _recognize(url) is None


@pytest.mark.parametrize(
    "url",
    [
        "https://obs.example.com/models/k",
        "https://models.obs.example.com/k",
        "http://obs.example.com/models/k",
        "https://obs.example.com:443/models/k",
    ],
)
def test_custom_endpoint_without_port_matches_either_default_port(url: str) -> None:
    ref = _recognize(url)
    assert ref is not None
    assert ref.bucket is OBS
    assert ref.key == "k"


def test_custom_endpoint_without_port_rejects_a_non_default_port() -> None:
    assert _recognize("https://obs.example.com:8443/models/k") is None


def test_aws_spellings_do_not_apply_to_a_custom_endpoint_bucket() -> None:
    assert _recognize("https://s3.amazonaws.com/models/k") is None


def test_first_configured_bucket_that_matches_wins() -> None:
    twin = S3Bucket(provider="s3", bucket="data", endpoint="http://minio.local:9000")
    ref = recognize("http://minio.local:9000/data/k", (MINIO, twin))
    assert ref is not None
    assert ref.bucket is MINIO


def test_no_buckets_configured_recognises_nothing() -> None:
    assert recognize("https://my-bucket.s3.amazonaws.com/k", ()) is None


# -- keys -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("a%20b", "a b"),
        ("a%2Bb", "a+b"),
        ("a+b", "a+b"),
        ("100%25", "100%"),
        ("caf%C3%A9/%E6%A8%A1%E5%9E%8B.bin", "café/模型.bin"),
        ("café", "café"),
        ("a/b/c/d.bin", "a/b/c/d.bin"),
        ("a%2Fb", "a/b"),
        ("a//b/", "a//b/"),
        ("%3F%23", "?#"),
    ],
)
def test_keys_are_percent_decoded(raw: str, key: str) -> None:
    assert _key(f"https://my-bucket.s3.eu-west-1.amazonaws.com/{raw}") == key
    assert _key(f"https://s3.eu-west-1.amazonaws.com/my-bucket/{raw}") == key
    assert _key(f"http://minio.local:9000/data/{raw}") == key


@pytest.mark.parametrize(
    "url",
    [
        "https://my-bucket.s3.eu-west-1.amazonaws.com/",
        "https://my-bucket.s3.eu-west-1.amazonaws.com",
        "https://my-bucket.s3.eu-west-1.amazonaws.com?versionId=1",
        "https://s3.eu-west-1.amazonaws.com/my-bucket/",
        "http://minio.local:9000/data/",
    ],
)
def test_empty_key_is_a_request_error(url: str) -> None:
    with pytest.raises(RequestError, match="no object key"):
        _recognize(url)


@pytest.mark.parametrize("raw", ["%FF", "a%C3", "%C3%28", "%ED%A0%80", "%80abc"])
def test_invalid_utf8_escapes_are_a_request_error(raw: str) -> None:
    with pytest.raises(RequestError, match="UTF-8"):
        _recognize(f"https://my-bucket.s3.eu-west-1.amazonaws.com/{raw}")


@pytest.mark.parametrize("raw", ["a%00b", "a%0Ab", "a%1Fb"])
def test_control_characters_in_the_key_are_a_request_error(raw: str) -> None:
    with pytest.raises(RequestError, match="control characters"):
        _recognize(f"https://my-bucket.s3.eu-west-1.amazonaws.com/{raw}")


# -- query parameters -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKID%2F20240101%2Feu-west-1%2Fs3"
        "%2Faws4_request&X-Amz-Date=20240101T000000Z&X-Amz-Expires=3600"
        "&X-Amz-SignedHeaders=host&X-Amz-Signature=abc&X-Amz-Security-Token=tok",
        "AWSAccessKeyId=AKID&Signature=abc%3D&Expires=1700000000",
        "X-Amz-User-Agent=aws-sdk",
    ],
)
def test_stale_signature_params_are_dropped(query: str) -> None:
    ref = _recognize(f"https://my-bucket.s3.eu-west-1.amazonaws.com/k?{query}")
    assert ref is not None
    assert ref.key == "k"
    assert ref.params == ()


def test_object_params_are_kept_in_order_and_decoded() -> None:
    url = (
        "https://my-bucket.s3.eu-west-1.amazonaws.com/k?response-content-type=text%2Fplain"
        "&X-Amz-Signature=abc&versionId=3HL4kqtJ&response-content-disposition="
        "attachment%3B%20filename%3D%22a%20b%22&partNumber=2"
    )
    ref = _recognize(url)
    assert ref is not None
    assert ref.params == (
        ("response-content-type", "text/plain"),
        ("versionId", "3HL4kqtJ"),
        ("response-content-disposition", 'attachment; filename="a b"'),
        ("partNumber", "2"),
    )


def test_blank_object_param_is_kept() -> None:
    ref = _recognize("https://my-bucket.s3.eu-west-1.amazonaws.com/k?versionId=")
    assert ref is not None
    assert ref.params == (("versionId", ""),)


@pytest.mark.parametrize("name", ["x-id", "acl", "tagging", "uploadId", "X-Amz-Foo", "versionid"])
def test_unknown_query_param_is_a_request_error_naming_it(name: str) -> None:
    with pytest.raises(RequestError) as info:
        _recognize(f"https://my-bucket.s3.eu-west-1.amazonaws.com/k?versionId=1&{name}=v")
    assert repr(name) in str(info.value)
    assert "versionId" in str(info.value)


def test_signature_params_are_those_of_the_buckets_own_store() -> None:
    # X-Obs-Date signs OBS URLs: dropped from an OBS bucket's URL, refused on an S3 bucket's.
    query = "k?X-Obs-Date=20260101T000000Z"
    with pytest.raises(RequestError, match="'X-Obs-Date'"):
        recognize(f"https://my-bucket.s3.eu-west-1.amazonaws.com/{query}", BUCKETS)
    obs = ObsBucket(provider="obs", bucket="my-bucket", region="cn-north-4")
    ref = recognize(f"https://my-bucket.obs.cn-north-4.myhuaweicloud.com/{query}", [obs])
    assert ref is not None
    assert (ref.bucket, ref.key, ref.params) == (obs, "k", ())


def test_query_of_an_unrecognised_url_is_not_inspected() -> None:
    assert _recognize("https://example.com/my-bucket/k?anything=goes") is None


# -- not URLs of any bucket -------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "ftp://my-bucket.s3.eu-west-1.amazonaws.com/k",
        "s3://my-bucket/k",
        "file:///my-bucket/k",
        "ws://my-bucket.s3.eu-west-1.amazonaws.com/k",
        "my-bucket.s3.eu-west-1.amazonaws.com/k",
        "/my-bucket/k",
        "not a url",
        "",
        "http://[::1",
        "http://my-bucket.s3.eu-west-1.amazonaws.com:99999/k",
        "http://my-bucket.s3.eu-west-1.amazonaws.com:port/k",
        "https:///my-bucket/k",
    ],
)
def test_non_http_and_garbage_urls_are_not_recognised(url: str) -> None:
    assert _recognize(url) is None
