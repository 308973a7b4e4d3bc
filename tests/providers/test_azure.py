"""Azure Blob: config, URL recognition, SAS signing; the SAS judged by azurite (`origin`)."""

from __future__ import annotations

import datetime
import http.client
import json
import os
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import pytest
from azure.storage.blob._shared.shared_access_signature import QueryStringConstants
from pydantic import TypeAdapter

from shim._errors import ConfigError, RequestError, SigningError
from shim.config import dragonfly_endpoint_to_mapping, settings_from_mapping
from shim.identity import filtered_params, identify
from shim.providers import PROVIDERS, BucketConfig
from shim.providers.azure import (
    OBJECT_PARAMS,
    PUBLIC_PARAMS,
    SIGNATURE_PARAMS,
    AzureBucket,
    AzureSigner,
)
from shim.recognize import ObjectRef, recognize
from shim.redact import redact_url, signature_secrets
from tests.support.azurite import (
    ACCOUNT,
    ACCOUNT_KEY,
    OBJECT_ID,
    TENANT_ID,
    AzuriteServer,
    ManagedIdentityEndpoint,
    put_blob,
    start_azurite,
)
from tests.support.http import Reply, direct
from tests.support.procs import free_port
from tests.support.tls import make_pki

CONTAINER = "models"
KEY_B64 = "c2hpbS10ZXN0LWFjY291bnQta2V5LW5vdC1yZWFs"  # base64, not a real key
SECOND = datetime.timedelta(seconds=1)


def _bucket(**fields: Any) -> AzureBucket:
    raw: dict[str, Any] = {
        "provider": "azure",
        "account": "acct",
        "container": CONTAINER,
        "credentials": {"source": "static", "account_key": KEY_B64},
        **fields,
    }
    return AzureBucket.model_validate(raw)


def _sign(
    bucket: AzureBucket,
    key: str = "dir/model.bin",
    *,
    params: tuple[tuple[str, str], ...] = (),
    scheme: str = "https",
    expires: int = 900,
) -> str:
    return AzureSigner(bucket, expires).sign(ObjectRef(bucket, key, params, scheme), "GET")


def _tampered(url: str) -> str:
    """``url`` with one character of its signature changed."""
    sig = quote(_query(url)["sig"], safe="/")
    flipped = sig[:5] + ("B" if sig[5] == "A" else "A") + sig[6:]
    return url.replace(f"sig={sig}", f"sig={flipped}")


def _query(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))


def _expiry(url: str) -> datetime.datetime:
    return datetime.datetime.strptime(_query(url)["se"], "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=datetime.UTC
    )


# -- config -------------------------------------------------------------------------------------


def test_a_connection_string_names_the_account_and_the_emulators_endpoint() -> None:
    bucket = AzureBucket.model_validate(
        {
            "provider": "azure",
            "container": CONTAINER,
            "credentials": {"source": "static", "connection_string": "UseDevelopmentStorage=true"},
        }
    )
    assert bucket.account == "devstoreaccount1"
    assert bucket.endpoint == "http://127.0.0.1:10000/devstoreaccount1"


def test_a_connection_string_for_the_public_cloud_keeps_the_default_endpoint() -> None:
    conn = f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={KEY_B64}"
    bucket = _bucket(credentials={"source": "static", "connection_string": conn})
    assert bucket.endpoint is None
    assert bucket.account_url("http") == "https://acct.blob.core.windows.net"


def test_a_connection_string_endpoint_suffix_is_a_sovereign_cloud() -> None:
    conn = f"AccountName=acct;AccountKey={KEY_B64};EndpointSuffix=core.chinacloudapi.cn"
    bucket = _bucket(credentials={"source": "static", "connection_string": conn})
    assert bucket.endpoint == "https://acct.blob.core.chinacloudapi.cn"


CONN = f"AccountName=acct;AccountKey={KEY_B64}"


