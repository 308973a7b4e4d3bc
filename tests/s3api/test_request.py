"""shim.s3api.request: what each S3 API request asks for, as a table; and the properties that
make the key a client names the key fetched, through the same reference as a URL."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shim.config import Settings, settings_from_mapping
from shim.recognize import recognize_reverse
from shim.s3api.errors import S3Error
from shim.s3api.listing import ListRequest
from shim.s3api.request import BucketRead, ObjectRead, operation

CREDENTIALS = {"source": "static", "access_key_id": "AKIDTEST", "secret_access_key": "s3cr3t"}
DOMAIN = "s3.shim.local"


def make_settings() -> Settings:
    raw: dict[str, Any] = {
        "s3_api": {"listen": "127.0.0.1:8792", "domain": DOMAIN},
        "buckets": [
            {
                "provider": "s3",
                "bucket": "real-name",
                "alias": "models",
                "credentials": CREDENTIALS,
            },
            {
                "provider": "azure",
                "account": "acct",
                "container": "weights",
                "credentials": {"source": "static", "account_key": "a2V5"},
            },
        ],
    }
    return settings_from_mapping(raw, env={})


SETTINGS = make_settings()


def ask(
    target: str, method: str = "GET", host: str | None = "127.0.0.1:8792", body: bool = False
) -> Any:
    return operation(method, host, target, body, SETTINGS.buckets, DOMAIN)


def code(target: str, method: str = "GET", host: str | None = "127.0.0.1:8792") -> tuple[int, str]:
    answer = ask(target, method, host)
    assert isinstance(answer, S3Error), answer
    return answer.status, answer.code


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("PUT", "/models/new.bin"),  # PutObject
        ("PUT", "/models/new.bin?partNumber=1&uploadId=x"),  # UploadPart
        ("POST", "/models/new.bin?uploads"),  # CreateMultipartUpload
        ("POST", "/models?delete"),  # DeleteObjects
        ("DELETE", "/models/model.bin"),
        ("PUT", "/models"),  # CreateBucket
        ("DELETE", "/models"),
        ("PUT", "/unknown/new.bin"),
        ("PATCH", "/models/model.bin"),
        ("OPTIONS", "/models/model.bin"),
    ],
)
def test_every_write_is_access_denied(method: str, target: str) -> None:
    assert code(target, method) == (403, "AccessDenied")
    answer = ask(target, method)
    assert answer.kind == "method"


@pytest.mark.parametrize(
    "target", ["/", "/unknown", "/unknown/key", "/real-name/key", "/Models/key", "/?list-type=2"]
)
def test_unconfigured_buckets_and_the_bucket_list_are_access_denied(target: str) -> None:
    # The store's own name is no alias, and no answer tells which aliases exist.
    assert code(target) == (403, "AccessDenied")
    assert "models" not in ask(target).message


def test_objects_are_read_as_the_reverse_listener_reads_them() -> None:
    read = ask("/models/dir/model%20v1%2B.bin?versionId=3&x-id=GetObject")
    assert isinstance(read, ObjectRead)
    assert read.ref.key == "dir/model v1+.bin"
    assert read.ref.params == (("versionId", "3"),)
    reverse = recognize_reverse("/models/dir/model%20v1%2B.bin?versionId=3", SETTINGS.buckets)
    assert read.ref == reverse
    assert isinstance(ask("/models/a.bin", "HEAD"), ObjectRead)


def test_the_clients_signature_is_no_part_of_the_request() -> None:
    presigned = (
        "/models/a.bin?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDCLIENT%2Fx"
        "&X-Amz-Date=20250101T000000Z&X-Amz-Expires=60&X-Amz-SignedHeaders=host"
        "&X-Amz-Signature=abc&X-Amz-Security-Token=tok"
    )
    read = ask(presigned)
    assert isinstance(read, ObjectRead) and read.ref.params == ()
    # On an Azure container too, whose own signature parameters are others.
    azure = ask("/weights/a.bin?X-Amz-Signature=abc&x-id=GetObject")
    assert isinstance(azure, ObjectRead) and azure.ref.params == ()


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/models/a/../b.bin", (400, "InvalidArgument")),  # would be resolved to another key
        ("/models/./b.bin", (400, "InvalidArgument")),
        ("/models/a%00b", (400, "InvalidArgument")),
        ("/models/a.bin?unknown=1", (400, "InvalidArgument")),
        ("/models/a.bin?partNumber=0", (400, "InvalidArgument")),
        ("/weights/a.bin?partNumber=1", (400, "InvalidArgument")),  # Azure has no parts
        ("/models/a.bin?acl", (501, "NotImplemented")),
        ("/models/a.bin?tagging", (501, "NotImplemented")),
        ("/models/a.bin?uploadId=x", (501, "NotImplemented")),
        ("/models?versions", (501, "NotImplemented")),
        ("/models?policy", (501, "NotImplemented")),
        ("/models?list-type=3", (400, "InvalidArgument")),
        ("/models?max-keys=-1", (400, "InvalidArgument")),
        ("/models?encoding-type=base64", (400, "InvalidArgument")),
        ("/models?prefix=a&prefix=b", (400, "InvalidArgument")),
        ("/models?x=1", (501, "NotImplemented")),
    ],
)
def test_requests_shim_cannot_serve_get_an_s3_error(target: str, expected: tuple[int, str]) -> None:
    assert code(target) == expected


def test_a_get_with_a_body_is_refused() -> None:
    answer = ask("/models/a.bin", body=True)
    assert isinstance(answer, S3Error) and answer.status == 400


@pytest.mark.parametrize(
    ("target", "method", "expected"),
    [
        ("/models", "HEAD", BucketRead(SETTINGS.buckets[0], "head")),
        ("/models/", "HEAD", BucketRead(SETTINGS.buckets[0], "head")),
        ("/models?location", "GET", BucketRead(SETTINGS.buckets[0], "location")),
        (
            "/models?list-type=2&prefix=a%2Fb&delimiter=%2F&max-keys=5000"
            "&continuation-token=t&start-after=s&fetch-owner=true&encoding-type=url",
            "GET",
            BucketRead(
                SETTINGS.buckets[0],
                "list",
                ListRequest(2, "a/b", "/", 1000, "t", "s", url_encoded=True, fetch_owner=True),
            ),
        ),
        (
            "/weights/?prefix=p&marker=m&max-keys=3",
            "GET",
            BucketRead(SETTINGS.buckets[1], "list", ListRequest(1, "p", "", 3, "m")),
        ),
    ],
)
def test_bucket_requests(target: str, method: str, expected: BucketRead) -> None:
    assert ask(target, method) == expected


def test_virtual_hosted_requests_name_the_bucket_in_host() -> None:
    read = ask("/dir/a.bin", host=f"models.{DOMAIN}:8792")
    assert isinstance(read, ObjectRead) and read.ref.key == "dir/a.bin"
    listing = ask("/?list-type=2", host=f"MODELS.{DOMAIN.upper()}")
    assert isinstance(listing, BucketRead) and listing.bucket.reverse_alias == "models"
    assert code("/a.bin", host=f"unknown.{DOMAIN}") == (403, "AccessDenied")
    # Another host, or the domain itself: path-style.
    assert isinstance(ask("/models/a.bin", host=f"{DOMAIN}:8792"), ObjectRead)
    assert isinstance(ask("/models/a.bin", host="models.elsewhere.test"), ObjectRead)
    no_domain = operation("GET", f"models.{DOMAIN}", "/a.bin", False, SETTINGS.buckets, None)
    assert isinstance(no_domain, S3Error) and no_domain.code == "AccessDenied"


def test_a_host_names_its_bucket_whatever_the_case_and_the_key_keeps_its_own() -> None:
    upper = {"provider": "s3", "bucket": "legacy", "alias": "Legacy", "credentials": CREDENTIALS}
    twins = [{**upper, "alias": alias} for alias in ("Twin", "TWIN")]
    buckets = settings_from_mapping({"buckets": [upper, *twins]}, env={}).buckets

    def read(host: str, target: str) -> Any:
        return operation("GET", host, target, False, buckets, DOMAIN)

    # DNS names have no case, S3 keys do: the bucket found however the Host is written, the
    # key fetched exactly as named.
    for host in (f"legacy.{DOMAIN}", f"LEGACY.{DOMAIN.upper()}:8792", f"LeGaCy.{DOMAIN}."):
        found = read(host, "/Dir/Model.BIN")
        assert isinstance(found, ObjectRead), host
        assert (found.ref.bucket.reverse_alias, found.ref.key) == ("Legacy", "Dir/Model.BIN")
    # Two aliases a Host cannot tell apart name neither; a path names its alias as written.
    assert isinstance(read(f"twin.{DOMAIN}", "/a.bin"), S3Error)
    assert read("127.0.0.1", "/TWIN/a.bin").ref.bucket.reverse_alias == "TWIN"
    assert isinstance(read("127.0.0.1", "/legacy/a.bin"), S3Error)


# Keys as stores take them: no control characters, no dot segments (refused above).
KEYS = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=60).filter(
    lambda key: not any(part in (".", "..") for part in key.split("/"))
)


@given(key=KEYS, safe=st.sampled_from(["", "/", "/+=&;:@!$'()*,"]))
def test_the_key_a_client_names_is_the_key_fetched(key: str, safe: str) -> None:
    # However an SDK escapes it (which characters it leaves alone varies).
    read = ask(f"/models/{quote(key, safe=safe)}")
    assert isinstance(read, ObjectRead)
    assert read.ref.key == key
    assert read.ref == recognize_reverse(f"/models/{quote(key, safe='')}", SETTINGS.buckets)
    # Virtual-hosted too, whatever the case of the Host.
    assert ask(f"/{quote(key, safe=safe)}", host=f"MoDeLs.{DOMAIN.upper()}") == read
