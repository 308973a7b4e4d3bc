"""What happens to a request: one pure decision, made in one place. No I/O.

Every security rule of the proxy lives here, and each is a row of a table in the tests:

- ``decide(facts, settings)`` for an HTTP request on any listener: refuse it, pass it through
  unsigned to a host the pass-through policy allows, or serve one object of a configured
  bucket, named by its canonical (bucket, key).
- ``decide_tunnel(host, port, settings)`` for a CONNECT (or a TLS ClientHello on the
  transparent listener): intercept TLS for bucket hosts only, tunnel allowed hosts blindly,
  refuse the rest.
- ``refuse_destination(host, port, addresses, settings)`` for every connection mitmproxy is
  about to open upstream, with the addresses the host resolved to: the last gate, so no path
  through the proxy reaches loopback or link-local addresses nobody named.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from shim._errors import RequestError
from shim.config import Passthrough, Settings, split_authority
from shim.recognize import READ_METHODS, ObjectRef, is_bucket_host, recognize, recognize_reverse
from shim.s3api.errors import S3Error
from shim.s3api.request import BucketRead, ObjectRead, operation

Listener = Literal["regular", "transparent", "reverse", "s3"]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What the proxy knows of a request once its head arrived, before any body byte."""

    listener: Listener
    method: str
    scheme: str  # as the client used it (https inside an intercepted tunnel)
    host: str  # where the request goes: the request line's authority, or the Host header
    port: int
    target: str  # the raw request target in origin form: /path?query
    host_header: str | None
    has_body: bool


@dataclass(frozen=True, slots=True)
class Refuse:
    status: int
    kind: str  # the metrics label and the X-Shim-Error value
    message: str  # for the client: never a secret, a signature or the list of aliases
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None  # the answer's body when not the message (an S3 error's XML)


@dataclass(frozen=True, slots=True)
class PassThrough:
    """Forward unsigned, as the client sent it: the pass-through policy allows the host."""


@dataclass(frozen=True, slots=True)
class Serve:
    """Sign and serve this object; its key is the one the cache, the task ID and the origin
    all use."""

    ref: ObjectRef


@dataclass(frozen=True, slots=True)
class Intercept:
    """Terminate TLS with shim's CA: the host may name objects of configured buckets."""


@dataclass(frozen=True, slots=True)
class Tunnel:
    """Relay the bytes untouched: the pass-through policy allows the host."""


# On the S3 API listener: an S3 error, or a request for a bucket rather than an object.
Decision = Refuse | PassThrough | Serve | S3Error | BucketRead
TunnelDecision = Refuse | Intercept | Tunnel


def decide(facts: RequestFacts, settings: Settings) -> Decision:
    if facts.listener == "reverse":
        return _decide_reverse(facts, settings)
    if facts.listener == "s3":
        return _decide_s3(facts, settings)
    if facts.listener == "regular" and not _host_header_agrees(facts):
        return Refuse(400, "request", "the Host header does not match the request target")
    url = f"{facts.scheme}://{_bracketed(facts.host)}:{facts.port}{facts.target}"
    try:
        ref = recognize(url, settings.buckets)
    except RequestError as error:
        return Refuse(400, "request", str(error))
    if ref is None:
        if passthrough_allows(facts.host, facts.port, settings.passthrough):
            return PassThrough()
        return Refuse(
            403,
            "passthrough",
            f"{_bracketed(facts.host)}:{facts.port} is not a configured bucket, and the "
            "passthrough setting does not allow it",
        )
    if facts.method not in READ_METHODS:
        return Refuse(403, "method", "shim only reads from configured buckets (GET and HEAD)")
    return _serve(ref, facts)


def _decide_reverse(facts: RequestFacts, settings: Settings) -> Decision:
    try:
        ref = recognize_reverse(facts.target, settings.buckets)
    except RequestError as error:
        return Refuse(400, "request", str(error))
    if ref is None:
        # The aliases are not listed: they would map out the buckets for anyone asking.
        return Refuse(404, "request", "no configured bucket alias starts this path")
    if facts.method not in READ_METHODS:
        return Refuse(
            405,
            "method",
            "the reverse listener serves GET and HEAD only",
            (("Allow", ", ".join(READ_METHODS)),),
        )
    return _serve(ref, facts)