@pytest.mark.parametrize(
    ("credentials", "fields", "message"),
    [
        ({"source": "static"}, {}, "one of account_key or connection_string"),
        (
            {"source": "static", "account_key": KEY_B64, "connection_string": CONN},
            {},
            "one of account_key or connection_string",
        ),
        ({"source": "default", "account_key": KEY_B64}, {}, "no account_key"),
        (
            {"source": "static", "connection_string": CONN.replace("acct", "other")},
            {},
            "differs from the connection string's AccountName 'other'",
        ),
        ({"source": "static", "connection_string": "not;a;" + KEY_B64}, {}, "malformed"),
        ({"source": "static", "connection_string": "AccountKey=" + KEY_B64}, {}, "malformed"),
        ({"source": "static", "account_key": KEY_B64}, {"account": "Acct"}, "account name"),
        ({"source": "static", "account_key": KEY_B64}, {"container": "Models"}, "container"),
        ({"source": "static", "account_key": KEY_B64}, {"container": "a/b"}, "container"),
        ({"source": "static", "account_key": KEY_B64}, {"endpoint": "ftp://x"}, "http(s) URL"),
        ({"source": "default"}, {"endpoint": "http://127.0.0.1:10000/acct"}, "https endpoint"),
    ],
)
def test_invalid_configs_are_refused_without_the_secret(
    credentials: dict[str, str], fields: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _settings_bucket({"credentials": credentials, **fields}, {})
    assert message in str(info.value)
    assert KEY_B64 not in str(info.value)


def test_the_endpoint_keeps_its_path_without_a_trailing_slash() -> None:
    bucket = _bucket(endpoint="http://127.0.0.1:10000/devstoreaccount1/")
    assert bucket.endpoint == "http://127.0.0.1:10000/devstoreaccount1"


def test_secrets_are_not_in_the_repr() -> None:
    for bucket in (_bucket(), _bucket(credentials={"source": "static", "connection_string": CONN})):
        assert KEY_B64 not in repr(bucket)
        assert KEY_B64 not in str(bucket.model_dump())


def _settings_bucket(fields: dict[str, Any], env: dict[str, str]) -> AzureBucket:
    raw = {"buckets": [{"provider": "azure", "account": "acct", "container": CONTAINER, **fields}]}
    (bucket,) = settings_from_mapping(raw, env=env).buckets
    assert isinstance(bucket, AzureBucket)
    return bucket


def test_env_reads_the_account_key_by_its_default_name() -> None:
    bucket = _settings_bucket({"credentials": {"source": "env"}}, {"AZURE_STORAGE_KEY": KEY_B64})
    key = bucket.credentials.account_key
    assert (bucket.credentials.source, key and key.get_secret_value()) == ("static", KEY_B64)


def test_env_prefers_the_connection_string_as_the_azure_cli_does() -> None:
    env = {"AZURE_STORAGE_KEY": "b3RoZXI=", "AZURE_STORAGE_CONNECTION_STRING": CONN}
    bucket = _settings_bucket({"credentials": {"source": "env"}}, env)
    assert bucket.credentials.account_key is None
    assert bucket.credentials.connection_string is not None


def test_env_reads_only_the_variable_named() -> None:
    env = {"MY_KEY": KEY_B64, "AZURE_STORAGE_CONNECTION_STRING": "UseDevelopmentStorage=true"}
    creds = {"credentials": {"source": "env", "account_key_env": "MY_KEY"}}
    bucket = _settings_bucket(creds, env)
    assert bucket.credentials.connection_string is None
    assert bucket.endpoint is None


@pytest.mark.parametrize(
    ("credentials", "missing"),
    [
        ({"source": "env"}, "'AZURE_STORAGE_KEY' or 'AZURE_STORAGE_CONNECTION_STRING'"),
        ({"source": "env", "connection_string_env": "MY_CONN"}, "'MY_CONN'"),
    ],
)
def test_env_without_the_variables_is_a_config_error_naming_them(
    credentials: dict[str, str], missing: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _settings_bucket({"credentials": credentials}, {})
    assert "buckets[0].credentials" in str(info.value)
    assert missing in str(info.value)


def test_dragonfly_endpoint_abs_config_is_read_unchanged() -> None:
    doc = {
        "object_storage": {
            "type": "abs",
            "account_name": ACCOUNT,
            "account_key": KEY_B64,
            "container_name": CONTAINER,
            "endpoint": "http://127.0.0.1:10000/devstoreaccount1",
        },
        "filter": "sig&se",
    }
    settings = settings_from_mapping(dragonfly_endpoint_to_mapping(doc, "config.json"), env={})
    (bucket,) = settings.buckets
    assert isinstance(bucket, AzureBucket)
    assert (bucket.account, bucket.container) == (ACCOUNT, CONTAINER)
    assert bucket.endpoint == "http://127.0.0.1:10000/devstoreaccount1"
    assert bucket.credentials.account_key is not None
    assert bucket.credentials.account_key.get_secret_value() == KEY_B64


# -- recognition --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "url"),
    [
        ({}, "https://acct.blob.core.windows.net/models/dir/a%20b.bin"),
        ({}, "http://acct.blob.core.windows.net/models/dir/a%20b.bin"),
        ({}, "https://ACCT.Blob.Core.Windows.Net/models/dir/a%20b.bin"),
        (
            {"endpoint": "http://127.0.0.1:10000/devstoreaccount1"},
            "http://127.0.0.1:10000/devstoreaccount1/models/dir/a%20b.bin",
        ),
        (
            {"endpoint": "https://acct.blob.core.chinacloudapi.cn"},
            "https://acct.blob.core.chinacloudapi.cn/models/dir/a%20b.bin",
        ),
        (
            {"endpoint": "https://acct.blob.core.usgovcloudapi.net:443/"},
            "https://acct.blob.core.usgovcloudapi.net/models/dir/a%20b.bin",
        ),
        ({"hosts": ["models.example.com"]}, "https://models.example.com/dir/a%20b.bin"),
        ({"hosts": ["cdn.example.com:8443"]}, "https://cdn.example.com:8443/dir/a%20b.bin"),
    ],
)
def test_every_url_shape_names_the_blob(fields: dict[str, Any], url: str) -> None:
    bucket = _bucket(**fields)
    ref = recognize(url, [bucket])
    assert ref is not None
    assert (ref.bucket, ref.key, ref.params) == (bucket, "dir/a b.bin", ())


@pytest.mark.parametrize(
    ("fields", "url"),
    [
        ({}, "https://other.blob.core.windows.net/models/x.bin"),  # another account
        ({}, "https://acct.blob.core.windows.net/other/x.bin"),  # another container
        ({}, "https://acct.blob.core.windows.net/modelsx/x.bin"),
        ({}, "https://acct.blob.core.windows.net:8443/models/x.bin"),
        # An endpoint replaces the public cloud's host.
        ({"endpoint": "https://acct.blob.core.chinacloudapi.cn"}, "https://acct.blob.core.windows.net/models/x.bin"),
        # The emulator's account is part of the path.
        ({"endpoint": "http://127.0.0.1:10000/devstoreaccount1"}, "http://127.0.0.1:10000/models/x.bin"),
        ({"endpoint": "http://127.0.0.1:10000/devstoreaccount1"}, "http://127.0.0.1:10001/devstoreaccount1/models/x.bin"),
    ],
)  # fmt: skip
def test_other_accounts_containers_and_ports_are_not_this_bucket(
    fields: dict[str, Any], url: str
) -> None:
    assert recognize(url, [_bucket(**fields)]) is None


def test_snapshot_and_version_select_the_blob_and_old_sas_parameters_are_dropped() -> None:
    bucket = _bucket()
    base = "https://acct.blob.core.windows.net/models/m.bin"
    stale = "sv=2024-08-04&se=2020-01-01T00%3A00%3A00Z&sr=b&sp=rw&sig=abc%3D&skoid=x&rsct=a"
    ref = recognize(f"{base}?snapshot=2024-05-01T10:20:30.1234567Z&{stale}", [bucket])
    assert ref is not None
    assert ref.params == (("snapshot", "2024-05-01T10:20:30.1234567Z"),)
    ref = recognize(f"{base}?versionid=2024-05-01T10%3A20%3A30.1234567Z", [bucket])
    assert ref is not None
    assert ref.params == (("versionid", "2024-05-01T10:20:30.1234567Z"),)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("comp=metadata", "'comp' is not supported"),
        ("restype=container&comp=list", "not supported"),
        ("snapshot=yesterday", "snapshot must be a timestamp"),
        ("versionid=1", "versionid must be a timestamp"),
        ("snapshot=2024-05-01T10:20:30Z&versionid=2024-05-01T10:20:30Z", "together"),
        ("snapshot=2024-05-01T10:20:30Z&snapshot=2024-05-02T10:20:30Z", "more than once"),
    ],
)
def test_unsupported_or_malformed_parameters_are_refused(query: str, message: str) -> None:
    with pytest.raises(RequestError, match=message):
        recognize(f"https://acct.blob.core.windows.net/models/m.bin?{query}", [_bucket()])


