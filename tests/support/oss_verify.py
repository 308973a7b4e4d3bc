"""A verifier for Aliyun OSS signed URLs (V1 and V4), written from Alibaba's published spec and
not from any SDK, so that tests can tell a correctly signed request from a wrong one. Pure.

V1 ("Include a V1 signature in a URL"): query ``OSSAccessKeyId``, ``Expires`` (epoch seconds),
``Signature`` = base64(HMAC-SHA1(secret, VERB\\n Content-MD5\\n Content-Type\\n Expires\\n
CanonicalizedOSSHeaders CanonicalizedResource)), where the resource is ``/BUCKET/KEY`` (decoded)
plus ``?`` and the sub-resources among the query parameters, sorted, ``name[=value]`` decoded;
an STS token travels as the sub-resource ``security-token``.

V4 ("Include a V4 signature in a URL"): query ``x-oss-signature-version=OSS4-HMAC-SHA256``,
``x-oss-credential=AKID/YYYYMMDD/REGION/oss/aliyun_v4_request``, ``x-oss-date``,
``x-oss-expires`` (seconds, at most 7 days), optional ``x-oss-additional-headers`` and
``x-oss-security-token``, and ``x-oss-signature`` = hex(HMAC-SHA256(signing key, string to
sign)). The canonical request is VERB, the URI-encoded ``/BUCKET/KEY`` ('/' kept), every query
parameter but the signature (names and values URI-encoded, '/' too, sorted), the canonical
headers (``x-oss-*``, ``content-type``, ``content-md5`` and the additional ones, lowercase,
``name:value\\n``), the additional header names, and ``UNSIGNED-PAYLOAD``, one per line. The
string to sign is ``OSS4-HMAC-SHA256``, the date-time, the scope and the canonical request's
SHA-256, one per line; the signing key chains HMAC-SHA256 from ``"aliyun_v4" + secret`` over
the date, the region, ``oss`` and ``aliyun_v4_request``.
"""

from __future__ import annotations

import base64
import calendar
import hashlib
import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote

V4_ALGORITHM = "OSS4-HMAC-SHA256"
V4_TERMINATOR = "aliyun_v4_request"
V4_MAX_EXPIRES = 7 * 24 * 3600
# How far in the future a V4 date may lie (clock skew), seconds.
MAX_SKEW = 15 * 60

# The sub-resources a V1 signature covers (Alibaba's list for CanonicalizedResource); any
# other query parameter is not signed in V1.
V1_SUBRESOURCES = frozenset(
    {
        "acl", "uploads", "location", "cors", "logging", "website", "referer", "lifecycle",
        "delete", "append", "tagging", "objectMeta", "uploadId", "partNumber", "security-token",
        "position", "img", "style", "styleName", "replication", "replicationProgress",
        "replicationLocation", "cname", "bucketInfo", "comp", "qos", "live", "status", "vod",
        "startTime", "endTime", "symlink", "x-oss-process", "response-content-type",
        "x-oss-traffic-limit", "response-content-language", "response-expires",
        "response-cache-control", "response-content-disposition", "response-content-encoding",
        "udf", "udfName", "udfImage", "udfId", "udfImageDesc", "udfApplication",
        "udfApplicationLog", "restore", "callback", "callback-var", "qosInfo", "policy", "stat",
        "encryption", "versions", "versioning", "versionId", "requestPayment",
        "x-oss-request-payer", "sequential", "inventory", "inventoryId", "continuation-token",
        "asyncFetch", "worm", "wormId", "wormExtend", "withHashContext", "x-oss-enable-md5",
        "x-oss-enable-sha1", "x-oss-enable-sha256", "x-oss-hash-ctx", "x-oss-md5-ctx",
        "transferAcceleration", "regionList", "cloudboxes", "x-oss-ac-source-ip",
        "x-oss-ac-subnet-mask", "x-oss-ac-vpc-id", "x-oss-ac-forward-allow", "metaQuery",
        "resourceGroup", "rtc", "x-oss-async-process", "responseHeader",
    }
)  # fmt: skip
V1_PARAMS = ("OSSAccessKeyId", "Expires", "Signature")
V4_PARAMS = ("x-oss-signature-version", "x-oss-credential", "x-oss-date", "x-oss-expires")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")


@dataclass(frozen=True, slots=True)
class Credential:
    """What the store knows of an access key: its secret, and for STS the token it was
    issued with (a temporary key is valid with its token only)."""

    secret: str
    security_token: str | None = None


