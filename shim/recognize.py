"""Recognise object-storage URLs: a request URL -> the configured bucket and object key it
names, or None when shim must pass the request through untouched. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

from shim._errors import RequestError
from shim.config import BucketConfig

_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """One object of a configured bucket, as a client asked for it."""

    bucket: BucketConfig
    key: str
    # Query parameters that select or shape the object (versionId, response-*), in order.
    params: tuple[tuple[str, str], ...]
    # The scheme the client used; plain http may be upgraded towards the origin.
    client_scheme: str


@dataclass(frozen=True, slots=True)
class _Endpoint:
    host: str
    port: int | None  # None: the scheme's default port, whichever scheme the client used


def _aws_hosts(region: str) -> tuple[str, ...]:
    # Every spelling AWS accepts for a regional endpoint, plus the legacy global one.
    return (
        f"s3.{region}.amazonaws.com",
        f"s3-{region}.amazonaws.com",
        f"s3.dualstack.{region}.amazonaws.com",
        "s3.amazonaws.com",
    )


def _endpoint_of(url: str) -> _Endpoint:
    parts = urlsplit(url)
    port = parts.port
    if port is not None and port == _DEFAULT_PORTS.get(parts.scheme):
        port = None
    return _Endpoint((parts.hostname or "").lower(), port)


def _endpoints(bucket: BucketConfig) -> tuple[_Endpoint, ...]:
    if bucket.endpoint is None:
        return tuple(_Endpoint(host, None) for host in _aws_hosts(bucket.region))
    return (_endpoint_of(bucket.endpoint),)


def _own_hosts(bucket: BucketConfig) -> tuple[_Endpoint, ...]:
    # "http://" only makes the entry parse; a port of 80 or none matches either default port.
    return tuple(_endpoint_of(f"http://{host}") for host in bucket.hosts)


def _port_matches(endpoint: _Endpoint, scheme: str, port: int) -> bool:
    if endpoint.port is None:
        return port == _DEFAULT_PORTS.get(scheme)
    return port == endpoint.port


# Query parameters of a GET/HEAD that name or shape the object; everything else a client
# might send (old signatures) is dropped, and anything unknown is refused rather than guessed.
S3_OBJECT_PARAMS = frozenset(
    {
        "versionId",
        "partNumber",
        "response-cache-control",
        "response-content-disposition",
        "response-content-encoding",
        "response-content-language",
        "response-content-type",
        "response-expires",
    }
)


# S3's limit on a key, in UTF-8 bytes.
MAX_KEY_BYTES = 1024
MAX_PART_NUMBER = 10000


def _object_params(query: str, signature_params: frozenset[str]) -> tuple[tuple[str, str], ...]:
    kept: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name in S3_OBJECT_PARAMS:
            if name in kept:
                # Which one would the origin use? Refuse rather than guess.
                raise RequestError(f"query parameter {name!r} is given more than once")
            kept[name] = value
        elif name not in signature_params:
            raise RequestError(
                f"query parameter {name!r} is not supported on a signed bucket; "
                f"supported: {', '.join(sorted(S3_OBJECT_PARAMS))}"
            )
    part = kept.get("partNumber")
    if part is not None and not (
        part.isascii() and part.isdigit() and len(part) <= 5 and 1 <= int(part) <= MAX_PART_NUMBER
    ):
        raise RequestError(f"partNumber must be a whole number from 1 to {MAX_PART_NUMBER}")
    return tuple(kept.items())


def _decode_key(raw_path: str) -> str:
    """The object key a raw URL path names: percent-decoded once, and refused when another
    component on the way (a URL parser, the dfdaemon, the store) could read it as another key.
    """
    key = unquote(raw_path, errors="strict") if raw_path else ""
    if not key:
        raise RequestError("the URL names a bucket but no object key")
    if any(ord(c) < 0x20 or ord(c) == 0x7F or 0xD800 <= ord(c) <= 0xDFFF for c in key):
        raise RequestError("the object key holds control characters or invalid UTF-8")
    if any(segment in (".", "..") for segment in key.split("/")):
        # URL parsers (WHATWG, the dfdaemon's) resolve dot segments and AWS keeps them: the
        # object fetched and the object cached would differ. One rule: never accepted.
        raise RequestError("the object key holds a '.' or '..' path segment; name it directly")
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise RequestError(f"the object key is longer than {MAX_KEY_BYTES} bytes")
    return key


def _names(bucket: BucketConfig, host: str, scheme: str, port: int) -> str | None:
    """How ``host:port`` names ``bucket``: ``own`` (one of its own hosts: the key is the whole
    path), ``virtual`` (bucket.endpoint/key), ``path`` (endpoint/bucket/key), or None."""
    if any(host == own.host and _port_matches(own, scheme, port) for own in _own_hosts(bucket)):
        return "own"
    for endpoint in _endpoints(bucket):
        if _port_matches(endpoint, scheme, port):
            if host == f"{bucket.bucket.lower()}.{endpoint.host}":
                return "virtual"
            if host == endpoint.host:
                return "path"
    return None


def is_bucket_host(host: str, port: int, scheme: str, buckets: Iterable[BucketConfig]) -> bool:
    """Whether requests to ``host:port`` may name an object of a configured bucket: the hosts
    whose TLS shim intercepts. A path-style endpoint counts, whichever bucket a path names."""
    return any(_names(bucket, host.lower(), scheme, port) for bucket in buckets)


def recognize(
    url: str, buckets: Iterable[BucketConfig], signature_params: frozenset[str]
) -> ObjectRef | None:
    """Return the object ``url`` names in one of ``buckets``, or None if it names none.

    Both virtual-hosted (``bucket.host/key``) and path-style (``host/bucket/key``) URLs are
    recognised. Raises RequestError for a URL of a configured bucket that cannot be served.
    """
    try:
        parts = urlsplit(url)
        port = parts.port if parts.port is not None else _DEFAULT_PORTS.get(parts.scheme, 0)
    except ValueError:
        return None
    host = (parts.hostname or "").lower()
    if parts.scheme not in _DEFAULT_PORTS or not host:
        return None
    if parts.fragment or "#" in url:
        # A request target never holds a fragment; the key must not depend on who drops it.
        if is_bucket_host(host, port, parts.scheme, buckets):
            raise RequestError("the URL holds '#': percent-encode it as %23 in a key")
        return None
    for bucket in buckets:
        names = _names(bucket, host, parts.scheme, port)
        if names in ("own", "virtual"):
            raw_key = parts.path[1:]
        elif names == "path" and parts.path.startswith(f"/{bucket.bucket}/"):
            raw_key = parts.path[len(bucket.bucket) + 2 :]
        else:
            continue
        return _object_ref(bucket, raw_key, parts.query, parts.scheme, signature_params)
    return None


def recognize_reverse(
    target: str, buckets: Iterable[BucketConfig], signature_params: frozenset[str]
) -> ObjectRef | None:
    """The object a reverse-listener request target ``/ALIAS/KEY[?query]`` names, or None when
    no bucket has that alias."""
    if "#" in target:
        raise RequestError("the URL holds '#': percent-encode it as %23 in a key")
    path, _, query = target.partition("?")
    alias, slash, raw_key = path.removeprefix("/").partition("/")
    if not slash:
        return None
    for bucket in buckets:
        if bucket.reverse_alias == unquote(alias):
            return _object_ref(bucket, raw_key, query, "http", signature_params)
    return None


def _object_ref(
    bucket: BucketConfig,
    raw_key: str,
    query: str,
    scheme: str,
    signature_params: frozenset[str],
) -> ObjectRef:
    try:
        key = _decode_key(raw_key)
    except UnicodeDecodeError:
        raise RequestError("the object key is not valid UTF-8") from None
    return ObjectRef(bucket, key, _object_params(query, signature_params), scheme)