# -- the SAS ------------------------------------------------------------------------------------


def test_the_parameter_lists_cover_every_sas_parameter_the_sdk_knows() -> None:
    sdk_params: list[str] = QueryStringConstants.to_list()  # type: ignore[no-untyped-call]
    assert set(sdk_params) <= SIGNATURE_PARAMS
    assert PROVIDERS["azure"].signature_params == SIGNATURE_PARAMS
    assert "sig" not in PUBLIC_PARAMS
    assert {"skoid", "sktid", "si", "sip"}.isdisjoint(PUBLIC_PARAMS)
    assert {"snapshot", "versionid"} == OBJECT_PARAMS


@pytest.mark.parametrize("expires", [60, 3600, 604800])
def test_the_sas_is_read_only_blob_scoped_https_only_and_expires_when_configured(
    expires: int,
) -> None:
    before = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    url = _sign(_bucket(), expires=expires)
    after = datetime.datetime.now(datetime.UTC)
    query = _query(url)
    assert url.startswith("https://acct.blob.core.windows.net/models/dir/model.bin?")
    assert (query["sp"], query["sr"], query["spr"]) == ("r", "b", "https")
    assert before + datetime.timedelta(seconds=expires) <= _expiry(url)
    assert _expiry(url) <= after + datetime.timedelta(seconds=expires)
    assert "st" not in query  # valid from the moment it is signed
    assert set(query) <= SIGNATURE_PARAMS
    assert KEY_B64 not in unquote(url)