class Denied(Exception):
    """A request the store refuses with 403: ``code`` as OSS names it, and the elements of
    OSS's error document that echo the request (as the real service sends them)."""

    def __init__(self, code: str, message: str, **echo: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.echo = echo


@dataclass(frozen=True, slots=True)
class Verified:
    version: str  # "v1" or "v4"
    access_key_id: str
    params: Mapping[str, str] = field(default_factory=dict)  # every query parameter, decoded


def parse_query(raw_query: str) -> dict[str, str]:
    """The decoded query parameters of a raw query string; a parameter given twice (which the
    signer and the store might read differently) is refused."""
    params: dict[str, str] = {}
    for piece in raw_query.split("&") if raw_query else ():
        raw_name, _, raw_value = piece.partition("=")
        try:
            name = unquote(raw_name, errors="strict")
            value = unquote(raw_value, errors="strict")
        except UnicodeDecodeError:
            raise Denied("InvalidArgument", "the query is not valid UTF-8") from None
        if name in params:
            raise Denied("InvalidArgument", f"query parameter {name!r} given twice")
        params[name] = value
    return params


def uri_encode(text: str, *, keep_slash: bool) -> str:
    """Percent-encode every byte of UTF-8 ``text`` but the unreserved ones (and '/' when
    ``keep_slash``), in upper-case hex: the V4 canonical form."""
    out = []
    for byte in text.encode("utf-8"):
        if byte in _UNRESERVED or (keep_slash and byte == ord("/")):
            out.append(chr(byte))
        else:
            out.append(f"%{byte:02X}")
    return "".join(out)


def _name_value(name: str, value: str) -> str:
    return f"{name}={value}" if value else name


def v1_string_to_sign(
    method: str, bucket: str, key: str, params: Mapping[str, str], headers: Mapping[str, str]
) -> str:
    lower = {k.lower(): v for k, v in headers.items()}
    oss_headers = "".join(
        f"{name}:{lower[name].strip()}\n" for name in sorted(k for k in lower if k[:6] == "x-oss-")
    )
    subresources = sorted((n, v) for n, v in params.items() if n in V1_SUBRESOURCES)
    resource = f"/{bucket}/{key}"
    if subresources:
        resource += "?" + "&".join(_name_value(n, v) for n, v in subresources)
    return "\n".join(
        [
            method,
            lower.get("content-md5", ""),
            lower.get("content-type", ""),
            params["Expires"],
            oss_headers + resource,
        ]
    )


def v4_canonical_request(
    method: str, bucket: str, key: str, params: Mapping[str, str], headers: Mapping[str, str]
) -> str:
    additional = [h for h in params.get("x-oss-additional-headers", "").split(";") if h]
    lower = {k.lower(): v.strip() for k, v in headers.items()}
    signed = sorted(
        name
        for name in lower
        if name.startswith("x-oss-")
        or name in ("content-type", "content-md5")
        or name in additional
    )
    query = sorted(
        (uri_encode(n, keep_slash=False), uri_encode(v, keep_slash=False))
        for n, v in params.items()
        if n != "x-oss-signature"
    )
    return "\n".join(
        [
            method,
            uri_encode(f"/{bucket}/{key}", keep_slash=True),
            "&".join(_name_value(n, v) for n, v in query),
            "".join(f"{name}:{lower[name]}\n" for name in signed),
            ";".join(additional),
            "UNSIGNED-PAYLOAD",
        ]
    )


def v4_signing_key(secret: str, date: str, region: str) -> bytes:
    key = ("aliyun_v4" + secret).encode()
    for part in (date, region, "oss", V4_TERMINATOR):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def _credential(
    credentials: Mapping[str, Credential], access_key_id: str, token: str | None
) -> Credential:
    credential = credentials.get(access_key_id)
    if credential is None:
        raise Denied(
            "InvalidAccessKeyId",
            "The OSS Access Key Id you provided does not exist in our records.",
            OSSAccessKeyId=access_key_id,
        )
    if credential.security_token != token:
        raise Denied("InvalidAccessKeyId", "The security token does not match the access key.")
    return credential


def _check_signature(expected: str, provided: str, string_to_sign: str, akid: str) -> None:
    if not hmac.compare_digest(expected.encode(), provided.encode()):
        raise Denied(
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided.",
            OSSAccessKeyId=akid,
            SignatureProvided=provided,
            StringToSign=string_to_sign,
        )


def _verify_v1(
    method: str,
    bucket: str,
    key: str,
    params: Mapping[str, str],
    headers: Mapping[str, str],
    credentials: Mapping[str, Credential],
    now: float,
) -> Verified:
    missing = [name for name in V1_PARAMS if name not in params]
    if missing:
        raise Denied("AccessDenied", f"V1 signed URL without {', '.join(missing)}")
    expires = params["Expires"]
    if not (expires.isascii() and expires.isdigit()):
        raise Denied("AccessDenied", "Expires is not a number of seconds")
    if now > int(expires):
        raise Denied("AccessDenied", "Request has expired.")
    akid = params["OSSAccessKeyId"]
    credential = _credential(credentials, akid, params.get("security-token"))
    string_to_sign = v1_string_to_sign(method, bucket, key, params, headers)
    digest = hmac.new(credential.secret.encode(), string_to_sign.encode(), hashlib.sha1).digest()
    _check_signature(base64.b64encode(digest).decode(), params["Signature"], string_to_sign, akid)
    return Verified("v1", akid, params)


def _v4_time(value: str) -> float:
    try:
        return float(calendar.timegm(time.strptime(value, "%Y%m%dT%H%M%SZ")))
    except ValueError:
        raise Denied("AccessDenied", "x-oss-date is not YYYYMMDDTHHMMSSZ") from None


def _verify_v4(
    method: str,
    bucket: str,
    key: str,
    params: Mapping[str, str],
    headers: Mapping[str, str],
    credentials: Mapping[str, Credential],
    region: str | None,
    now: float,
) -> Verified:
    missing = [name for name in (*V4_PARAMS, "x-oss-signature") if not params.get(name)]
    if missing:
        raise Denied("AccessDenied", f"V4 signed URL without {', '.join(missing)}")
    if params["x-oss-signature-version"] != V4_ALGORITHM:
        raise Denied("AccessDenied", "x-oss-signature-version is not OSS4-HMAC-SHA256")
    parts = params["x-oss-credential"].split("/")
    if len(parts) != 5 or parts[3] != "oss" or parts[4] != V4_TERMINATOR:
        raise Denied(
            "AccessDenied", "x-oss-credential is not AKID/DATE/REGION/oss/aliyun_v4_request"
        )
    akid, date, signed_region = parts[0], parts[1], parts[2]
    stamp = params["x-oss-date"]
    signed_at = _v4_time(stamp)
    if date != stamp[:8]:
        raise Denied("AccessDenied", "the credential's date is not the date of x-oss-date")
    if region is None or signed_region != region:
        raise Denied("AccessDenied", f"the credential's region is not this endpoint's ({region})")
    expires = params["x-oss-expires"]
    if not (expires.isascii() and expires.isdigit() and 0 < int(expires) <= V4_MAX_EXPIRES):
        raise Denied("AccessDenied", "x-oss-expires is not 1 to 604800 seconds")
    if signed_at > now + MAX_SKEW:
        raise Denied("RequestTimeTooSkewed", "x-oss-date is in the future")
    if now > signed_at + int(expires):
        raise Denied("AccessDenied", "Request has expired.")
    credential = _credential(credentials, akid, params.get("x-oss-security-token"))
    canonical = v4_canonical_request(method, bucket, key, params, headers)
    scope = f"{date}/{region}/oss/{V4_TERMINATOR}"
    string_to_sign = "\n".join(
        [V4_ALGORITHM, stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    signing_key = v4_signing_key(credential.secret, date, region)
    expected = hmac.new(signing_key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    _check_signature(expected, params["x-oss-signature"], string_to_sign, akid)
    return Verified("v4", akid, params)


def verify(
    method: str,
    bucket: str,
    key: str,
    raw_query: str,
    *,
    credentials: Mapping[str, Credential],
    region: str | None,
    headers: Mapping[str, str] | None = None,
    now: float | None = None,
) -> Verified:
    """Check the signed URL of a request for ``bucket``/``key`` (decoded) with ``raw_query``
    as sent, against the store's ``credentials`` (by access key ID) and the endpoint's
    ``region`` (None: V4 URLs are refused). Raises Denied, as the store would answer 403."""
    headers = headers or {}
    now = time.time() if now is None else now
    if any(name.lower() == "authorization" for name in headers):
        raise Denied("AccessDenied", "this verifier checks signed URLs, not Authorization")
    params = parse_query(raw_query)
    if any(name in params for name in (*V4_PARAMS, "x-oss-signature")):
        if any(name in params for name in V1_PARAMS):
            raise Denied("AccessDenied", "V1 and V4 signature parameters together")
        return _verify_v4(method, bucket, key, params, headers, credentials, region, now)
    if any(name in params for name in V1_PARAMS):
        return _verify_v1(method, bucket, key, params, headers, credentials, now)
    raise Denied("AccessDenied", "You have no right to access this object because of bucket acl.")
