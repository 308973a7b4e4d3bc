"""Azure Blob Storage: read-only, blob-scoped service SAS URLs via azure-storage-blob.

Signed with the account key (given, or from a connection string), or with a user delegation
key that the identity of ``DefaultAzureCredential`` (workload identity, managed identity...)
obtains from the account: no account key anywhere. The delegation key is cached and replaced
well before it expires.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self
from urllib.parse import quote, urlencode

from pydantic import Field, SecretStr, field_validator, model_validator

from shim._errors import ConfigError, RequestError, SigningError
from shim.providers._base import (
    BucketBase,
    Route,
    Strict,
    http_endpoint,
    own_routes,
    resolve_env_values,
)

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.storage.blob import UserDelegationKey

    from shim.recognize import ObjectRef

# Every query parameter of a SAS that azure-storage-blob can emit (its QueryStringConstants):
# service and account SAS, user delegation fields, response-header overrides, table ranges.
SIGNATURE_PARAMS = frozenset(
    {
        "sv",
        "ss",
        "srt",
        "sp",
        "se",
        "st",
        "spr",
        "sig",
        "sr",
        "si",
        "sip",
        "skoid",
        "sktid",
        "skt",
        "ske",
        "sks",
        "skv",
        "skdutid",
        "sduoid",
        "saoid",
        "suoid",
        "scid",
        "sdd",
        "ses",
        "srh",
        "srq",
        "rscc",
        "rscd",
        "rsce",
        "rscl",
        "rsct",
        "spk",
        "srk",
        "epk",
        "erk",
    }
)

# Version, services, resource types, permissions, times, protocol, key service and version,
# directory depth: how and when. Ids (tenant, object, correlation, policy), IP ranges, scopes
# and header overrides are left to redaction: not secrets, but not needed in any log either.
PUBLIC_PARAMS = frozenset(
    {"sv", "ss", "srt", "sp", "se", "st", "spr", "sr", "skt", "ske", "sks", "skv", "sdd"}
)

# A blob snapshot or version is named by its timestamp: 2024-05-01T10:20:30.1234567Z.
OBJECT_PARAMS = frozenset({"snapshot", "versionid"})
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,7})?Z")

# What keeps a name safe in a host name and a path prefix; Azure's own length rules (3-24,
# 3-63) are left to Azure, which answers a wrong name itself.
_ACCOUNT = re.compile(r"[a-z0-9]{1,63}")
_CONTAINER = re.compile(r"\$root|\$web|\$logs|[a-z0-9](?:-?[a-z0-9]){0,62}")

DEFAULT_ENDPOINT_SUFFIX = "blob.core.windows.net"
STORAGE_SCOPE = "https://storage.azure.com/.default"
# A user delegation key lives at least an hour and at most the 7 days Azure allows; it is
# replaced once it has less than a URL's lifetime and this margin left.
KEY_LIFETIME_MIN = timedelta(hours=1)
KEY_LIFETIME_MAX = timedelta(days=7)
KEY_REFRESH_MARGIN = timedelta(minutes=5)
# Clocks differ: a delegation key starts a little in the past.
KEY_START_SKEW = timedelta(minutes=5)
# Seconds the start-up check waits for a token: a default chain may probe several sources.
CHECK_TIMEOUT = 20.0


@dataclass(frozen=True, slots=True)
class ConnectionString:
    account: str
    endpoint: str  # the blob service's account URL
    account_key: str | None


def parse_connection_string(value: str) -> ConnectionString:
    """The account, blob endpoint and key of a storage connection string, as the SDK reads it
    (``UseDevelopmentStorage=true``, ``EndpointSuffix`` and ``BlobEndpoint`` included).
    Raises ValueError without quoting it."""
    # Imported here: azure-storage-blob and azure-core load only for Azure buckets.
    from azure.storage.blob import BlobServiceClient

    try:
        client = BlobServiceClient.from_connection_string(value)
    except ValueError:
        raise ValueError("the connection string is blank or malformed") from None
    if not client.account_name:
        raise ValueError("the connection string names no AccountName")
    key = getattr(client.credential, "account_key", None)
    endpoint = client.primary_endpoint.partition("?")[0]
    return ConnectionString(client.account_name, endpoint, key if isinstance(key, str) else None)


class AzureCredentials(Strict):
    """``static``: ``account_key`` or ``connection_string``; ``env``: the same from environment
    variables (default names AZURE_STORAGE_KEY, AZURE_STORAGE_CONNECTION_STRING), read when the
    config is loaded; ``default``: azure-identity's DefaultAzureCredential (workload identity,
    managed identity, environment service principal, Azure CLI...) signs user delegation SAS
    URLs; the identity needs the Storage Blob Delegator and Storage Blob Data Reader roles."""

    source: Literal["static", "env", "default"] = "default"
    account_key: SecretStr | None = None
    connection_string: SecretStr | None = None
    account_key_env: str | None = None
    connection_string_env: str | None = None

    @model_validator(mode="after")
    def _one_secret_for_static(self) -> Self:
        given = [self.account_key, self.connection_string]
        if self.source == "static" and sum(value is not None for value in given) != 1:
            raise ValueError("source 'static' needs one of account_key or connection_string")
        if self.source == "default" and any(value is not None for value in given):
            raise ValueError("source 'default' signs with an identity: no account_key here")
        return self


class AzureBucket(BucketBase):
    """An Azure Blob container: ACCOUNT.blob.core.windows.net/CONTAINER, or ``endpoint``."""

    provider: Literal["azure"]
    account: str = Field(description="the storage account name")
    container: str
    endpoint: str | None = Field(
        default=None,
        description="the account URL, as BlobServiceClient(account_url=...) takes it: a "
        "sovereign cloud (https://ACCOUNT.blob.core.chinacloudapi.cn), a custom domain, or "
        "an emulator (http://127.0.0.1:10000/devstoreaccount1); blobs are under "
        "ENDPOINT/CONTAINER/BLOB",
    )
    credentials: AzureCredentials = AzureCredentials()

    @property
    def name(self) -> str:
        return self.container

    def account_url(self, client_scheme: str) -> str:
        if self.endpoint is not None:
            return self.endpoint
        return f"{self.origin_scheme(client_scheme)}://{self.account}.{DEFAULT_ENDPOINT_SUFFIX}"

    @model_validator(mode="before")
    @classmethod
    def _from_connection_string(cls, data: Any) -> Any:
        """The account and endpoint a connection string names, unless given: the key alone
        would not say where the blobs are."""
        if not isinstance(data, dict) or not isinstance(data.get("credentials"), dict):
            return data
        value = data["credentials"].get("connection_string")
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if not isinstance(value, str):
            return data
        parsed = parse_connection_string(value)
        filled = dict(data)
        if filled.get("account") is None:
            filled["account"] = parsed.account
        elif filled["account"] != parsed.account:
            raise ValueError(
                f"account {filled['account']!r} differs from the connection string's "
                f"AccountName {parsed.account!r}"
            )
        default = f"https://{parsed.account}.{DEFAULT_ENDPOINT_SUFFIX}"
        if filled.get("endpoint") is None and parsed.endpoint.rstrip("/") != default:
            filled["endpoint"] = parsed.endpoint
        return filled

    @model_validator(mode="after")
    def _identity_needs_https(self) -> Self:
        if (
            self.credentials.source == "default"
            and self.endpoint is not None
            and not self.endpoint.startswith("https://")
        ):
            raise ValueError(
                "source 'default' needs an https endpoint: Azure SDKs never send a token over "
                "plain http"
            )
        return self

    @field_validator("account")
    @classmethod
    def _account_name(cls, value: str) -> str:
        if not _ACCOUNT.fullmatch(value):
            raise ValueError("a storage account name is lowercase letters and digits")
        return value

    @field_validator("container")
    @classmethod
    def _container_name(cls, value: str) -> str:
        if not _CONTAINER.fullmatch(value):
            raise ValueError(
                "a container name is lowercase letters, digits and single hyphens, starting "
                "and ending with a letter or digit (or $root, $web, $logs)"
            )
        return value

    @field_validator("endpoint")
    @classmethod
    def _endpoint_is_account_url(cls, value: str | None) -> str | None:
        return http_endpoint(value, keep_path=True)


def _valid_key(value: str, container: str) -> str:
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise SigningError(f"the account key of container {container!r} is not base64") from None
    return value


def _within(seconds: float, call: Callable[[], object]) -> None:
    """Run ``call()``, raising what it raises, or TimeoutError after ``seconds``; a call still
    running is left to finish in a daemon thread, which never holds up shim's exit."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as error:
            failure.append(error)

    thread = threading.Thread(target=run, name="shim-azure-check", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError
    if failure:
        raise failure[0]


class AzureSigner:
    """Signs read-only SAS URLs for one container: with its account key, or with a user
    delegation key from DefaultAzureCredential's identity (fetched on first use, reused while
    it outlives a URL by a margin). ``clock`` (monotonic seconds) decides when to replace it."""

    def __init__(
        self,
        bucket: AzureBucket,
        expires: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._bucket = bucket
        self._expires = timedelta(seconds=expires)
        self._clock = clock
        self._lock = threading.Lock()
        self._credential: TokenCredential | None = None
        self._key: UserDelegationKey | None = None
        self._key_expiry = datetime.min.replace(tzinfo=UTC)
        self._replace_key_at = 0.0

    # -- credentials -------------------------------------------------------------------------

    @functools.cached_property
    def _account_key(self) -> str:
        """The account key, checked to be base64 (read once: config values never change)."""
        creds = self._bucket.credentials
        container = self._bucket.container
        if creds.account_key is not None:
            return _valid_key(creds.account_key.get_secret_value(), container)
        if creds.connection_string is None:
            raise SigningError(f"the credentials of container {container!r} were not loaded")
        try:
            parsed = parse_connection_string(creds.connection_string.get_secret_value())
        except ValueError as error:
            raise SigningError(f"container {container!r}: {error}") from None
        if parsed.account_key is None:
            raise SigningError(
                f"the connection string of container {container!r} holds no AccountKey "
                "(a SAS connection string cannot sign)"
            )
        return _valid_key(parsed.account_key, container)

    def _identity(self) -> TokenCredential:
        with self._lock:
            if self._credential is None:
                # Imported here: azure-identity (and MSAL) load only for buckets that use it.
                from azure.identity import DefaultAzureCredential

                self._credential = DefaultAzureCredential()
            return self._credential

    def _key_lifetime(self) -> timedelta:
        wanted = 2 * self._expires
        return max(KEY_LIFETIME_MIN, min(KEY_LIFETIME_MAX, wanted))

    def _delegation_key(self) -> tuple[UserDelegationKey, datetime]:
        """The current user delegation key and its expiry; a new one when it has less than a
        URL's lifetime (and a margin) left."""
        with self._lock:
            if self._key is not None and self._clock() < self._replace_key_at:
                return self._key, self._key_expiry
        from azure.core.exceptions import AzureError, ClientAuthenticationError, HttpResponseError
        from azure.storage.blob import BlobServiceClient

        identity = self._identity()
        service = BlobServiceClient(
            self._bucket.account_url("https"),
            credential=identity,
            connection_timeout=10,
            read_timeout=30,
        )
        now = datetime.now(UTC)
        lifetime = self._key_lifetime()
        try:
            key = service.get_user_delegation_key(now - KEY_START_SKEW, now + lifetime)
        except ClientAuthenticationError as error:
            raise SigningError(self._no_identity(error)) from None
        except HttpResponseError as error:
            # The storage SDK's error code (AuthorizationPermissionMismatch...), set at runtime.
            code = getattr(error, "error_code", None) or error.reason or ""
            code = getattr(code, "value", code)  # a StorageErrorCode enum member
            raise SigningError(
                f"cannot get a user delegation key for account {self._bucket.account!r}: "
                f"HTTP {error.status_code} {code}".rstrip()
            ) from None
        except AzureError as error:
            raise SigningError(
                f"cannot get a user delegation key for account {self._bucket.account!r}: "
                f"{type(error).__name__}"
            ) from None
        reuse = lifetime - self._expires - KEY_REFRESH_MARGIN
        with self._lock:
            self._key = key
            self._key_expiry = now + lifetime
            self._replace_key_at = self._clock() + reuse.total_seconds()
            return key, self._key_expiry

    def _no_identity(self, error: BaseException) -> str:
        # The chain's own message lists every source it tried, with text from CLIs and
        # endpoints: not quoted, it may hold anything.
        return (
            f"no Azure identity for container {self._bucket.container!r} "
            f"({type(error).__name__}): DefaultAzureCredential found no workload identity, "
            "managed identity or other source; or set credentials.account_key"
        )

    def check(self) -> None:
        if self._bucket.credentials.source != "default":
            _ = self._account_key
            return
        from azure.core.exceptions import AzureError

        identity = self._identity()
        try:
            _within(CHECK_TIMEOUT, lambda: identity.get_token(STORAGE_SCOPE))
        except TimeoutError:
            raise SigningError(
                f"no Azure token for container {self._bucket.container!r} within "
                f"{CHECK_TIMEOUT:.0f} s (DefaultAzureCredential)"
            ) from None
        except AzureError as error:
            raise SigningError(self._no_identity(error)) from None
        self._delegation_key()

    # -- signing -----------------------------------------------------------------------------

    def sign(self, ref: ObjectRef, method: str) -> str:
        """A SAS URL allowing reads (GET and HEAD alike) of this one blob, snapshot or
        version, until the bucket's URL lifetime has passed."""
        from azure.storage.blob import BlobClient, generate_blob_sas

        bucket = self._bucket
        params = dict(ref.params)
        account_url = bucket.account_url(ref.client_scheme)
        sas = self._sas(
            account_url,
            lambda **signing: generate_blob_sas(
                bucket.account,
                bucket.container,
                ref.key,
                snapshot=params.get("snapshot"),
                version_id=params.get("versionid"),
                permission="r",
                **signing,
            ),
        )
        # The path exactly as the SDK itself would request the blob: what the SAS signs.
        url = BlobClient(account_url, bucket.container, ref.key).url
        selected = [f"{name}={quote(value, safe=':')}" for name, value in ref.params]
        return f"{url}?{'&'.join([*selected, sas])}"

    def sign_listing(self, query: Sequence[tuple[str, str]]) -> str:
        """A List Blobs URL of the container with ``query``, under a SAS that allows listing
        it and nothing else (may block)."""
        from azure.storage.blob import ContainerClient, generate_container_sas

        bucket = self._bucket
        account_url = bucket.account_url("https")
        sas = self._sas(
            account_url,
            lambda **signing: generate_container_sas(
                bucket.account, bucket.container, permission="l", **signing
            ),
        )
        url = ContainerClient(account_url, bucket.container).url
        return f"{url}?{urlencode([*query], quote_via=quote)}&{sas}"

    def _sas(self, account_url: str, generate: Callable[..., str]) -> str:
        """A SAS token from ``generate``, given the key, expiry and protocol to sign with."""
        bucket = self._bucket
        expiry = datetime.now(UTC) + self._expires
        signing: dict[str, Any]
        if bucket.credentials.source == "default":
            key, key_expiry = self._delegation_key()
            # A SAS is void past its key's expiry (only with lifetimes near Azure's 7 days).
            expiry = min(expiry, key_expiry)
            signing = {"user_delegation_key": key}
        else:
            signing = {"account_key": self._account_key}
        try:
            return generate(
                expiry=expiry,
                # HTTPS only, unless the account URL itself is plain http (an emulator).
                protocol="https" if account_url.startswith("https://") else "https,http",
                **signing,
            )
        except (ValueError, TypeError) as error:
            raise SigningError(
                f"cannot sign for container {bucket.container!r}: {type(error).__name__}"
            ) from None


def check_object_params(params: Mapping[str, str]) -> None:
    for name in ("snapshot", "versionid"):
        value = params.get(name)
        if value is not None and not _TIMESTAMP.fullmatch(value):
            raise RequestError(f"{name} must be a timestamp such as 2024-05-01T10:20:30.1234567Z")
    if "snapshot" in params and "versionid" in params:
        raise RequestError("snapshot and versionid cannot be given together")


class AzureProvider:
    name = "azure"
    dragonfly_type = "abs"
    config = AzureBucket
    signature_params = SIGNATURE_PARAMS
    public_params = PUBLIC_PARAMS
    object_params = OBJECT_PARAMS
    # Content-MD5 of the blob (set by the uploader, or by Azure for single-shot uploads); the
    # CRC64 Azure returns for ranges and blobs it computed it for.
    checksum_headers = ("Content-MD5", "x-ms-blob-content-md5", "x-ms-content-crc64")
    env_variables: ClassVar[dict[str, str]] = {
        "account_key": "AZURE_STORAGE_KEY",
        "connection_string": "AZURE_STORAGE_CONNECTION_STRING",
    }

    def routes(self, bucket: AzureBucket) -> tuple[Route, ...]:
        # Path-style under the account URL: ACCOUNT.blob.core.windows.net/CONTAINER/BLOB, or
        # ENDPOINT/CONTAINER/BLOB (an emulator's endpoint keeps its /ACCOUNT path).
        base = bucket.endpoint or f"https://{bucket.account}.{DEFAULT_ENDPOINT_SUFFIX}"
        return (*own_routes(bucket), Route.of(base, f"/{bucket.container}/"))

    def check_params(self, params: Mapping[str, str]) -> None:
        check_object_params(params)

    def signer(self, bucket: AzureBucket, expires: int) -> AzureSigner:
        return AzureSigner(bucket, expires)

    def resolve_env(
        self, credentials: Mapping[str, Any], env: Mapping[str, str], where: str
    ) -> Mapping[str, Any]:
        if credentials.get("source") != "env":
            return credentials
        # Only the variables named, when any is; else both defaults, the connection string
        # first (as the Azure CLI reads them).
        named = [f for f in self.env_variables if f"{f}_env" in credentials]
        variables = {f: self.env_variables[f] for f in named or self.env_variables}
        resolved = resolve_env_values(credentials, env, where, variables, tuple(named))
        if "connection_string" in resolved and "account_key" in resolved:
            del resolved["account_key"]
        if "connection_string" not in resolved and "account_key" not in resolved:
            names = " or ".join(repr(v) for v in variables.values())
            raise ConfigError(f"{where}: environment variable {names} is not set")
        return resolved

    def bucket_from_dragonfly(self, storage: Mapping[str, Any]) -> dict[str, Any]:
        bucket: dict[str, Any] = {
            "provider": self.name,
            "account": storage.get("account_name"),
            "container": storage.get("container_name"),
        }
        if storage.get("endpoint"):
            bucket["endpoint"] = storage["endpoint"]
        if storage.get("account_key"):
            bucket["credentials"] = {"source": "static", "account_key": storage["account_key"]}
        return bucket


PROVIDER = AzureProvider()
