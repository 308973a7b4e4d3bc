"""A verifier of Google Cloud Storage V4 signed URLs (GOOG4-RSA-SHA256), written from Google's
published algorithm, independently of the google-cloud-storage SDK: it judges the URLs the SDK
signs, so it must not share the SDK's code. Trusted because it verifies all of Google's
cross-language conformance vectors (tests/providers/test_gcs_verifier.py). Pure: no I/O.

The algorithm (https://cloud.google.com/storage/docs/authentication/signatures):

    canonical request = METHOD \\n canonical path \\n canonical query \\n canonical headers \\n
                        signed header names \\n payload hash ("UNSIGNED-PAYLOAD")
    string to sign    = GOOG4-RSA-SHA256 \\n X-Goog-Date \\n credential scope \\n
                        hex(SHA-256(canonical request))
    X-Goog-Signature  = hex(RSASSA-PKCS1-v1_5(SHA-256, service account key, string to sign))
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from hashlib import sha256
from urllib.parse import quote, unquote

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

ALGORITHM = "GOOG4-RSA-SHA256"
SCOPE_SUFFIX = ("storage", "goog4_request")
MAX_EXPIRES = 604800  # seven days
DATE_FORMAT = "%Y%m%dT%H%M%SZ"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
# The query parameters a V4 signature consists of; each must occur exactly once.
SIGNATURE_PARAMS = (
    "X-Goog-Algorithm",
    "X-Goog-Credential",
    "X-Goog-Date",
    "X-Goog-Expires",
    "X-Goog-SignedHeaders",
    "X-Goog-Signature",
)


class Rejected(Exception):
    """The request is not validly signed. ``code`` is GCS's XML error code; a signature that
    does not match carries the string to sign and canonical request, as GCS echoes them."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        string_to_sign: str | None = None,
        canonical_request: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.string_to_sign = string_to_sign
        self.canonical_request = canonical_request


@dataclass(frozen=True)
class Verified:
    """A request whose signature verified: who signed it, and what was signed."""

    email: str
    canonical_request: str
    string_to_sign: str
    signed_at: datetime
    expires_at: datetime


def _encode(value: str) -> str:
    # RFC 3986 percent-encoding: everything but the unreserved characters A-Z a-z 0-9 - . _ ~
    return quote(value, safe="~")


def _decode(raw: str) -> str:
    try:
        return unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise Rejected("InvalidArgument", "the URL is not valid UTF-8 once decoded") from None


def canonical_path(raw_path: str) -> str:
    """The path as the signature covers it: the object name decoded once, then encoded with
    every character but the unreserved ones and "/" percent-encoded."""
    return quote(_decode(raw_path), safe="/~")


def parse_query(raw_query: str) -> list[tuple[str, str]]:
    """Decoded (name, value) pairs in order; "+" is a plus sign, not a space."""
    pairs = []
    for piece in raw_query.split("&"):
        if piece:
            name, _, value = piece.partition("=")
            pairs.append((_decode(name), _decode(value)))
    return pairs


def canonical_query(pairs: Iterable[tuple[str, str]]) -> str:
    """Every parameter but the signature, encoded, sorted by name then value."""
    encoded = sorted(
        (_encode(name), _encode(value)) for name, value in pairs if name != "X-Goog-Signature"
    )
    return "&".join(f"{name}={value}" for name, value in encoded)


def canonical_headers(headers: Iterable[tuple[str, str]], signed: Iterable[str]) -> tuple[str, str]:
    """The canonical header block (each signed header as ``name:value``, a header sent several
    times joined with ",", runs of whitespace collapsed to one space) and the payload hash.
    Raises Rejected when a signed header is absent from the request."""
    values: dict[str, list[str]] = {}
    for name, value in headers:
        values.setdefault(name.strip().lower(), []).append(" ".join(value.split()))
    lines = []
    for name in signed:
        if name not in values:
            raise Rejected("MalformedSecurityHeader", f"the signed header {name!r} is missing")
        lines.append(f"{name}:{','.join(values[name])}")
    # A signed payload hash is carried in a signed header; a GET has no payload to hash.
    payload = UNSIGNED_PAYLOAD
    if "x-goog-content-sha256" in values and "x-goog-content-sha256" in signed:
        payload = ",".join(values["x-goog-content-sha256"])
    return "".join(line + "\n" for line in lines), payload