def _decide_s3(facts: RequestFacts, settings: Settings) -> Decision:
    """The S3 API (shim.s3api.request): an object read is served as any URL of its bucket."""
    domain = settings.s3_api.domain if settings.s3_api else None
    read = operation(
        facts.method, facts.host_header, facts.target, facts.has_body, settings.buckets, domain
    )
    return Serve(read.ref) if isinstance(read, ObjectRead) else read


def _serve(ref: ObjectRef, facts: RequestFacts) -> Decision:
    if facts.has_body:
        return Refuse(400, "request", f"a {facts.method} request carries no body")
    return Serve(ref)


def decide_tunnel(host: str, port: int, settings: Settings) -> TunnelDecision:
    """CONNECT host:port (or a transparent TLS connection to it)."""
    if is_bucket_host(host, port, "https", settings.buckets):
        return Intercept()
    if passthrough_allows(host, port, settings.passthrough):
        return Tunnel()
    return Refuse(
        403,
        "passthrough",
        f"{_bracketed(host)}:{port} is not a configured bucket host, and the passthrough "
        "setting does not allow it",
    )


def refuse_destination(
    host: str, port: int, addresses: Iterable[IPAddress], settings: Settings
) -> Refuse | None:
    """None when mitmproxy may connect to ``host:port``, which resolved to ``addresses``."""
    if not passthrough_allows(host, port, settings.passthrough):
        return Refuse(403, "passthrough", f"{_bracketed(host)}:{port} is not allowed")
    if not named_exactly(host, port, settings.passthrough) and any(
        _internal(address) for address in addresses
    ):
        return Refuse(
            403,
            "passthrough",
            f"{_bracketed(host)}:{port} resolves to a loopback or link-local address; "
            "name it in passthrough to allow it",
        )
    return None


def passthrough_allows(host: str, port: int, policy: Passthrough) -> bool:
    """Whether ``policy`` lets unsigned requests reach ``host:port``. A host that is itself a
    loopback or link-local address must be named exactly, never by ``all`` or a wildcard."""
    if policy == "none":
        return False
    address = _ip(host)
    if (address is not None and _internal(address)) or _canonical_host(host) == "localhost":
        return named_exactly(host, port, policy)
    if policy == "all":
        return True
    return any(_entry_matches(entry, host.lower(), port) for entry in policy)


def named_exactly(host: str, port: int, policy: Passthrough) -> bool:
    if isinstance(policy, str):
        return False
    host = host.lower()
    return any(not entry.startswith("*.") and _entry_matches(entry, host, port) for entry in policy)


def _entry_matches(entry: str, host: str, port: int) -> bool:
    split = split_authority(entry)
    assert split is not None, "config validated the entry"
    entry_host, entry_port = split
    if entry_port is not None and entry_port != port:
        return False
    if entry_host.startswith("*."):
        return host.endswith(entry_host[1:])
    return _canonical_host(entry_host) == _canonical_host(host)


def _canonical_host(host: str) -> str:
    address = _ip(host)
    return str(address) if address is not None else host.lower().rstrip(".")


def _ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _internal(address: IPAddress) -> bool:
    """Addresses that reach this node or its metadata service rather than another host."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback or address.is_link_local or address.is_unspecified


def _host_header_agrees(facts: RequestFacts) -> bool:
    """An absolute-form request names its target twice; a proxy that trusted the Host header
    while connecting to the request line's host would check one and reach the other."""
    if not facts.host_header:
        return True
    split = split_authority(facts.host_header)
    if split is None:
        return False
    host, port = split
    if port is None:
        port = _DEFAULT_PORTS.get(facts.scheme)
    return _canonical_host(host) == _canonical_host(facts.host) and port == facts.port


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host
