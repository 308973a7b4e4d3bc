"""The GCS V4 verifier (tests/support/gcs_v4.py) against Google's own conformance vectors.

It judges shim's GCS signing, so it is trusted only because it verifies every one of the 29
``signingV4Tests`` (computing the same canonical request and string to sign), and refuses each
of them once any signed part is altered.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.support.gcs_gateway import VECTORS_DIR, load_service_account
from tests.support.gcs_v4 import Rejected, Verified, verify

VECTORS: list[dict[str, Any]] = json.loads((VECTORS_DIR / "v4_signatures.json").read_text())[
    "signingV4Tests"
]
ACCOUNT = load_service_account(VECTORS_DIR / "service-account.json")
OTHER_EMAIL = "other-account@dummy-project-id.iam.gserviceaccount.com"
# The same key under two names: a credential naming the other account is then refused by the
# signature itself (the credential is part of the string to sign), not by an unknown name.
KEYS = {ACCOUNT.email: ACCOUNT.public_key, OTHER_EMAIL: ACCOUNT.public_key}
# Its canonical request keeps a path-style path although its URL is virtual-hosted; its string
# to sign (and so its signature) hashes the URL's own path, as every other vector does.
STALE_CANONICAL_REQUEST = "Universe domain with virtual hosted style"
# These vectors sign the host name alone, without the URL's port 8080.
HOST_WITHOUT_PORT = {
    "Simple GET with non-default hostname",
    "Endpoint on client with scheme",
    "Endpoint on client takes precedence over emulator",
}
DEFAULT_PORTS = {"http": 80, "https": 443}


def _signed_host(vector: dict[str, Any]) -> str:
    (line,) = (
        line for line in vector["expectedCanonicalRequest"].split("\n") if line.startswith("host:")
    )
    return str(line).removeprefix("host:")


def _target(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def _headers(vector: dict[str, Any]) -> list[tuple[str, str]]:
    return [*vector.get("headers", {}).items(), ("Host", _signed_host(vector))]


def _now(vector: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(vector["timestamp"])


def _verify(
    vector: dict[str, Any],
    *,
    target: str | None = None,
    headers: list[tuple[str, str]] | None = None,
    now: datetime | None = None,
) -> Verified:
    return verify(
        vector["method"],
        target if target is not None else _target(vector["expectedUrl"]),
        headers if headers is not None else _headers(vector),
        keys=KEYS,
        now=now or _now(vector),
    )


def _rejected(vector: dict[str, Any], **changes: Any) -> str:
    with pytest.raises(Rejected) as info:
        _verify(vector, **changes)
    return info.value.code


by_description = pytest.mark.parametrize("vector", VECTORS, ids=[v["description"] for v in VECTORS])


def test_all_29_vectors_are_here() -> None:
    assert len(VECTORS) == 29
    assert len({v["description"] for v in VECTORS}) == 29


@by_description
def test_vector_verifies_with_googles_canonical_request_and_string_to_sign(
    vector: dict[str, Any],
) -> None:
    verified = _verify(vector)
    assert verified.email == ACCOUNT.email
    assert verified.string_to_sign == vector["expectedStringToSign"]
    if vector["description"] == STALE_CANONICAL_REQUEST:
        stale_path = vector["expectedCanonicalRequest"].split("\n")[1]
        assert verified.canonical_request == vector["expectedCanonicalRequest"].replace(
            stale_path, urlsplit(vector["expectedUrl"]).path, 1
        )
    else:
        assert verified.canonical_request == vector["expectedCanonicalRequest"]


@by_description
def test_vector_signs_the_host_its_url_names(vector: dict[str, Any]) -> None:
    parts = urlsplit(vector["expectedUrl"])
    host = parts.hostname or ""
    if parts.port is not None and parts.port != DEFAULT_PORTS[parts.scheme]:
        host = f"{host}:{parts.port}"
    expected = parts.hostname if vector["description"] in HOST_WITHOUT_PORT else host
    assert _signed_host(vector) == expected


@by_description
def test_every_altered_signature_byte_is_refused(vector: dict[str, Any]) -> None:
    url = vector["expectedUrl"]
    query = urlsplit(url).query
    signature = dict(p.split("=", 1) for p in query.split("&"))["X-Goog-Signature"]
    raw = bytes.fromhex(signature)
    assert len(raw) == 256
    for index in range(len(raw)):
        altered = raw[:index] + bytes([raw[index] ^ 0x01]) + raw[index + 1 :]
        target = _target(url).replace(signature, altered.hex())
        assert _rejected(vector, target=target) == "SignatureDoesNotMatch"


@by_description
def test_an_altered_path_is_refused(vector: dict[str, Any]) -> None:
    target = _target(vector["expectedUrl"])
    path, _, query = target.partition("?")
    for altered in (path + "x", path[:-1], path + "/", path.upper()):
        assert _rejected(vector, target=f"{altered}?{query}") == "SignatureDoesNotMatch"


@by_description
def test_an_altered_or_missing_signed_header_is_refused(vector: dict[str, Any]) -> None:
    headers = _headers(vector)
    for index, (name, value) in enumerate(headers):
        changed = [*headers[:index], (name, value + "x"), *headers[index + 1 :]]
        assert _rejected(vector, headers=changed) == "SignatureDoesNotMatch"
        missing = headers[:index] + headers[index + 1 :]
        assert _rejected(vector, headers=missing) == "MalformedSecurityHeader"
    # Sending a signed header twice changes its canonical value too.
    doubled = [*headers, ("Host", _signed_host(vector))]
    assert _rejected(vector, headers=doubled) == "SignatureDoesNotMatch"


@by_description
def test_an_altered_expiry_date_credential_or_extra_parameter_is_refused(
    vector: dict[str, Any],
) -> None:
    target = _target(vector["expectedUrl"])
    expires = f"X-Goog-Expires={vector['expiration']}"
    assert _rejected(vector, target=target.replace(expires, f"{expires}0")) == (
        "SignatureDoesNotMatch"
    )
    other = target.replace("test-iam-credentials%40", "other-account%40")
    assert _rejected(vector, target=other) == "SignatureDoesNotMatch"
    unknown = target.replace("test-iam-credentials%40", "nobody%40")
    assert _rejected(vector, target=unknown) == "InvalidAccessKeyId"
    day = vector["timestamp"][:10].replace("-", "")
    next_day = (datetime.strptime(day, "%Y%m%d") + timedelta(days=1)).strftime("%Y%m%d")
    assert _rejected(vector, target=target.replace(f"%2F{day}%2F", f"%2F{next_day}%2F")) == (
        "InvalidArgument"
    )
    # Both dates moved together: consistent, but not what was signed.
    later = target.replace(f"%2F{day}%2F", f"%2F{next_day}%2F").replace(
        f"X-Goog-Date={day}", f"X-Goog-Date={next_day}"
    )
    assert _rejected(vector, target=later, now=_now(vector) + timedelta(days=1)) == (
        "SignatureDoesNotMatch"
    )
    assert _rejected(vector, target=target + "&generation=1") == "SignatureDoesNotMatch"
    assert _rejected(vector, target=target.replace("GOOG4-RSA-SHA256", "GOOG4-HMAC-SHA256")) == (
        "InvalidArgument"
    )


@by_description
def test_a_method_other_than_the_signed_one_is_refused(vector: dict[str, Any]) -> None:
    other = "HEAD" if vector["method"] != "HEAD" else "GET"
    with pytest.raises(Rejected) as info:
        verify(
            other,
            _target(vector["expectedUrl"]),
            _headers(vector),
            keys=KEYS,
            now=_now(vector),
        )
    assert info.value.code == "SignatureDoesNotMatch"


def test_a_signature_by_another_key_is_refused() -> None:
    vector = VECTORS[0]
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = other_key.sign(
        vector["expectedStringToSign"].encode(), padding.PKCS1v15(), hashes.SHA256()
    )
    url = vector["expectedUrl"]
    signature = url.rpartition("X-Goog-Signature=")[2]
    target = _target(url).replace(signature, forged.hex())
    assert _rejected(vector, target=target) == "SignatureDoesNotMatch"


def test_unsigned_duplicated_and_malformed_signatures_are_refused() -> None:
    vector = VECTORS[0]
    target = _target(vector["expectedUrl"])
    assert _rejected(vector, target=urlsplit(vector["expectedUrl"]).path) == "AccessDenied"
    signature = target.rpartition("X-Goog-Signature=")[2]
    assert _rejected(vector, target=f"{target}&X-Goog-Signature={signature}") == "InvalidArgument"
    assert _rejected(vector, target=target.replace(signature, signature.upper())) == (
        "SignatureDoesNotMatch"
    )
    assert _rejected(vector, target=target.replace(signature, signature + "0")) == (
        "SignatureDoesNotMatch"
    )
    no_signature = target.partition("&X-Goog-Signature=")[0]
    assert _rejected(vector, target=no_signature) == "InvalidArgument"


def test_expiry_follows_the_injected_clock() -> None:
    vector = VECTORS[0]  # signed 2019-02-01T09:00:00Z for 10 seconds
    signed_at = _now(vector)
    assert _rejected(vector, now=signed_at - timedelta(seconds=1)) == "RequestNotYetValid"
    assert _verify(vector, now=signed_at).expires_at == signed_at + timedelta(seconds=10)
    assert _verify(vector, now=signed_at + timedelta(seconds=10))
    assert _rejected(vector, now=signed_at + timedelta(seconds=11)) == "ExpiredToken"
    assert _rejected(vector, now=datetime.now(signed_at.tzinfo)) == "ExpiredToken"
