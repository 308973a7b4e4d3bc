"""Task identity: every re-signed URL of one object is one cache entry and one task."""

from __future__ import annotations

import datetime
from urllib.parse import parse_qs, urlsplit

import botocore.auth
import pytest

from shim._errors import RequestError
from shim.identity import TaskIdentity, filtered_params, identify
from shim.providers.s3 import SIGNATURE_PARAMS, S3Bucket, S3Signer
from shim.recognize import ObjectRef
from shim.taskid import rust_task_id

S3_FILTER = filtered_params("s3")


def _bucket(access_key: str, secret_key: str) -> S3Bucket:
    return S3Bucket.model_validate(
        {
            "provider": "s3",
            "bucket": "models",
            "region": "eu-central-1",
            "endpoint": "http://minio.local:9000",
            "credentials": {
                "source": "static",
                "access_key_id": access_key,
                "secret_access_key": secret_key,
            },
        }
    )


def _sign_at(
    monkeypatch: pytest.MonkeyPatch,
    when: datetime.datetime,
    bucket: S3Bucket,
    key: str,
    params: tuple[tuple[str, str], ...] = (),
    expires: int = 3600,
) -> str:
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: when)
    return S3Signer(bucket, expires).sign(ObjectRef(bucket, key, params, "http"), "GET")


DAY_1 = datetime.datetime(2024, 1, 1, 12, 0, 0, tzinfo=datetime.UTC)
DAY_2 = datetime.datetime(2024, 3, 7, 8, 30, 15, tzinfo=datetime.UTC)


def test_filtered_params_are_the_s3_signature_params_sorted() -> None:
    assert tuple(sorted(SIGNATURE_PARAMS)) == S3_FILTER
    assert "X-Amz-Signature" in S3_FILTER
    assert "versionId" not in S3_FILTER


def test_filtered_params_add_extra_names_once() -> None:
    params = filtered_params("s3", ["token", "X-Amz-Date", "token"])
    assert params == tuple(sorted(SIGNATURE_PARAMS | {"token"}))


def test_filtered_params_unknown_provider_is_an_error() -> None:
    with pytest.raises(KeyError):
        filtered_params("no-such-store")


def test_two_signings_of_one_object_have_one_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    key = "dir/model weights+v1.bin"
    first = _sign_at(monkeypatch, DAY_1, _bucket("AKIDONE", "secret-one"), key)
    second = _sign_at(monkeypatch, DAY_2, _bucket("AKIDTWO", "secret-two"), key, expires=900)

    first_query, second_query = parse_qs(urlsplit(first).query), parse_qs(urlsplit(second).query)
    for name in ("X-Amz-Date", "X-Amz-Credential", "X-Amz-Signature", "X-Amz-Expires"):
        assert first_query[name] != second_query[name], name

    one, two = identify(first, S3_FILTER), identify(second, S3_FILTER)
    assert one == two
    assert one.url == "http://minio.local:9000/models/dir/model%20weights%2Bv1.bin"
    assert one.task_id == rust_task_id(one.url)
    assert len(one.task_id) == 64


def test_identity_url_keeps_object_params(monkeypatch: pytest.MonkeyPatch) -> None:
    params = (("versionId", "v7"),)
    first = _sign_at(monkeypatch, DAY_1, _bucket("AKIDONE", "s1"), "k", params)
    second = _sign_at(monkeypatch, DAY_2, _bucket("AKIDTWO", "s2"), "k", params)
    one = identify(first, S3_FILTER)
    assert one == identify(second, S3_FILTER)
    assert one.url == "http://minio.local:9000/models/k?versionId=v7"
    assert one != identify(_sign_at(monkeypatch, DAY_1, _bucket("AKIDONE", "s1"), "k"), S3_FILTER)


def test_hand_written_presigned_urls_of_one_object_have_one_identity() -> None:
    base = "https://models.s3.eu-west-1.amazonaws.com/dir/model.bin"
    v4 = (
        f"{base}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKID%2F20240101%2F"
        "eu-west-1%2Fs3%2Faws4_request&X-Amz-Date=20240101T000000Z&X-Amz-Expires=3600"
        "&X-Amz-SignedHeaders=host&X-Amz-Security-Token=tok&X-Amz-Signature=aaaa"
    )
    v2 = f"{base}?AWSAccessKeyId=AKID&Expires=1700000000&Signature=bbbb%3D"
    identities = {identify(url, S3_FILTER) for url in (v4, v2, base)}
    assert identities == {TaskIdentity(url=base, task_id=rust_task_id(base))}


def test_different_keys_have_different_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = _bucket("AKIDONE", "secret-one")
    ids = {
        identify(_sign_at(monkeypatch, DAY_1, bucket, key), S3_FILTER).task_id
        for key in ("a.bin", "b.bin", "dir/a.bin", "a.bin/", "A.bin")
    }
    assert len(ids) == 5


def test_extra_filter_params_are_left_out_of_the_identity() -> None:
    base = "https://cdn.example.com/models/a.bin"
    with_token = f"{base}?token=one&X-Amz-Signature=s1"
    other_token = f"{base}?token=two&X-Amz-Signature=s2"
    filtered = filtered_params("s3", ["token"])
    assert identify(with_token, filtered) == identify(other_token, filtered)
    assert identify(with_token, filtered).url == base
    assert identify(with_token, S3_FILTER) != identify(other_token, S3_FILTER)
    assert identify(with_token, S3_FILTER).url == f"{base}?token=one"


def test_identity_accepts_any_iterable_of_names() -> None:
    url = "https://h/k?X-Amz-Signature=s&keep=1"
    assert identify(url, iter(S3_FILTER)) == identify(url, list(S3_FILTER))


@pytest.mark.parametrize(
    "signed",
    [
        "https://b.s3.amazonaws.com/a/../b?X-Amz-Signature=x",
        "https://b.s3.amazonaws.com/a/%2e%2e/b?X-Amz-Signature=x",
        "https://b.s3.amazonaws.com/a\\b?X-Amz-Signature=x",
        "https://B.S3.amazonaws.com/a?X-Amz-Signature=x",
    ],
)
def test_a_url_that_parsing_would_change_is_refused(signed: str) -> None:
    # The entry would hold what the dfdaemon fetched, which is not the object signed.
    with pytest.raises(RequestError):
        identify(signed, filtered_params("s3"))