def test_an_http_endpoint_gets_a_sas_that_allows_http() -> None:
    url = _sign(_bucket(endpoint="http://127.0.0.1:10000/devstoreaccount1"))
    assert url.startswith("http://127.0.0.1:10000/devstoreaccount1/models/dir/model.bin?")
    assert _query(url)["spr"] == "https,http"


@pytest.mark.parametrize(
    ("upgrade_http", "client_scheme", "origin", "spr"),
    [
        (True, "http", "https", "https"),
        (True, "https", "https", "https"),
        (False, "http", "http", "https,http"),
        (False, "https", "https", "https"),
    ],
)
def test_the_default_host_follows_upgrade_http(
    upgrade_http: bool, client_scheme: str, origin: str, spr: str
) -> None:
    url = _sign(_bucket(upgrade_http=upgrade_http), scheme=client_scheme)
    assert url.startswith(f"{origin}://acct.blob.core.windows.net/models/")
    assert _query(url)["spr"] == spr


@pytest.mark.parametrize(
    ("name", "value", "resource"),
    [
        ("snapshot", "2024-05-01T10:20:30.1234567Z", "bs"),
        ("versionid", "2024-05-01T10:20:30Z", "bv"),
    ],
)
def test_snapshots_and_versions_are_signed_for_and_named(
    name: str, value: str, resource: str
) -> None:
    bucket = _bucket()
    url = _sign(bucket, params=((name, value),))
    assert (_query(url)[name], _query(url)["sr"]) == (value, resource)
    ref = recognize(url, [bucket])
    assert ref is not None
    assert ref.params == ((name, value),)


@pytest.mark.parametrize(
    "key",
    ["a b.bin", "a+b.bin", "100%.bin", "k=v&x.bin", "q?x.bin", "模型/ü.bin", "a/b/c", "/lead"],
)
def test_names_are_quoted_as_the_sdk_quotes_them_and_recognised_again(key: str) -> None:
    bucket = _bucket()
    url = _sign(bucket, key)
    path = urlsplit(url).path
    assert path == f"/models/{quote(key, safe='~/')}"
    ref = recognize(url, [bucket])
    assert ref is not None
    assert ref.key == key


