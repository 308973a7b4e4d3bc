"""Settings: one typed, validated object built from YAML, the environment, or a
dragonfly-endpoint ``config.json``. Nothing else in shim reads files or the environment for
configuration; everything downstream receives a ``Settings``.
"""

from __future__ import annotations

import ipaddress
import json
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import platformdirs
import yaml
from pydantic import (
    BeforeValidator,
    ByteSize,
    Field,
    PositiveInt,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from shim._errors import ConfigError
from shim.cache.disk import Watermarks
from shim.freshness import parse_duration
from shim.metrics import DEFAULT_TOP_OBJECTS
from shim.providers import PROVIDERS, BucketConfig
from shim.providers._base import Strict as _Strict

# Ports chosen to collide with neither TorchServe (8080-8082, 7070-7071) nor dfdaemon
# (4000-4006, 65000-65004).
DEFAULT_LISTEN = "127.0.0.1:8790"
DEFAULT_ADMIN = "127.0.0.1:8791"


# HOST:PORT with ASCII digits; an IPv6 host must be bracketed, or "::8790" would be ambiguous.
_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^:\[\]\s]+):([0-9]{1,5})")


def split_host_port(value: str) -> tuple[str, int]:
    match = _HOST_PORT.fullmatch(value)
    if match is None or int(match.group(2)) > 65535:
        raise ValueError(
            f"expected HOST:PORT (IPv6 as [ADDR]:PORT) with a port from 0 to 65535, got {value!r}"
        )
    return match.group(1).strip("[]"), int(match.group(2))


