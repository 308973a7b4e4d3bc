"""What an S3 API request asks for: an object read (which the proxy serves as any URL of the
bucket), a bucket request, or an S3 error. Pure: no I/O.

The bucket is a configured bucket's reverse alias, named by the path (``/ALIAS/KEY``) or, with
a base domain, by the host (``ALIAS.DOMAIN``). Only reads pass: every other method is
AccessDenied, whatever the bucket, and so is a bucket that is not configured (the aliases are
not revealed). The client's signature is no part of the request: shim signs with its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl, quote, unquote, urlencode

from shim._errors import RequestError
from shim.config import split_authority
from shim.providers import BucketConfig
from shim.providers.s3 import SIGNATURE_PARAMS as S3_SIGNATURE_PARAMS
from shim.recognize import READ_METHODS, ObjectRef, recognize_reverse
from shim.s3api.errors import S3Error, access_denied, invalid_argument, not_implemented
from shim.s3api.listing import LIST_PARAMS, ListRequest, parse_list

# Added by SDKs to name the operation (the AWS SDKs for Go, JavaScript, Java...): no meaning.
_OPERATION_NAME = "x-id"
# Sub-resources of an object or a bucket: other operations than a read, not served.
SUBRESOURCES = frozenset(
    {
        "acl",
        "attributes",
        "tagging",
        "torrent",
        "legal-hold",
        "retention",
        "restore",
        "select",
        "uploadId",
        "uploads",
        "versions",
        "versioning",
        "policy",
        "policyStatus",
        "cors",
        "lifecycle",
        "website",
        "logging",
        "notification",
        "replication",
        "encryption",
        "object-lock",
        "ownershipControls",
        "publicAccessBlock",
        "requestPayment",
        "accelerate",
        "analytics",
        "inventory",
        "metrics",
        "intelligent-tiering",
        "delete",
        "session",
    }
)


@dataclass(frozen=True, slots=True)
class ObjectRead:
    """GetObject or HeadObject: served exactly as a URL naming this object would be."""

    ref: ObjectRef


@dataclass(frozen=True, slots=True)
class BucketRead:
    """HeadBucket, GetBucketLocation, or a listing (``listing``)."""

    bucket: BucketConfig
    operation: Literal["head", "location", "list"]
    listing: ListRequest | None = None


Operation = ObjectRead | BucketRead | S3Error


def operation(
    method: str,
    host_header: str | None,
    target: str,
    has_body: bool,
    buckets: tuple[BucketConfig, ...],
    domain: str | None,
) -> Operation:
    """The operation a request on the S3 API listener asks for."""
    path, _, query = target.partition("?")
    alias = _virtual_host_alias(host_header, domain)
    by_host = alias is not None
    if alias is None:
        raw_alias, _, raw_key = path.removeprefix("/").partition("/")
        alias = unquote(raw_alias)
    else:
        raw_key = path.removeprefix("/")  # as sent: the key's case is the key's
    resource = f"/{alias}/{unquote(raw_key)}" if alias else "/"
    if method not in READ_METHODS:
        return access_denied(resource, "shim's S3 API is read-only")
    bucket = _bucket_named(alias, buckets, by_host=by_host)
    if bucket is None:
        # ListBuckets too: the aliases would map out the buckets for anyone asking.
        return access_denied(resource, kind="request")
    if "#" in target:
        return invalid_argument(resource, "percent-encode '#' in a key as %23")
    if has_body:
        return S3Error(400, "InvalidRequest", f"a {method} request carries no body", resource)
    try:
        params = [
            (name, value)
            for name, value in parse_qsl(query, keep_blank_values=True, errors="strict")
            if name not in S3_SIGNATURE_PARAMS and name != _OPERATION_NAME
        ]
    except (UnicodeDecodeError, ValueError):
        return invalid_argument(resource, "the query string is not valid UTF-8")
    names = {name for name, _ in params}
    if names & SUBRESOURCES:
        what = ", ".join(sorted(names & SUBRESOURCES))
        return not_implemented(resource, f"shim's S3 API serves no {what} requests")
    if not raw_key:
        return _bucket_operation(bucket, method, params, resource)
    return _object_operation(bucket, raw_key, params, resource)


def _bucket_operation(
    bucket: BucketConfig, method: str, params: list[tuple[str, str]], resource: str
) -> Operation:
    names = {name for name, _ in params}
    if method == "HEAD":
        return BucketRead(bucket, "head")
    if "location" in names:
        return BucketRead(bucket, "location")
    unknown = names - LIST_PARAMS
    if unknown:
        return not_implemented(
            resource, f"shim's S3 API does not serve {', '.join(sorted(unknown))} on a bucket"
        )
    listing = parse_list(params, resource)
    if isinstance(listing, S3Error):
        return listing
    return BucketRead(bucket, "list", listing)


def _object_operation(
    bucket: BucketConfig, raw_key: str, params: list[tuple[str, str]], resource: str
) -> Operation:
    # As a reverse-listener URL of the same object: the same key decoding, the same checks of
    # its parameters, the same reference, so the same signed request and cache entry.
    target = f"/{quote(bucket.reverse_alias, safe='')}/{raw_key}"
    if params:
        target += "?" + urlencode(params, quote_via=quote)
    try:
        ref = recognize_reverse(target, (bucket,))
    except RequestError as error:
        return invalid_argument(resource, str(error))
    assert ref is not None, "the target starts with the bucket's alias"
    return ObjectRead(ref)


def _virtual_host_alias(host_header: str | None, domain: str | None) -> str | None:
    """The alias a virtual-hosted request's Host names (ALIAS.DOMAIN), or None: path-style."""
    if domain is None or not host_header:
        return None
    split = split_authority(host_header)
    if split is None:
        return None
    host = split[0].lower().rstrip(".")
    suffix = "." + domain
    return host[: -len(suffix)] if host.endswith(suffix) and len(host) > len(suffix) else None


def _bucket_named(
    alias: str, buckets: tuple[BucketConfig, ...], *, by_host: bool
) -> BucketConfig | None:
    """The bucket ``alias`` names: in a path, the alias as written; in a Host, which DNS
    compares ignoring case (and ``alias`` is in lower case), the alias equal to it, else the
    one alias equal to it but for case (several: the Host cannot say which)."""
    if not alias:
        return None
    exact = next((b for b in buckets if b.reverse_alias == alias), None)
    if exact is not None or not by_host:
        return exact
    folded = [b for b in buckets if b.reverse_alias.lower() == alias]
    return folded[0] if len(folded) == 1 else None
