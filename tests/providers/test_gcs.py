"""Google Cloud Storage: config, recognised URL shapes, and V4 signing judged by the verifying
gateway (tests/support/gcs_gateway.py), whose verifier passes Google's conformance vectors."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import google.auth._helpers
import google.cloud.storage._signing  # type: ignore[import-untyped]
import google.oauth2.credentials
import google_crc32c
import pytest
import requests
from google.auth.compute_engine import _metadata
from pydantic import TypeAdapter

from shim._errors import ConfigError, RequestError, SigningError
from shim.config import dragonfly_endpoint_to_mapping, settings_from_mapping
from shim.identity import filtered_params, identify
from shim.providers import PROVIDERS, BucketConfig
from shim.providers.gcs import SIGNATURE_PARAMS, GcsBucket, GcsSigner
from shim.recognize import ObjectRef, recognize
from tests.support.gcs_gateway import (
    TEST_SERVICE_ACCOUNT_FILE,
    GcsGateway,
    load_service_account,
    start_gateway,
)
from tests.support.http import direct
from tests.support.keys import AWKWARD_KEYS

BUCKET = "models"
ACCOUNT = load_service_account(TEST_SERVICE_ACCOUNT_FILE)
KEY_JSON = TEST_SERVICE_ACCOUNT_FILE.read_text()
PRIVATE_KEY_LINE = json.loads(KEY_JSON)["private_key"].splitlines()[1]
# Every character class GCS allows in a name and URLs escape differently.
AWKWARD_KEYS = (*AWKWARD_KEYS, "//leading/slashes", "trailing/")


def _bucket(**fields: Any) -> GcsBucket:
    raw: dict[str, Any] = {
        "provider": "gcs",
        "bucket": BUCKET,
        "credentials": {"source": "file", "service_account_file": str(TEST_SERVICE_ACCOUNT_FILE)},
        **fields,
    }
    return GcsBucket.model_validate(raw)


def _settings_bucket(credentials: dict[str, Any], env: dict[str, str]) -> GcsBucket:
    raw = {"buckets": [{"provider": "gcs", "bucket": BUCKET, "credentials": credentials}]}
    (bucket,) = settings_from_mapping(raw, env=env).buckets
    assert isinstance(bucket, GcsBucket)
    return bucket


def _ref(bucket: GcsBucket, key: str, params: tuple[tuple[str, str], ...] = ()) -> ObjectRef:
    return ObjectRef(bucket, key, params, "https")


# -- config ----------------------------------------------------------------------------------


def test_default_bucket_uses_application_default_credentials() -> None:
    bucket = GcsBucket.model_validate({"provider": "gcs", "bucket": BUCKET})
    assert bucket.credentials.source == "default"
    assert bucket.name == BUCKET
    assert bucket.endpoint_url("https") == "https://storage.googleapis.com"


def test_static_key_json_is_secret_and_validated() -> None:
    bucket = _settings_bucket({"source": "static", "service_account_json": KEY_JSON}, {})
    assert bucket.credentials.service_account_json is not None
    assert PRIVATE_KEY_LINE not in repr(bucket)
    with pytest.raises(ConfigError) as info:
        _settings_bucket({"source": "static", "service_account_json": '{"private_key": "x"'}, {})
    assert "not valid JSON" in str(info.value)
    with pytest.raises(ConfigError) as info:
        _settings_bucket({"source": "static", "service_account_json": '{"private_key": "zz"}'}, {})
    assert "client_email" in str(info.value)
    assert "zz" not in str(info.value)


def test_env_variable_holding_the_key_json() -> None:
    bucket = _settings_bucket({"source": "env"}, {"GOOGLE_SERVICE_ACCOUNT_JSON": KEY_JSON})
    assert bucket.credentials.source == "static"
    assert bucket.credentials.service_account_json is not None
    assert bucket.credentials.service_account_json.get_secret_value() == KEY_JSON


def test_env_variable_naming_the_key_file() -> None:
    credentials = {"source": "env", "service_account_json_env": "MY_KEY"}
    bucket = _settings_bucket(credentials, {"MY_KEY": str(TEST_SERVICE_ACCOUNT_FILE)})
    assert bucket.credentials.source == "file"
    assert bucket.credentials.service_account_file == str(TEST_SERVICE_ACCOUNT_FILE)


def test_env_variable_missing_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError) as info:
        _settings_bucket({"source": "env", "service_account_json_env": "NOT_SET"}, {})
    assert "buckets[0].credentials.service_account_json_env" in str(info.value)
    assert "'NOT_SET'" in str(info.value)


@pytest.mark.parametrize(
    ("credentials", "needs"),
    [({"source": "file"}, "service_account_file"), ({"source": "static"}, "service_account_json")],
)
def test_a_source_without_its_key_is_a_config_error(
    credentials: dict[str, Any], needs: str
) -> None:
    with pytest.raises(ConfigError, match=needs):
        _settings_bucket(credentials, {})


def test_dragonfly_endpoint_gcs_config_maps_unchanged() -> None:
    doc = {
        "addr": "http://127.0.0.1:4001",
        "object_storage": {
            "type": "gcs",
            "bucket_name": BUCKET,
            "project_id": "dummy-project-id",
            "service_account_path": "/etc/gcs/key.json",
            "endpoint": "http://127.0.0.1:9023",
        },
    }
    settings = settings_from_mapping(dragonfly_endpoint_to_mapping(doc, "config.json"), env={})
    (bucket,) = settings.buckets
    assert isinstance(bucket, GcsBucket)
    assert (bucket.bucket, bucket.project_id, bucket.endpoint) == (
        BUCKET,
        "dummy-project-id",
        "http://127.0.0.1:9023",
    )
    assert bucket.credentials.source == "file"
    assert bucket.credentials.service_account_file == "/etc/gcs/key.json"
    doc["object_storage"] = {"type": "gcs", "bucket_name": BUCKET}
    (plain,) = settings_from_mapping(dragonfly_endpoint_to_mapping(doc, "c"), env={}).buckets
    assert isinstance(plain, GcsBucket)
    assert (plain.credentials.source, plain.endpoint) == ("default", None)


# -- recognition -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://storage.googleapis.com/models/dir/a%20b%2Bc.bin",
        "http://storage.googleapis.com/models/dir/a%20b%2Bc.bin",
        "https://models.storage.googleapis.com/dir/a%20b%2Bc.bin",
        "http://127.0.0.1:9023/models/dir/a%20b%2Bc.bin",
        "http://models.127.0.0.1:9023/dir/a%20b%2Bc.bin",
        "https://cdn.example.com/dir/a%20b%2Bc.bin",
        "https://storage.googleapis.com/models/dir/a%20b%2Bc.bin?X-Goog-Algorithm=GOOG4-RSA-SHA256"
        "&X-Goog-Credential=a%40b%2F20250101%2Fauto%2Fstorage%2Fgoog4_request&X-Goog-Date=x"
        "&X-Goog-Expires=60&X-Goog-SignedHeaders=host&X-Goog-Signature=00",
        "https://storage.googleapis.com/models/dir/a%20b%2Bc.bin?GoogleAccessId=a%40b"
        "&Expires=1&Signature=c2ln",
    ],
)
def test_each_url_shape_names_the_object(url: str) -> None:
    bucket = _bucket(endpoint="http://127.0.0.1:9023", hosts=["cdn.example.com"])
    ref = recognize(url, [bucket])
    assert ref is not None
    assert (ref.bucket, ref.key, ref.params) == (bucket, "dir/a b+c.bin", ())


@pytest.mark.parametrize(
    "url",
    [
        "https://storage.googleapis.com/other/model.bin",
        "https://other.storage.googleapis.com/model.bin",
        "http://127.0.0.1:9024/models/model.bin",
        "https://s3.amazonaws.com/models/model.bin",
    ],
)
def test_other_buckets_and_hosts_are_not_recognised(url: str) -> None:
    assert recognize(url, [_bucket(endpoint="http://127.0.0.1:9023")]) is None


def test_object_params_are_kept_and_checked() -> None:
    bucket = _bucket()
    base = "https://storage.googleapis.com/models/m.bin"
    query = "?generation=1700000000000001&response-content-type=text%2Fplain"
    ref = recognize(base + query, [bucket])
    assert ref is not None
    assert ref.params == (
        ("generation", "1700000000000001"),
        ("response-content-type", "text/plain"),
    )
    for bad in ("-1", "1.5", "x", "9" * 20, "\uff11"):
        with pytest.raises(RequestError, match="generation"):
            recognize(f"{base}?generation={quote(bad)}", [bucket])
    with pytest.raises(RequestError, match="'alt'"):
        recognize(base + "?alt=media", [bucket])


def test_the_filter_list_is_every_signature_parameter() -> None:
    assert set(filtered_params("gcs")) == SIGNATURE_PARAMS
    assert PROVIDERS["gcs"].dragonfly_type == "gcs"
    assert "x-goog-hash" in PROVIDERS["gcs"].checksum_headers


# -- signing, judged by the verifying gateway ------------------------------------------------


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcsGateway]:
    with start_gateway(tmp_path_factory.mktemp("gcs")) as server:
        yield server


@pytest.fixture(autouse=True)
def _gateway_clock_restored(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "gateway" in request.fixturenames:
        gateway: GcsGateway = request.getfixturevalue("gateway")
        gateway.time_shift = timedelta()
        gateway.token_lifetime = 3600


def _signer(
    gateway: GcsGateway, expires: int = 3600, **credentials: Any
) -> tuple[GcsBucket, GcsSigner]:
    """A bucket on the gateway (signing with the test key file unless ``credentials``)."""
    creds = credentials or {
        "source": "file",
        "service_account_file": str(TEST_SERVICE_ACCOUNT_FILE),
    }
    bucket = _bucket(endpoint=gateway.endpoint, credentials=creds)
    return bucket, GcsSigner(bucket, expires)


@pytest.mark.origin
@pytest.mark.parametrize("key", AWKWARD_KEYS)
def test_awkward_keys_download_byte_identical(gateway: GcsGateway, key: str) -> None:
    body = os.urandom(20_000) + key.encode()
    gateway.put(BUCKET, key, body)
    bucket, signer = _signer(gateway)
    url = signer.sign(_ref(bucket, key), "GET")
    reply = direct(url)
    assert reply.status == 200, reply.body
    assert reply.body == body
    again = recognize(url, [bucket])
    assert again is not None
    assert again.key == key
    head = direct(signer.sign(_ref(bucket, key), "HEAD"), method="HEAD")
    assert (head.status, head.headers["Content-Length"], head.body) == (200, str(len(body)), b"")


@pytest.mark.origin
def test_the_gateway_refuses_tampered_unsigned_expired_and_other_object_urls(
    gateway: GcsGateway,
) -> None:
    gateway.put(BUCKET, "strict.bin", b"strict")
    gateway.put(BUCKET, "other.bin", b"other")
    bucket, signer = _signer(gateway, expires=60)
    url = signer.sign(_ref(bucket, "strict.bin"), "GET")
    assert direct(url).status == 200
    signature = parse_qs(urlsplit(url).query)["X-Goog-Signature"][0]
    flipped = signature[:10] + ("0" if signature[10] != "0" else "1") + signature[11:]
    tampered = direct(url.replace(signature, flipped))
    assert tampered.status == 403
    assert b"<Code>SignatureDoesNotMatch</Code>" in tampered.body
    assert direct(url.partition("?")[0]).status == 403
    assert direct(url.replace("/strict.bin?", "/other.bin?")).status == 403
    assert direct(url.replace("X-Goog-Expires=60", "X-Goog-Expires=61")).status == 403
    assert direct(url, method="HEAD").status == 403  # signed for GET only
    gateway.time_shift = timedelta(seconds=61)
    expired = direct(url)
    assert expired.status == 403
    assert b"<Code>ExpiredToken</Code>" in expired.body


@pytest.mark.origin
def test_generation_and_response_overrides_are_signed_and_honoured(gateway: GcsGateway) -> None:
    first = gateway.put(BUCKET, "versioned.bin", b"first")
    gateway.put(BUCKET, "versioned.bin", b"second")
    bucket, signer = _signer(gateway)
    old = signer.sign(_ref(bucket, "versioned.bin", (("generation", str(first)),)), "GET")
    assert direct(old).status == 404  # the gateway keeps the live generation only
    live = signer.sign(_ref(bucket, "versioned.bin", (("generation", str(first + 1)),)), "GET")
    assert direct(live).body == b"second"
    params = (
        ("response-content-type", "text/plain; charset=utf-8"),
        ("response-content-disposition", 'attachment; filename="a b.bin"'),
    )
    reply = direct(signer.sign(_ref(bucket, "versioned.bin", params), "GET"))
    assert (reply.status, reply.body) == (200, b"second")
    assert reply.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert reply.headers["Content-Disposition"] == 'attachment; filename="a b.bin"'
    crc32c = google_crc32c.value(b"second").to_bytes(4, "big")
    md5 = hashlib.md5(b"second").digest()
    assert reply.headers.get_all("x-goog-hash") == [
        "crc32c=" + base64.b64encode(crc32c).decode(),
        "md5=" + base64.b64encode(md5).decode(),
    ]
    assert reply.headers["ETag"] == f'"{md5.hex()}"'


@pytest.mark.origin
def test_a_range_is_served_partially(gateway: GcsGateway) -> None:
    body = os.urandom(10_000)
    gateway.put(BUCKET, "ranged.bin", body)
    bucket, signer = _signer(gateway)
    url = signer.sign(_ref(bucket, "ranged.bin"), "GET")
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=10)
    try:
        conn.request("GET", f"{parts.path}?{parts.query}", headers={"Range": "bytes=100-199"})
        response = conn.getresponse()
        assert response.status == 206
        assert response.read() == body[100:200]
        assert response.headers["Content-Range"] == "bytes 100-199/10000"
    finally:
        conn.close()


@pytest.mark.origin
def test_two_urls_signed_at_different_times_are_one_task(
    gateway: GcsGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway.put(BUCKET, "dir/model weights+v1.bin", b"weights")
    urls = []
    for ago, expires in ((120, 3600), (0, 900)):
        at = datetime.now(UTC) - timedelta(seconds=ago)
        monkeypatch.setattr(google.cloud.storage._signing, "_NOW", lambda tz, at=at: at)
        bucket, signer = _signer(gateway, expires=expires)
        urls.append(signer.sign(_ref(bucket, "dir/model weights+v1.bin"), "GET"))
    first, second = (parse_qs(urlsplit(url).query) for url in urls)
    for name in ("X-Goog-Date", "X-Goog-Expires", "X-Goog-Signature"):
        assert first[name] != second[name], name
    assert [direct(url).status for url in urls] == [200, 200]
    one, two = (identify(url, filtered_params("gcs")) for url in urls)
    assert one == two
    assert one.url == f"{gateway.endpoint}/models/dir/model%20weights%2Bv1.bin"


# -- credentials -----------------------------------------------------------------------------


@pytest.fixture
def metadata_server(gateway: GcsGateway, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """google-auth's Application Default Credentials find the gateway's metadata server and
    nothing else (no key file, no gcloud credentials)."""
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.setenv("GCE_METADATA_IP", gateway.metadata_host)
    # google-auth reads GCE_METADATA_HOST once, at import.
    monkeypatch.setattr(_metadata, "_GCE_METADATA_HOST", gateway.metadata_host)


@pytest.mark.origin
@pytest.mark.usefixtures("metadata_server")
def test_default_credentials_sign_through_iam_sign_blob(gateway: GcsGateway) -> None:
    gateway.put(BUCKET, "ambient.bin", b"ambient")
    bucket, signer = _signer(gateway, source="default", iam_endpoint=gateway.endpoint)
    signer.check()
    blobs_before = len(gateway.sign_blob_tokens)
    url = signer.sign(_ref(bucket, "ambient.bin"), "GET")
    assert len(gateway.sign_blob_tokens) == blobs_before + 1
    assert parse_qs(urlsplit(url).query)["X-Goog-Credential"][0].startswith(ACCOUNT.email + "/")
    assert direct(url).body == b"ambient"


@pytest.mark.origin
@pytest.mark.usefixtures("metadata_server")
def test_expiring_tokens_are_refreshed_before_signing(
    gateway: GcsGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway.put(BUCKET, "refresh.bin", b"fresh")
    gateway.token_lifetime = 300
    bucket, signer = _signer(gateway, source="default", iam_endpoint=gateway.endpoint)
    first = signer.sign(_ref(bucket, "refresh.bin"), "GET")
    # Five minutes and a second later for google-auth and for the gateway alike: the first
    # token has expired, and the gateway refuses it.
    shift = timedelta(seconds=301)
    # google-auth's clock: naive UTC.
    monkeypatch.setattr(
        google.auth._helpers, "utcnow", lambda: datetime.now(UTC).replace(tzinfo=None) + shift
    )
    gateway.time_shift = shift
    second = signer.sign(_ref(bucket, "refresh.bin", (("response-content-type", "x/y"),)), "GET")
    stale, fresh = gateway.sign_blob_tokens[-2:]
    assert stale != fresh
    assert [direct(first).status, direct(second).status] == [200, 200]
    refused = requests.post(
        f"{gateway.endpoint}/v1/projects/-/serviceAccounts/{ACCOUNT.email}:signBlob",
        json={"payload": base64.b64encode(b"x").decode()},
        headers={"Authorization": f"Bearer {stale}"},
        timeout=10,
    )
    assert refused.status_code == 401


@pytest.mark.origin
@pytest.mark.usefixtures("metadata_server")
def test_an_account_iam_refuses_is_a_signing_error(gateway: GcsGateway) -> None:
    bucket, signer = _signer(
        gateway,
        source="default",
        iam_endpoint=gateway.endpoint,
        service_account_email="unknown@dummy-project-id.iam.gserviceaccount.com",
    )
    with pytest.raises(SigningError) as info:
        signer.sign(_ref(bucket, "x.bin"), "GET")
    assert "signBlob API answered 404" in str(info.value)
    assert "'models'" in str(info.value)


def test_a_missing_key_file_is_reported_with_the_reason(tmp_path: Path) -> None:
    bucket = _bucket(
        credentials={"source": "file", "service_account_file": str(tmp_path / "no.json")}
    )
    with pytest.raises(SigningError) as info:
        GcsSigner(bucket, 600).check()
    assert "no.json" in str(info.value)
    assert "No such file" in str(info.value)
    assert "'models'" in str(info.value)


def test_a_broken_key_file_is_reported_without_its_content(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text(KEY_JSON.replace('"client_email"', '"mail"'))
    bucket = _bucket(credentials={"source": "file", "service_account_file": str(broken)})
    with pytest.raises(SigningError) as info:
        GcsSigner(bucket, 600).check()
    assert "not a service account key file" in str(info.value)
    assert PRIVATE_KEY_LINE not in str(info.value)
    assert info.value.__cause__ is None


def test_no_default_credentials_is_reported_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "absent.json"))
    bucket = GcsBucket.model_validate({"provider": "gcs", "bucket": BUCKET})
    with pytest.raises(SigningError) as info:
        GcsSigner(bucket, 600).check()
    assert "no Google default credentials found" in str(info.value)


def test_default_credentials_holding_a_key_sign_locally(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(TEST_SERVICE_ACCOUNT_FILE))
    bucket = GcsBucket.model_validate({"provider": "gcs", "bucket": BUCKET})
    url = GcsSigner(bucket, 600).sign(_ref(bucket, "k.bin"), "GET")
    assert url.startswith("https://storage.googleapis.com/models/k.bin?")
    assert ACCOUNT.email in parse_qs(urlsplit(url).query)["X-Goog-Credential"][0]


def test_the_gcs_bucket_is_a_bucket_config() -> None:
    adapter: TypeAdapter[BucketConfig] = TypeAdapter(BucketConfig)
    assert isinstance(adapter.validate_python({"provider": "gcs", "bucket": BUCKET}), GcsBucket)


def test_default_credentials_without_a_service_account_need_one_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # gcloud's user credentials: a token, no key and no service account to sign as.
    user = google.oauth2.credentials.Credentials(token="user-token")  # type: ignore[no-untyped-call]
    monkeypatch.setattr(google.auth, "default", lambda scopes: (user, None))
    bucket = GcsBucket.model_validate({"provider": "gcs", "bucket": BUCKET})
    with pytest.raises(SigningError) as info:
        GcsSigner(bucket, 600).check()
    assert "set credentials.service_account_email" in str(info.value)
    assert "'models'" in str(info.value)
    assert "user-token" not in str(info.value)
