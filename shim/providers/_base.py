"""What every provider module provides, and the parts of a bucket's config they share.

A provider module (``shim/providers/<store>.py``) exposes one ``PROVIDER`` object satisfying
``Provider``: its bucket config model (a ``BucketBase`` subclass with ``provider:
Literal["<store>"]``), the URL routes that name its objects, the query parameters that shape an
object and those that sign it, the checksum headers its responses carry, and a signer factory.
Nothing outside the module knows anything about the store.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shim._errors import ConfigError
from shim.freshness import DEFAULT_AFTER, FreshnessPolicy, RevalidateAfter

if TYPE_CHECKING:
    from shim.recognize import ObjectRef

DEFAULT_PORTS = {"http": 80, "https": 443}


class Strict(BaseModel):
    # A misspelt key must be an error, not silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


class BucketBase(Strict):
    """Settings every provider's bucket has. Subclasses add ``provider: Literal[...]``, the
    store's own names (bucket, account, container...) and a ``credentials`` model."""

    provider: str
    upgrade_http: bool = Field(
        default=True,
        description="fetch plain http:// client URLs over https when the store's default "
        "endpoint is used",
    )
    presign_expires: int | None = Field(
        default=None,
        ge=60,
        le=604800,
        description="lifetime of the URLs shim signs for this bucket, seconds; default: the "
        "top-level presign_expires",
    )
    alias: str | None = Field(
        default=None,
        description="first path segment naming this bucket on the reverse listener "
        "(http://SHIM/ALIAS/KEY); default: the bucket (container) name",
    )
    hosts: tuple[str, ...] = Field(
        default=(),
        description="more HOST[:PORT] names clients use for this bucket, with the key as the "
        "whole path (a custom domain, or the address a transparent redirect catches)",
    )
    revalidate: RevalidateAfter = Field(
        default=DEFAULT_AFTER,
        description="when a cached object is checked with its origin again: always, never, "
        "a duration (60s, 5m, seconds) or {after: DURATION} after the last check",
    )
    keep_uncacheable: bool = Field(
        default=False,
        description="keep objects the origin marks Cache-Control: no-store or private",
    )

    @property
    def name(self) -> str:
        """The bucket (or container) name, as people say it."""
        raise NotImplementedError

    @property
    def freshness(self) -> FreshnessPolicy:
        return FreshnessPolicy(self.revalidate, self.keep_uncacheable)

    @property
    def reverse_alias(self) -> str:
        return self.alias or self.name

    def origin_scheme(self, client_scheme: str) -> str:
        """The scheme towards the store's default endpoint for a client's ``client_scheme``."""
        return "https" if client_scheme == "https" or self.upgrade_http else "http"

    @field_validator("alias")
    @classmethod
    def _alias_is_one_segment(cls, value: str | None) -> str | None:
        if value is not None and (not value or "/" in value or value != value.strip()):
            raise ValueError("an alias is one non-empty path segment, without '/'")
        return value

    @field_validator("hosts")
    @classmethod
    def _hosts_are_host_port(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for host in value:
            if not host or "/" in host or host != host.strip():
                raise ValueError(f"expected HOST or HOST:PORT, got {host!r}")
        return tuple(host.lower() for host in value)


def http_endpoint(value: str | None, *, keep_path: bool = False) -> str | None:
    """Validate an endpoint URL and normalise it to ``scheme://host[:port]`` (with its path
    when ``keep_path``); a bare host means https. For the providers' ``endpoint`` validators."""
    if value is None:
        return None
    if "://" not in value:
        value = "https://" + value
    scheme, _, rest = value.partition("://")
    host, slash, path = rest.partition("/")
    if scheme not in ("http", "https") or not host or "?" in rest or "#" in rest:
        raise ValueError(f"expected an http(s) URL such as https://store.example.com: {value!r}")
    path = path.strip("/") if keep_path else ""
    return f"{scheme}://{host}" + (f"/{path}" if path and slash else "")


@dataclass(frozen=True, slots=True)
class Route:
    """URLs to ``host`` (on ``port``; None: the default port of either scheme) whose raw path
    starts with ``prefix`` name an object of one bucket; the rest of the path is its key."""

    host: str
    port: int | None
    prefix: str  # begins and ends with "/"

    @classmethod
    def of(cls, url: str, prefix: str = "/") -> Route:
        """The route for ``prefix`` under an endpoint URL (its own path goes before it)."""
        parts = urlsplit(url)
        port = parts.port
        if port is not None and port == DEFAULT_PORTS.get(parts.scheme):
            port = None
        base = parts.path.rstrip("/")
        return cls((parts.hostname or "").lower(), port, base + prefix)

    def matches_host(self, host: str, scheme: str, port: int) -> bool:
        if host != self.host:
            return False
        if self.port is None:
            return port == DEFAULT_PORTS.get(scheme)
        return port == self.port


def own_routes(bucket: BucketBase) -> tuple[Route, ...]:
    """The routes of a bucket's ``hosts``: the key is the whole path."""
    # "http://" only makes the entry parse; a port of 80 or none matches either default port.
    return tuple(Route.of(f"http://{host}") for host in bucket.hosts)


class EndpointBucket(BucketBase):
    """A bucket named ``bucket`` on a store reached at its default endpoint or at ``endpoint``
    (S3, OBS, GCS, OSS). Subclasses constrain the name and say the default endpoint host."""

    bucket: str
    endpoint: str | None = Field(
        default=None,
        description="the store's endpoint URL; absent means the provider's default endpoint",
    )

    @property
    def name(self) -> str:
        return self.bucket

    def default_endpoint_host(self) -> str:
        raise NotImplementedError

    def endpoint_url(self, client_scheme: str) -> str:
        """Where signed requests go: ``endpoint``, else the default endpoint host over the
        scheme ``origin_scheme`` picks."""
        if self.endpoint is not None:
            return self.endpoint
        return f"{self.origin_scheme(client_scheme)}://{self.default_endpoint_host()}"

    @field_validator("bucket")
    @classmethod
    def _bucket_is_one_name(cls, value: str) -> str:
        if "/" in value or value != value.strip():
            raise ValueError("a bucket name has no '/' and no surrounding spaces")
        return value

    @field_validator("endpoint")
    @classmethod
    def _endpoint_is_http_url(cls, value: str | None) -> str | None:
        return http_endpoint(value)


def bucket_routes(
    bucket: EndpointBucket, hosts: Iterable[str], *, path_style: bool = True
) -> tuple[Route, ...]:
    """The bucket's own hosts, then virtual-hosted (BUCKET.HOST/KEY) and, with ``path_style``,
    path-style (HOST/BUCKET/KEY) routes on each of the store's ``hosts`` (default port) and
    on the configured endpoint (both styles there, whatever ``path_style`` says)."""
    name = bucket.bucket
    routes = list(own_routes(bucket))
    for host in hosts:
        routes.append(Route(f"{name.lower()}.{host}", None, "/"))
        if path_style:
            routes.append(Route(host, None, f"/{name}/"))
    if bucket.endpoint is not None:
        base = Route.of(bucket.endpoint)
        routes.append(Route(f"{name.lower()}.{base.host}", base.port, "/"))
        routes.append(Route(base.host, base.port, f"{base.prefix}{name}/"))
    return tuple(routes)


class Signer(Protocol):
    def sign(self, ref: ObjectRef, method: str) -> str:
        """A presigned URL for ``method`` (GET or HEAD) on ``ref``, valid for the bucket's URL
        lifetime. May block (credential refresh, a token request). Raises SigningError."""
        ...

    def check(self) -> None:
        """Load the credentials now (blocking), raising SigningError with the reason when they
        cannot be: shim reports such a bucket at start-up, not at its first download."""
        ...


class Provider(Protocol):
    """One object store. Implemented by a ``PROVIDER`` object in each provider module."""

    @property
    def name(self) -> str:
        """The config's ``provider`` value, e.g. "s3"."""
        ...

    @property
    def dragonfly_type(self) -> str:
        """dragonfly-endpoint's ``object_storage.type`` for this store (s3, oss, gcs, abs...)."""
        ...

    @property
    def config(self) -> type[BucketBase]:
        """The bucket config model: a BucketBase subclass with ``provider: Literal[name]``."""
        ...

    @property
    def signature_params(self) -> frozenset[str]:
        """Every query parameter of this store's signatures: never part of an object's
        identity, left out of the task ID and sent to the dfdaemon as its filter."""
        ...

    @property
    def public_params(self) -> frozenset[str]:
        """The signature parameters whose values only say how and when a URL was signed
        (algorithm, timestamps, lifetime, permissions, version): public, and short enough
        ("r", "3600") to occur in any text. Every other signature value is redacted wherever
        it occurs."""
        ...

    @property
    def object_params(self) -> frozenset[str]:
        """Query parameters a client may send that select or shape the object (versions,
        response-header overrides); anything else that is not a signature parameter is
        refused."""
        ...

    @property
    def checksum_headers(self) -> tuple[str, ...]:
        """Response headers carrying a checksum of the object, for end-to-end integrity."""
        ...

    def routes(self, bucket: Any) -> tuple[Route, ...]:
        """Every URL shape that names an object of ``bucket``, ``own_routes`` included."""
        ...

    def check_params(self, params: Mapping[str, str]) -> None:
        """Raise RequestError for object parameters the store would reject or misread."""
        ...

    def signer(self, bucket: Any, expires: int) -> Signer:
        """A signer for ``bucket`` whose URLs live ``expires`` seconds. Builds no client and
        reads no credentials yet (that is ``Signer.check`` or the first ``sign``)."""
        ...

    def resolve_env(
        self, credentials: Mapping[str, Any], env: Mapping[str, str], where: str
    ) -> Mapping[str, Any]:
        """``credentials`` (raw config) with ``source: env`` turned into values read from
        ``env``; raises ConfigError naming ``where`` when a variable is missing."""
        ...

    def bucket_from_dragonfly(self, storage: Mapping[str, Any]) -> dict[str, Any]:
        """dragonfly-endpoint's ``object_storage`` object as a raw bucket mapping, unchanged in
        meaning (validated afterwards like any bucket)."""
        ...


def resolve_env_values(
    credentials: Mapping[str, Any],
    env: Mapping[str, str],
    where: str,
    variables: Mapping[str, str],
    required: tuple[str, ...],
) -> dict[str, Any]:
    """The common ``source: env`` rule. ``variables`` maps each credential field to its default
    variable name, which ``<field>_env`` overrides; the fields read become values and the
    source becomes ``static``. Fields in ``required`` must be set."""
    if credentials.get("source") != "env":
        return dict(credentials)
    name_keys = {f"{field}_env" for field in variables}
    resolved = {k: v for k, v in credentials.items() if k not in name_keys}
    for field, default in variables.items():
        name = credentials.get(f"{field}_env", default)
        value = env.get(name) if isinstance(name, str) else None
        if value:
            resolved[field] = value
        elif field in required:
            raise ConfigError(f"{where}.{field}_env: environment variable {name!r} is not set")
    resolved["source"] = "static"
    return resolved