def _one(pairs: list[tuple[str, str]], name: str) -> str:
    values = [value for key, value in pairs if key == name]
    if len(values) != 1:
        raise Rejected(
            "InvalidArgument", f"{name} must be given exactly once (given {len(values)} times)"
        )
    return values[0]


def _signed_header_names(value: str) -> list[str]:
    names = value.split(";")
    if names != sorted(set(names)) or any(n != n.strip().lower() or not n for n in names):
        raise Rejected("InvalidArgument", "X-Goog-SignedHeaders must be sorted lowercase names")
    if "host" not in names:
        raise Rejected("InvalidArgument", "X-Goog-SignedHeaders must include host")
    return names


def _parse_date(value: str) -> datetime:
    try:
        return datetime.strptime(value, DATE_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise Rejected("InvalidArgument", "X-Goog-Date must be YYYYMMDDTHHMMSSZ") from None


def _parse_expires(value: str) -> int:
    if not (value.isascii() and value.isdigit() and 1 <= int(value) <= MAX_EXPIRES):
        raise Rejected("InvalidArgument", f"X-Goog-Expires must be 1 to {MAX_EXPIRES} seconds")
    return int(value)


def _signature_bytes(value: str) -> bytes:
    if not value or value != value.lower():
        raise Rejected("SignatureDoesNotMatch", "X-Goog-Signature must be lowercase hex")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise Rejected("SignatureDoesNotMatch", "X-Goog-Signature must be lowercase hex") from None


def verify(
    method: str,
    target: str,
    headers: Iterable[tuple[str, str]],
    *,
    keys: Mapping[str, RSAPublicKey],
    now: datetime,
) -> Verified:
    """Verify the V4 query-string signature of a request: ``method``, the raw request
    ``target`` (path and query as sent), its ``headers`` (Host included), against the public
    keys of the service accounts ``keys`` (by email), at time ``now``. Raises Rejected."""
    raw_path, _, raw_query = target.partition("?")
    pairs = parse_query(raw_query)
    names = {name for name, _ in pairs}
    if not names & set(SIGNATURE_PARAMS):
        raise Rejected("AccessDenied", "Anonymous caller does not have storage.objects.get access")
    algorithm = _one(pairs, "X-Goog-Algorithm")
    credential = _one(pairs, "X-Goog-Credential")
    timestamp = _one(pairs, "X-Goog-Date")
    expires = _parse_expires(_one(pairs, "X-Goog-Expires"))
    signed_names = _signed_header_names(_one(pairs, "X-Goog-SignedHeaders"))
    signature = _signature_bytes(_one(pairs, "X-Goog-Signature"))
    if algorithm != ALGORITHM:
        raise Rejected("InvalidArgument", f"X-Goog-Algorithm must be {ALGORITHM}")

    email, _, scope = credential.partition("/")
    scope_parts = scope.split("/")
    signed_at = _parse_date(timestamp)
    if len(scope_parts) != 4 or tuple(scope_parts[2:]) != SCOPE_SUFFIX:
        raise Rejected(
            "InvalidArgument", "X-Goog-Credential must be EMAIL/DATE/LOCATION/storage/goog4_request"
        )
    if scope_parts[0] != timestamp[:8]:
        raise Rejected("InvalidArgument", "the credential's date is not X-Goog-Date's")
    key = keys.get(email)
    if key is None:
        raise Rejected("InvalidAccessKeyId", "the service account in X-Goog-Credential is unknown")

    expires_at = signed_at + timedelta(seconds=expires)
    if now < signed_at:
        raise Rejected("RequestNotYetValid", "the signed URL is not valid yet (X-Goog-Date)")
    if now > expires_at:
        raise Rejected("ExpiredToken", f"the signed URL expired at {expires_at:%Y-%m-%dT%H:%M:%SZ}")

    header_block, payload = canonical_headers(headers, signed_names)
    canonical_request = "\n".join(
        [
            method,
            canonical_path(raw_path),
            canonical_query(pairs),
            header_block,
            ";".join(signed_names),
            payload,
        ]
    )
    string_to_sign = "\n".join(
        [ALGORITHM, timestamp, scope, sha256(canonical_request.encode()).hexdigest()]
    )
    try:
        key.verify(signature, string_to_sign.encode(), padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise Rejected(
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided.",
            string_to_sign=string_to_sign,
            canonical_request=canonical_request,
        ) from None
    return Verified(email, canonical_request, string_to_sign, signed_at, expires_at)