def test_two_sas_signed_at_different_times_are_one_task_identity() -> None:
    bucket = _bucket()
    first = _sign(bucket, expires=600)
    second = _sign(bucket, expires=900)
    other = _sign(bucket, "dir/other.bin")
    assert _query(first)["sig"] != _query(second)["sig"]
    filtered = filtered_params("azure")
    assert identify(first, filtered) == identify(second, filtered)
    assert identify(first, filtered).task_id != identify(other, filtered).task_id
    canonical = identify(first, filtered).url
    assert canonical == "https://acct.blob.core.windows.net/models/dir/model.bin"


def test_the_signature_is_redacted_and_public_fields_are_not_secrets() -> None:
    url = _sign(_bucket())
    sig = _query(url)["sig"]
    assert sig not in unquote(redact_url(url))
    secrets = signature_secrets(url)
    assert sig in secrets
    assert not {"r", "b", "https"} & secrets


def test_check_accepts_a_base64_key_and_reports_a_broken_one_without_it() -> None:
    AzureSigner(_bucket(), 900).check()
    broken = "not base64 at all!" + KEY_B64
    with pytest.raises(SigningError) as info:
        AzureSigner(_bucket(credentials={"source": "static", "account_key": broken}), 900).check()
    assert "'models'" in str(info.value)
    assert "not base64" in str(info.value)
    assert broken not in str(info.value)
    assert info.value.__cause__ is None


def test_check_refuses_a_sas_connection_string() -> None:
    conn = "BlobEndpoint=https://acct.blob.core.windows.net/;SharedAccessSignature=sv=1&sig=x"
    signer = AzureSigner(_bucket(credentials={"source": "static", "connection_string": conn}), 900)
    with pytest.raises(SigningError, match="holds no AccountKey"):
        signer.check()


