"""Recognise object-storage URLs: a request URL -> the configured bucket and object key it
names, or None when shim must pass the request through untouched. Pure: no I/O.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

from shim._errors import RequestError
from shim.providers import BucketConfig, Route, provider_of
from shim.providers._base import DEFAULT_PORTS


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """One object of a configured bucket, as a client asked for it."""

    bucket: BucketConfig
    key: str
    # Query parameters that select or shape the object (versionId, response-*), in order.
    params: tuple[tuple[str, str], ...]
    # The scheme the client used; plain http may be upgraded towards the origin.
    client_scheme: str


# The methods that read an object: the only ones shim serves (shim.decide, shim.s3api).
READ_METHODS = ("GET", "HEAD")
# Object stores' limit on a key, in UTF-8 bytes (S3, GCS and Azure: 1024).
MAX_KEY_BYTES = 1024


@functools.cache
def _routes(bucket: BucketConfig) -> tuple[Route, ...]:
    return provider_of(bucket).routes(bucket)


def _object_params(bucket: BucketConfig, query: str) -> tuple[tuple[str, str], ...]:
    provider = provider_of(bucket)
    kept: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name in provider.object_params:
            if name in kept:
                # Which one would the origin use? Refuse rather than guess.
                raise RequestError(f"query parameter {name!r} is given more than once")
            kept[name] = value
        elif name not in provider.signature_params:
            # Everything else a client might send (old signatures) is dropped, and anything
            # unknown is refused rather than guessed.
            supported = ", ".join(sorted(provider.object_params)) or "none"
            raise RequestError(
                f"query parameter {name!r} is not supported on a signed bucket; "
                f"supported: {supported}"
            )
    provider.check_params(kept)
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


def _raw_key(bucket: BucketConfig, host: str, scheme: str, port: int, path: str) -> str | None:
    """The raw key ``path`` names when ``host:port`` is one of ``bucket``'s routes, else None."""
    for route in _routes(bucket):
        if route.matches_host(host, scheme, port) and path.startswith(route.prefix):
            return path[len(route.prefix) :]
    return None


def is_bucket_host(host: str, port: int, scheme: str, buckets: Iterable[BucketConfig]) -> bool:
    """Whether requests to ``host:port`` may name an object of a configured bucket: the hosts
    whose TLS shim intercepts. A path-style endpoint counts, whichever bucket a path names."""
    host = host.lower()
    return any(
        route.matches_host(host, scheme, port) for bucket in buckets for route in _routes(bucket)
    )


def recognize(url: str, buckets: Iterable[BucketConfig]) -> ObjectRef | None:
    """Return the object ``url`` names in one of ``buckets``, or None if it names none.

    Both virtual-hosted (``bucket.host/key``) and path-style (``host/bucket/key``) URLs are
    recognised. Raises RequestError for a URL of a configured bucket that cannot be served.
    """
    try:
        parts = urlsplit(url)
        port = parts.port if parts.port is not None else DEFAULT_PORTS.get(parts.scheme, 0)
    except ValueError:
        return None
    host = (parts.hostname or "").lower()
    if parts.scheme not in DEFAULT_PORTS or not host:
        return None
    if parts.fragment or "#" in url:
        # A request target never holds a fragment; the key must not depend on who drops it.
        if is_bucket_host(host, port, parts.scheme, buckets):
            raise RequestError("the URL holds '#': percent-encode it as %23 in a key")
        return None
    for bucket in buckets:
        raw_key = _raw_key(bucket, host, parts.scheme, port, parts.path or "/")
        if raw_key is not None:
            return _object_ref(bucket, raw_key, parts.query, parts.scheme)
    return None


def recognize_reverse(target: str, buckets: Iterable[BucketConfig]) -> ObjectRef | None:
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
            return _object_ref(bucket, raw_key, query, "http")
    return None


def _object_ref(bucket: BucketConfig, raw_key: str, query: str, scheme: str) -> ObjectRef:
    try:
        key = _decode_key(raw_key)
    except UnicodeDecodeError:
        raise RequestError("the object key is not valid UTF-8") from None
    return ObjectRef(bucket, key, _object_params(bucket, query), scheme)