class CacheSettings(_Strict):
    dir: Path = Field(default_factory=lambda: Path(platformdirs.user_cache_dir("shim")))
    max_size: ByteSize = ByteSize(20 * 1024**3)
    zero_copy_hits: bool = Field(
        default=True,
        description="write large answers on the client's connection (large reads and writes, "
        "large TLS records) instead of relaying them through mitmproxy from the local cache "
        "server",
    )
    min_free: ByteSize = Field(
        default=ByteSize(1024**3),
        description="free disk space the cache always leaves; an object that does not fit "
        "streams through without being kept",
    )
    # Kubelet's image garbage collection defaults (85%, 80%): below its eviction at 90%.
    high_watermark: float | None = Field(
        default=0.85,
        description="share of the disk in use (0.85 or '85%') past which the cache evicts "
        "least recently used entries, and which no fill takes it past; null: min_free alone",
    )
    low_watermark: float | None = Field(
        default=0.80, description="share of the disk in use the eviction brings it back to"
    )

    @field_validator("max_size")
    @classmethod
    def _positive(cls, value: ByteSize) -> ByteSize:
        if value <= 0:
            raise ValueError("must be a positive size such as 20GiB")
        return value

    @field_validator("high_watermark", "low_watermark", mode="before")
    @classmethod
    def _fraction(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().endswith("%"):
            try:
                return float(value.strip()[:-1]) / 100
            except ValueError:
                raise ValueError(
                    "expected a fraction such as 0.85 or a percent such as 85%"
                ) from None
        return value

    @model_validator(mode="after")
    def _marks_in_order(self) -> Self:
        high, low = self.high_watermark, self.low_watermark
        if (high is None) != (low is None):
            raise ValueError("set both high_watermark and low_watermark, or neither (null)")
        if high is not None and low is not None and not 0 < low < high <= 1:
            raise ValueError(
                f"watermarks need 0 < low_watermark < high_watermark <= 1 (100%), got "
                f"low {low} and high {high}"
            )
        return self

    @property
    def watermarks(self) -> Watermarks | None:
        high, low = self.high_watermark, self.low_watermark
        return None if high is None or low is None else Watermarks(high, low)


class DfdaemonSettings(_Strict):
    """The node's dfdaemon proxy, which puts downloads on Dragonfly's P2P network."""

    url: str = Field(description="its proxy, e.g. http://127.0.0.1:4001 (Rust) or :65001 (Go)")
    tag: str = ""
    application: str = ""
    priority: int | None = Field(default=None, ge=0, le=6)
    fallback: bool = Field(
        default=True,
        description="fetch from the origin directly when the dfdaemon fails before any byte",
    )
    keep_copy: bool = Field(
        default=False,
        description="also keep objects in the embedded cache (the dfdaemon caches them already)",
    )
    connect_timeout: float = Field(default=5.0, gt=0)
    link_dir: Path | None = Field(
        default=None,
        description="Rust dfdaemon only: a directory on the dfdaemon's storage filesystem, at "
        "the same path for both, where it hard-links the tasks shim asks for, so that local "
        "hits are sent from its file instead of through its proxy",
    )

    @field_validator("link_dir")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        # The dfdaemon resolves the path, from its own working directory.
        if value is not None and not value.is_absolute():
            raise ValueError("must be an absolute path (the dfdaemon resolves it)")
        return value

    @model_validator(mode="after")
    def _one_copy(self) -> Self:
        if self.link_dir is not None and self.keep_copy:
            raise ValueError(
                "link_dir sends the dfdaemon's own copy and keep_copy keeps a second one: "
                "choose one"
            )
        return self

    @field_validator("url")
    @classmethod
    def _plain_http(cls, value: str) -> str:
        scheme, sep, rest = value.partition("://")
        if not sep:
            scheme, rest = "http", value
        if scheme != "http":
            raise ValueError("a dfdaemon proxy speaks plain http://")
        split_host_port(rest.rstrip("/"))
        return f"http://{rest.rstrip('/')}"

    @property
    def address(self) -> tuple[str, int]:
        return split_host_port(self.url.removeprefix("http://"))


class ProxyAuth(_Strict):
    """HTTP Basic credentials clients must send to the proxy (``Proxy-Authorization``)."""

    username: str = Field(min_length=1)
    password: SecretStr | None = None
    password_env: str | None = Field(
        default=None, description="an environment variable holding the password, read at start"
    )

    @field_validator("username")
    @classmethod
    def _no_colon(cls, value: str) -> str:
        if ":" in value:
            raise ValueError("a Basic username cannot hold ':'")
        return value

    @model_validator(mode="after")
    def _one_password(self) -> Self:
        if (self.password is None) == (self.password_env is None):
            raise ValueError("give exactly one of password and password_env")
        return self


# Which peers a manager preheat job has download each object (Dragonfly's scopes).
PreheatScope = Literal["single_seed_peer", "all_seed_peers", "all_peers"]
# A personal access token goes into an Authorization header: visible ASCII, no spaces.
_TOKEN = re.compile(r"[\x21-\x7e]+")


class ManagerSettings(_Strict):
    """Dragonfly's manager, which ``shim preheat`` asks to warm objects on the cluster's peers:
    its REST API and a personal access token with the ``job`` scope."""

    url: str = Field(description="its REST API, e.g. http://dragonfly-manager:8080")
    token: SecretStr | None = None
    token_env: str | None = Field(
        default=None, description="an environment variable holding the token, read at start"
    )
    token_file: Path | None = Field(
        default=None, description="a file holding the token (a mounted Secret), read at start"
    )
    scope: PreheatScope = Field(
        default="all_peers",
        description="all_peers puts each object on every node; Dragonfly's own default, "
        "single_seed_peer, on one seed peer that the nodes then fetch from",
    )
    scheduler_cluster_ids: tuple[PositiveInt, ...] = Field(
        default=(), description="the scheduler clusters to preheat in (default: all of them)"
    )
    timeout: Annotated[float, BeforeValidator(parse_duration)] = Field(
        default=3600.0, gt=0, description="how long the peers may take (60s, 30m, 1h)"
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        scheme, sep, rest = value.partition("://")
        host = rest.split("/", 1)[0]
        if not sep or scheme not in ("http", "https") or not host or "@" in host:
            raise ValueError(f"expected http://HOST[:PORT] or https://HOST[:PORT], got {value!r}")
        return value.rstrip("/")

    @field_validator("token")
    @classmethod
    def _header_safe(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not _TOKEN.fullmatch(value.get_secret_value()):
            raise ValueError("a token is printable ASCII without spaces")
        return value

    @model_validator(mode="after")
    def _one_token_source(self) -> Self:
        given = [self.token, self.token_env, self.token_file]
        if sum(source is not None for source in given) > 1:
            raise ValueError("give at most one of token, token_env and token_file")
        return self


class Limits(_Strict):
    """Bounds on what one client request may make shim hold or wait for."""

    request_head_bytes: ByteSize = Field(
        default=ByteSize(64 * 1024), description="request line plus headers, at most"
    )
    request_head_timeout: float = Field(
        default=30.0, gt=0, description="seconds a client may take to send a request head"
    )

    @field_validator("request_head_bytes")
    @classmethod
    def _sane_head(cls, value: ByteSize) -> ByteSize:
        if not 1024 <= value <= 1024 * 1024:
            raise ValueError("must be between 1KiB and 1MiB")
        return value


class MetricsSettings(_Strict):
    top_objects: int = Field(
        default=DEFAULT_TOP_OBJECTS,
        ge=0,
        le=200,
        description="objects (and dfdaemon tasks) with series of their own: the hottest ones",
    )


# Hosts shim may forward unsigned requests to: none, all, or an allow-list of HOST[:PORT]
# (``*.example.com`` matches subdomains). Loopback and link-local addresses are refused
# unless named in the list.
Passthrough = Literal["none", "all"] | tuple[str, ...]

_HOST_NAME = re.compile(r"(\*\.)?[A-Za-z0-9.\-]+")


def split_authority(authority: str) -> tuple[str, int | None] | None:
    """``HOST``, ``HOST:PORT`` or ``[V6]:PORT`` -> (host, port or None); None if malformed."""
    if authority.startswith("["):
        host, bracket, rest = authority[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        port = rest[1:] if rest else None
    elif authority.count(":") == 1:
        host, _, port = authority.partition(":")
    elif ":" in authority:
        return None  # an IPv6 address must be bracketed
    else:
        host, port = authority, None
    if port is not None and not (port.isascii() and port.isdigit() and len(port) <= 5):
        return None
    return host, int(port) if port is not None else None


def _check_passthrough_entry(entry: str) -> str:
    split = split_authority(entry)
    if (
        split is None
        or not (_HOST_NAME.fullmatch(split[0]) or _is_ip(split[0]))
        or (split[1] is not None and not 0 < split[1] < 65536)
    ):
        raise ValueError(f"passthrough: expected HOST or HOST:PORT, got {entry!r}")
    return entry.lower()


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def is_loopback_host(host: str) -> bool:
    """Whether a listener bound to ``host`` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# The target mitmproxy's reverse mode needs: never contacted, since the addon answers or
# reroutes every request; the S3 API's own one tells its listener apart from ``reverse``.
REVERSE_TARGET = "http://127.0.0.1:9"
S3_API_TARGET = "http://127.0.0.1:10"
_DOMAIN = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")


class S3ApiSettings(_Strict):
    """A read-only S3 API for SDK clients (``AWS_ENDPOINT_URL=http://HOST:PORT``)."""

    listen: str = Field(description="HOST:PORT it listens on")
    domain: str | None = Field(
        default=None,
        description="base domain of virtual-hosted requests (ALIAS.DOMAIN); without it, "
        "path-style (/ALIAS/KEY) only",
    )

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        split_host_port(value)
        return value

    @field_validator("domain")
    @classmethod
    def _domain_name(cls, value: str | None) -> str | None:
        if value is not None:
            value = value.lower().rstrip(".")
            if not _DOMAIN.fullmatch(value):
                raise ValueError(f"expected a DNS name such as s3.shim.local, got {value!r}")
        return value


class Settings(_Strict):
    listen: str = DEFAULT_LISTEN
    admin: str = DEFAULT_ADMIN
    transparent: str | None = Field(
        default=None, description="HOST:PORT of a transparent listener (iptables REDIRECT)"
    )
    reverse: str | None = Field(
        default=None, description="HOST:PORT of a standalone service: GET /ALIAS/KEY"
    )
    s3_api: S3ApiSettings | None = Field(
        default=None, description="a read-only S3 API for SDK clients (HOST:PORT, or a mapping)"
    )
    confdir: Path = Field(
        default_factory=lambda: Path(platformdirs.user_data_dir("shim")),
        description="where the interception CA lives",
    )
    cache: CacheSettings = CacheSettings()
    headers: dict[str, str] = Field(default_factory=dict, description="extra origin headers")
    filter: tuple[str, ...] = Field(
        default=(), description="extra query parameters left out of the task identity"
    )
    presign_expires: int = Field(default=3600, ge=60, le=604800)
    origin_timeout: float = Field(default=60.0, gt=0, description="seconds without data")
    dfdaemon: DfdaemonSettings | None = None
    buckets: tuple[BucketConfig, ...] = ()
    passthrough: Passthrough = Field(
        default="none",
        description="unsigned requests to hosts that are not configured buckets: none, all, "
        "or a list of HOST[:PORT] (loopback and link-local only when named)",
    )
    clients: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = Field(
        default=(), description="client networks (CIDR) allowed to use the proxy listeners"
    )
    proxy_auth: ProxyAuth | None = None
    manager: ManagerSettings | None = None
    limits: Limits = Limits()
    log_format: Literal["text", "json"] = Field(
        default="text", description="json: one JSON object per log line"
    )
    metrics: MetricsSettings = MetricsSettings()
    shutdown_grace: float = Field(
        default=25.0,
        ge=0,
        description="seconds transfers in flight may take to finish after SIGTERM (Kubernetes "
        "gives 30 s by default)",
    )
    reload_poll: float = Field(
        default=2.0,
        ge=0,
        description="seconds between checks of `shim run`'s config file; a change reloads it, "
        "as SIGHUP does. 0: reload on SIGHUP only",
    )
    admin_token: SecretStr | None = Field(
        default=None,
        description="the bearer token the admin port's state-changing endpoints (prefetch, "
        "cache removal) require; without one they are refused",
    )
    admin_token_file: Path | None = Field(
        default=None,
        description="a file holding the admin token, read at start; other users must not be "
        "able to read it",
    )

    @field_validator("admin_token")
    @classmethod
    def _strong_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_admin_token(value.get_secret_value())
        return value

    @model_validator(mode="after")
    def _one_admin_token(self) -> Self:
        if self.admin_token is not None and self.admin_token_file is not None:
            raise ValueError("give at most one of admin_token and admin_token_file")
        return self

    @field_validator("passthrough", mode="before")
    @classmethod
    def _passthrough_list(cls, value: Any) -> Any:
        if isinstance(value, str) and value not in ("none", "all"):
            raise ValueError("expected 'none', 'all' or a list of HOST[:PORT]")
        if isinstance(value, list | tuple):
            return tuple(_check_passthrough_entry(str(entry)) for entry in value)
        return value

    @field_validator("clients", mode="before")
    @classmethod
    def _networks(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            try:
                return tuple(ipaddress.ip_network(str(net), strict=False) for net in value)
            except ValueError as error:
                raise ValueError(f"expected CIDR networks such as 10.0.0.0/8: {error}") from None
        return value

    @field_validator("s3_api", mode="before")
    @classmethod
    def _listen_alone(cls, value: Any) -> Any:
        # `s3_api: HOST:PORT` is short for `s3_api: {listen: HOST:PORT}`.
        return {"listen": value} if isinstance(value, str) else value

    @field_validator("dfdaemon", mode="before")
    @classmethod
    def _url_alone(cls, value: Any) -> Any:
        # `dfdaemon: http://host:port` is short for `dfdaemon: {url: http://host:port}`.
        return {"url": value} if isinstance(value, str) else value

    @field_validator("listen", "admin", "transparent", "reverse")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is not None:
            split_host_port(value)
        return value

    @model_validator(mode="after")
    def _aliases_are_unique(self) -> Self:
        seen: dict[str, int] = {}
        for index, bucket in enumerate(self.buckets):
            if bucket.reverse_alias in seen:
                raise ValueError(
                    f"buckets[{index}] and buckets[{seen[bucket.reverse_alias]}] share the alias "
                    f"{bucket.reverse_alias!r}; give one of them another 'alias'"
                )
            seen[bucket.reverse_alias] = index
        return self

    @model_validator(mode="after")
    def _exposed_listeners_are_guarded(self) -> Self:
        # A signing proxy reachable from the network with no guard is an open door. Only the
        # explicit proxy can ask for credentials: model servers behind a transparent redirect
        # or fetching a reverse URL send none, so those listeners need client networks.
        for name in ("listen", "transparent", "reverse", "s3_api"):
            address = getattr(self, name)
            if isinstance(address, S3ApiSettings):
                address = address.listen
            if address is None or is_loopback_host(split_host_port(address)[0]):
                continue
            if self.clients or (name == "listen" and self.proxy_auth):
                continue
            guard = "'clients' or 'proxy_auth'" if name == "listen" else "'clients'"
            raise ValueError(
                f"{name} {address} is reachable from other hosts: set {guard} (clients: the "
                "client networks allowed, e.g. [10.0.0.0/8]), or bind it to 127.0.0.1"
            )
        return self

    def mitmproxy_modes(self) -> list[str]:
        """The listeners as mitmproxy ``mode`` specs."""
        modes = [f"regular@{self.listen}"]
        if self.transparent:
            modes.append(f"transparent@{self.transparent}")
        if self.reverse:
            modes.append(f"reverse:{REVERSE_TARGET}@{self.reverse}")
        if self.s3_api:
            modes.append(f"reverse:{S3_API_TARGET}@{self.s3_api.listen}")
        return modes

    @property
    def listen_address(self) -> tuple[str, int]:
        return split_host_port(self.listen)

    @property
    def admin_address(self) -> tuple[str, int]:
        return split_host_port(self.admin)


# Printable ASCII without spaces (a header value as sent), and long enough not to be guessed.
_ADMIN_TOKEN = re.compile(r"[\x21-\x7e]{16,}")


def check_admin_token(token: str) -> None:
    if not _ADMIN_TOKEN.fullmatch(token):
        # Never the value itself: it is a secret even when malformed.
        raise ValueError(
            "must be at least 16 printable ASCII characters without spaces "
            "(e.g. the output of `openssl rand -hex 32`)"
        )


def read_secret_file(path: Path, where: str) -> str:
    """The secret held in the file at ``path``, surrounding whitespace dropped (a mounted Secret
    may end in a newline). Refused when every user may read it; ``where`` names the setting in
    errors, which never quote the file."""
    where = f"{where} {path}"
    try:
        mode = path.stat().st_mode
        if stat.S_ISREG(mode) and mode & stat.S_IROTH:
            raise ConfigError(
                f"{where} is readable by every user (mode {stat.S_IMODE(mode):o}): "
                "chmod o-rwx it (a Kubernetes Secret volume: defaultMode 0400, or 0440 with "
                "fsGroup)"
            )
        secret = path.read_text(encoding="utf-8").strip()
    except OSError as error:
        raise ConfigError(f"{where}: cannot read it: {error.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: not UTF-8 text") from None
    if not secret:
        raise ConfigError(f"{where} is empty")
    return secret


def _resolve_admin_token_file(raw: Mapping[str, Any]) -> Any:
    """Read ``admin_token_file`` into ``admin_token``, as ``password_env`` is read."""
    path = raw.get("admin_token_file")
    if path is None or "admin_token" in raw:
        return raw  # validation says what is wrong, if anything
    token = read_secret_file(Path(str(path)), "admin_token_file")
    try:
        check_admin_token(token)
    except ValueError as error:
        raise ConfigError(f"admin_token_file {path}: the token {error}") from None
    resolved = {k: v for k, v in raw.items() if k != "admin_token_file"}
    return {**resolved, "admin_token": token}


def _location(loc: tuple[int | str, ...]) -> str:
    text = ""
    for index, part in enumerate(loc):
        if index and isinstance(loc[index - 1], int) and part in PROVIDERS:
            continue  # the tag pydantic adds inside a bucket: buckets[0].s3.region
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or "(top level)"


def _problem(error: ErrorDetails) -> str:
    """``where: what`` for one validation error; a bucket's unknown or missing ``provider``
    names the stores shim knows."""
    where = _location(error["loc"])
    if error["type"] not in ("union_tag_not_found", "union_tag_invalid"):
        return f"{where}: {error['msg']}"
    known = ", ".join(repr(name) for name in sorted(PROVIDERS))
    given = error.get("ctx", {}).get("tag")
    what = f"{given!r} is not a store shim knows" if given else "required"
    return f"{where}.provider: {what}; expected one of {known}"


def _describe(error: ValidationError, source: str) -> str:
    return f"{source}: " + "; ".join(_problem(e) for e in error.errors())


def _resolve_env_credentials(raw: Mapping[str, Any], env: Mapping[str, str]) -> Any:
    """Turn ``source: env`` credentials into values, each provider by its own variable names,
    so only this module reads the environment."""
    buckets = raw.get("buckets")
    if not isinstance(buckets, list):
        return raw
    resolved = []
    for index, bucket in enumerate(buckets):
        provider = PROVIDERS.get(str(bucket.get("provider"))) if isinstance(bucket, dict) else None
        creds = bucket.get("credentials", {}) if isinstance(bucket, dict) else None
        if provider is None or not isinstance(creds, dict):
            resolved.append(bucket)  # validation names what is wrong with it
            continue
        creds = provider.resolve_env(creds, env, f"buckets[{index}].credentials")
        resolved.append({**bucket, "credentials": creds} if creds else bucket)
    return {**raw, "buckets": resolved}


def _resolve_proxy_auth_env(raw: Mapping[str, Any], env: Mapping[str, str]) -> Any:
    """Turn ``proxy_auth.password_env`` into the password itself, as for bucket credentials."""
    auth = raw.get("proxy_auth")
    if not isinstance(auth, dict) or "password_env" not in auth or "password" in auth:
        return raw
    name = auth["password_env"]
    if not isinstance(name, str) or not env.get(name):
        raise ConfigError(f"proxy_auth.password_env: environment variable {name!r} is not set")
    resolved = {k: v for k, v in auth.items() if k != "password_env"}
    return {**raw, "proxy_auth": {**resolved, "password": env[name]}}


def _resolve_manager_token(raw: Mapping[str, Any], env: Mapping[str, str]) -> Any:
    """Turn ``manager.token_env`` or ``manager.token_file`` into the token itself."""
    manager = raw.get("manager")
    if not isinstance(manager, dict) or "token" in manager:
        return raw
    rest = {k: v for k, v in manager.items() if k not in ("token_env", "token_file")}
    if isinstance(name := manager.get("token_env"), str) and "token_file" not in manager:
        if not env.get(name):
            raise ConfigError(f"manager.token_env: environment variable {name!r} is not set")
        return {**raw, "manager": {**rest, "token": env[name]}}
    if isinstance(path := manager.get("token_file"), str) and "token_env" not in manager:
        token = read_secret_file(Path(path), "manager.token_file")
        return {**raw, "manager": {**rest, "token": token}}
    return raw  # validation names what is wrong with it


def preheat_manager(
    settings: Settings,
    *,
    url: str | None = None,
    token_file: Path | None = None,
    scope: str | None = None,
) -> ManagerSettings:
    """The manager ``shim preheat`` talks to: the config's ``manager`` with the command line's
    ``--manager``, ``--token-file`` and ``--scope`` over it, token included."""
    fields: dict[str, Any] = dict(settings.manager) if settings.manager else {}
    if url is not None:
        fields["url"] = url
    if token_file is not None:
        fields["token"] = read_secret_file(token_file, "--token-file")
        fields.pop("token_env", None)
        fields.pop("token_file", None)
    if scope is not None:
        fields["scope"] = scope
    if "url" not in fields:
        raise ConfigError("no Dragonfly manager: set manager.url in the config or give --manager")
    try:
        manager = ManagerSettings.model_validate(fields)
    except ValidationError as error:
        raise ConfigError(_describe(error, "manager")) from None
    if manager.token is None:
        raise ConfigError(
            "no token for the Dragonfly manager: set manager.token_file or manager.token_env "
            "(a personal access token with the job scope), or give --token-file"
        )
    return manager


def settings_from_mapping(
    raw: Any, *, env: Mapping[str, str], source: str = "config", credentials: bool = True
) -> Settings:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: expected a mapping of keys at the top level")
    try:
        resolved = _resolve_env_credentials(raw, env) if credentials else raw
        resolved = _resolve_proxy_auth_env(resolved, env) if credentials else resolved
        resolved = _resolve_admin_token_file(resolved) if credentials else resolved
        resolved = _resolve_manager_token(resolved, env) if credentials else resolved
        return Settings.model_validate(resolved)
    except ValidationError as error:
        raise ConfigError(_describe(error, source)) from None


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the config file: {error.strerror}") from None
    except yaml.YAMLError as error:
        # Position and problem only: PyYAML's message quotes the line, which may hold a secret.
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "syntax error"
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None


def dragonfly_endpoint_to_mapping(doc: Any, source: str) -> dict[str, Any]:
    """Translate dragonfly-endpoint's config.json into shim's own keys, unchanged in meaning."""
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: expected a JSON object")
    storage = doc.get("object_storage")
    if not isinstance(storage, dict):
        raise ConfigError(f"{source}: object_storage: required, an object with 'type'")
    kind = storage.get("type")
    by_type = {p.dragonfly_type: p for p in PROVIDERS.values()}
    if kind not in by_type:
        raise ConfigError(
            f"{source}: object_storage.type: {kind!r} is not supported; "
            f"supported: {', '.join(sorted(by_type))}"
        )
    bucket = by_type[kind].bucket_from_dragonfly(storage)
    mapping: dict[str, Any] = {"buckets": [bucket]}
    if doc.get("addr"):
        mapping["dfdaemon"] = {"url": doc["addr"]}
    if doc.get("header"):
        mapping["headers"] = doc["header"]
    if doc.get("filter"):
        mapping["filter"] = [p for p in str(doc["filter"]).split("&") if p]
    return mapping


def load_settings(
    path: Path | None = None,
    *,
    env: Mapping[str, str],
    overrides: Mapping[str, Any] | None = None,
    credentials: bool = True,
) -> Settings:
    """Build Settings from, in order of precedence: ``path`` (or ``SHIM_CONFIG``), else the
    dragonfly-endpoint config named by ``DRAGONFLY_ENDPOINT_CONFIG``, else the defaults;
    then ``overrides`` (command-line flags) on top. ``credentials=False`` leaves ``source:
    env`` credentials unread, for commands that sign nothing (``shim ca``, ``shim env``).
    """
    raw: Any
    if path is None and env.get("SHIM_CONFIG"):
        path = Path(env["SHIM_CONFIG"])
    if path is not None:
        raw, source = _read_yaml(path), str(path)
    elif env.get("DRAGONFLY_ENDPOINT_CONFIG"):
        json_path = Path(env["DRAGONFLY_ENDPOINT_CONFIG"])
        source = str(json_path)
        try:
            doc = json.loads(json_path.read_text(encoding="utf-8"))
        except OSError as error:
            raise ConfigError(f"{source}: cannot read the config file: {error.strerror}") from None
        except json.JSONDecodeError as error:
            raise ConfigError(f"{source}: not valid JSON: {error}") from None
        raw = dragonfly_endpoint_to_mapping(doc, source)
    else:
        raw, source = {}, "defaults"
    if overrides:
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{source}: expected a mapping of keys at the top level")
        raw = {**raw, **overrides}
    return settings_from_mapping(raw, env=env, source=source, credentials=credentials)