@pytest.fixture
def no_azure_identity(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An environment where DefaultAzureCredential finds nothing and probes only loopback."""
    for name in list(os.environ):
        if name.startswith(("AZURE_", "IDENTITY_", "MSI_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    # The instance metadata probe goes to a closed loopback port, not 169.254.169.254.
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", f"http://127.0.0.1:{free_port()}")


@pytest.mark.usefixtures("no_azure_identity")
def test_check_without_an_identity_says_so_promptly() -> None:
    signer = AzureSigner(_bucket(credentials={"source": "default"}), 900)
    started = time.monotonic()
    with pytest.raises(SigningError) as info:
        signer.check()
    assert time.monotonic() - started < 25
    assert "no Azure identity for container 'models'" in str(info.value)
    assert "managed identity" in str(info.value)


# -- against azurite ----------------------------------------------------------------------------

AWKWARD_NAMES = [
    "plain.bin",
    "with space.bin",
    "plus+sign.bin",
    "percent%25and%.bin",
    "equals=and&amp.bin",
    "naïve-模型-ü.bin",
    "nested/dir with space/model.bin",
    "question?mark.bin",
    "tilde~quote'semi;colon.bin",
]


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteServer]:
    with start_azurite(tmp_path_factory.mktemp("azurite")) as server:
        yield server


@pytest.fixture(scope="module")
def emulated(azurite: AzuriteServer) -> AzureBucket:
    put_blob(azurite, CONTAINER, "seed", b"seed")
    return _bucket(
        account=ACCOUNT,
        endpoint=azurite.endpoint,
        credentials={"source": "static", "account_key": ACCOUNT_KEY},
    )


def _sign_for(bucket: AzureBucket, key: str, *, expires: int = 900, **kwargs: Any) -> str:
    scheme = urlsplit(bucket.account_url("https")).scheme
    return _sign(bucket, key, scheme=scheme, expires=expires, **kwargs)


def _put(url: str, body: bytes) -> Reply:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        headers = {"x-ms-blob-type": "BlockBlob", "Content-Length": str(len(body))}
        conn.request("PUT", f"{parts.path}?{parts.query}", body=body, headers=headers)
        response = conn.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        conn.close()


@pytest.mark.origin
def test_azurite_is_strict(azurite: AzuriteServer, emulated: AzureBucket) -> None:
    put_blob(azurite, CONTAINER, "strict.bin", b"s" * 100)
    put_blob(azurite, CONTAINER, "other.bin", b"o" * 100)
    signed = _sign_for(emulated, "strict.bin")
    assert direct(signed).status == 200
    unsigned = signed.partition("?")[0]
    assert direct(unsigned).status == 403
    tampered = _tampered(signed)
    assert tampered != signed
    assert direct(tampered).status == 403
    for name, value in (("sp", "rw"), ("sr", "c"), ("se", "2099-01-01T00:00:00Z")):
        edited = signed.replace(f"{name}={quote(_query(signed)[name], safe='')}", f"{name}={value}")
        assert edited != signed
        assert direct(edited).status == 403, name
    other = signed.replace("/strict.bin?", "/other.bin?")
    assert direct(other).status == 403
    # A read SAS never writes, and the blob is left as it was.
    assert _put(signed, b"overwritten").status == 403
    assert direct(signed).body == b"s" * 100
    wrong_key = _bucket(
        account=ACCOUNT,
        endpoint=azurite.endpoint,
        credentials={"source": "static", "account_key": KEY_B64},
    )
    assert direct(_sign_for(wrong_key, "strict.bin")).status == 403


@pytest.mark.origin
@pytest.mark.parametrize("name", AWKWARD_NAMES)
def test_a_signed_get_downloads_awkward_names_byte_identical(
    azurite: AzuriteServer, emulated: AzureBucket, name: str
) -> None:
    body = os.urandom(50_000) + name.encode()
    put_blob(azurite, CONTAINER, name, body)
    reply = direct(_sign_for(emulated, name))
    assert reply.status == 200, reply.body[:300]
    assert reply.body == body
    head = direct(_sign_for(emulated, name), method="HEAD")
    assert (head.status, head.headers["Content-Length"]) == (200, str(len(body)))


@pytest.mark.origin
def test_a_snapshot_is_downloaded_as_it_was(azurite: AzuriteServer, emulated: AzureBucket) -> None:
    put_blob(azurite, CONTAINER, "snap.bin", b"before")
    blob = azurite.service().get_blob_client(CONTAINER, "snap.bin")
    snapshot = blob.create_snapshot()["snapshot"]
    blob.upload_blob(b"after", overwrite=True)
    then = direct(_sign_for(emulated, "snap.bin", params=(("snapshot", snapshot),)))
    assert (then.status, then.body) == (200, b"before")
    assert direct(_sign_for(emulated, "snap.bin")).body == b"after"
    # A blob SAS does not open its snapshots, nor a snapshot SAS the blob.
    blob_sas = _query(_sign_for(emulated, "snap.bin"))
    assert blob_sas["sr"] == "b"
    snapshot_url = _sign_for(emulated, "snap.bin", params=(("snapshot", snapshot),))
    assert direct(snapshot_url.replace(f"snapshot={snapshot}&", "")).status == 403


@pytest.mark.origin
def test_an_expired_sas_is_refused(azurite: AzuriteServer, emulated: AzureBucket) -> None:
    put_blob(azurite, CONTAINER, "short.bin", b"short")
    signed = _sign_for(emulated, "short.bin", expires=1)
    time.sleep(max(0.0, (_expiry(signed) - datetime.datetime.now(datetime.UTC)).total_seconds()))
    time.sleep(1.1)
    assert direct(signed).status == 403


@pytest.mark.origin
def test_a_connection_string_signs_what_azurite_accepts(azurite: AzuriteServer) -> None:
    put_blob(azurite, CONTAINER, "conn.bin", b"connection string")
    bucket = AzureBucket.model_validate(
        {
            "provider": "azure",
            "container": CONTAINER,
            "credentials": {"source": "static", "connection_string": azurite.connection_string},
        }
    )
    assert bucket.endpoint == azurite.endpoint
    AzureSigner(bucket, 900).check()
    assert direct(_sign_for(bucket, "conn.bin")).body == b"connection string"


@pytest.mark.origin
def test_two_sas_of_one_blob_are_one_task_and_both_download(
    azurite: AzuriteServer, emulated: AzureBucket
) -> None:
    put_blob(azurite, CONTAINER, "twice.bin", b"twice")
    first = _sign_for(emulated, "twice.bin", expires=600)
    second = _sign_for(emulated, "twice.bin", expires=900)
    assert first != second
    assert direct(first).body == direct(second).body == b"twice"
    filtered = filtered_params("azure")
    assert identify(first, filtered).task_id == identify(second, filtered).task_id


# -- user delegation SAS: DefaultAzureCredential's managed identity, azurite's OAuth ------------


@pytest.fixture(scope="module")
def oauth_azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteServer]:
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    data = tmp_path_factory.mktemp("azurite-oauth")
    with start_azurite(data, oauth_pki=(pki.ca_cert, pki.server_cert, pki.server_key)) as server:
        yield server


@pytest.fixture
def managed_identity(
    monkeypatch: pytest.MonkeyPatch, no_azure_identity: None, oauth_azurite: AzuriteServer
) -> Iterator[ManagedIdentityEndpoint]:
    """App Service's managed identity on loopback, as DefaultAzureCredential finds it; the
    storage client trusts azurite's CA through requests' own variable."""
    with ManagedIdentityEndpoint() as endpoint:
        for name, value in endpoint.environment().items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(oauth_azurite.ca_cert))
        yield endpoint


def _delegated(server: AzuriteServer) -> AzureBucket:
    return _bucket(account=ACCOUNT, endpoint=server.endpoint, credentials={"source": "default"})


def _https_get(url: str, ca_cert: Path | None) -> Reply:
    parts = urlsplit(url)
    context = ssl.create_default_context(cafile=str(ca_cert))
    conn = http.client.HTTPSConnection(parts.hostname or "", parts.port, context=context)
    try:
        conn.request("GET", f"{parts.path}?{parts.query}")
        response = conn.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        conn.close()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.origin
def test_a_managed_identity_gets_a_delegation_key_that_is_reused_then_replaced(
    oauth_azurite: AzuriteServer, managed_identity: ManagedIdentityEndpoint
) -> None:
    clock = Clock()
    bucket = _delegated(oauth_azurite)
    signer = AzureSigner(bucket, 900, clock=clock)
    signer.check()  # a token from the identity, and a delegation key from the account
    assert managed_identity.requests == 1
    ref = ObjectRef(bucket, "udk.bin", (), "https")
    first = _query(signer.sign(ref, "GET"))
    assert (first["sp"], first["sr"], first["spr"], first["sks"]) == ("r", "b", "https", "b")
    assert (first["skoid"], first["sktid"]) == (OBJECT_ID, TENANT_ID)
    key_start = datetime.datetime.strptime(first["skt"], "%Y-%m-%dT%H:%M:%SZ")
    key_expiry = datetime.datetime.strptime(first["ske"], "%Y-%m-%dT%H:%M:%SZ")
    # An hour at least (twice the URL lifetime), starting a little in the past.
    assert key_expiry - key_start == datetime.timedelta(hours=1, minutes=5)
    time.sleep(1.1)  # a new key would start a second later
    clock.now = 3600 - 900 - 300 - 1  # just before the key has a URL's lifetime and 5 min left
    assert _query(signer.sign(ref, "GET"))["skt"] == first["skt"]
    clock.now += 2
    second = _query(signer.sign(ref, "GET"))
    assert second["skt"] > first["skt"]
    assert second["sig"] != first["sig"]
    assert set(second) <= SIGNATURE_PARAMS


@pytest.mark.origin
def test_a_delegation_sas_downloads_and_azurite_checks_it(
    oauth_azurite: AzuriteServer, managed_identity: ManagedIdentityEndpoint
) -> None:
    put_blob(oauth_azurite, CONTAINER, "udk model.bin", b"delegated" * 1000)
    bucket = _delegated(oauth_azurite)
    signed = AzureSigner(bucket, 900).sign(ObjectRef(bucket, "udk model.bin", (), "https"), "GET")
    assert _https_get(_tampered(signed), oauth_azurite.ca_cert).status == 403
    reply = _https_get(signed, oauth_azurite.ca_cert)
    assert reply.status == 200, reply.body[:300]
    assert reply.body == b"delegated" * 1000


def test_the_registered_provider_builds_this_signer() -> None:
    adapter: TypeAdapter[BucketConfig] = TypeAdapter(BucketConfig)
    bucket = adapter.validate_python(
        {"provider": "azure", "account": "acct", "container": CONTAINER}
    )
    assert isinstance(PROVIDERS["azure"].signer(bucket, 900), AzureSigner)
    assert json.loads(bucket.model_dump_json())["credentials"]["source"] == "default"
