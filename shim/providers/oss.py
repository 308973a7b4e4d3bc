"""Aliyun OSS: signed URLs via oss2, V4 (OSS4-HMAC-SHA256) when the bucket names its region, V1
(HMAC-SHA1) otherwise; STS security tokens with either.

OSS names a bucket in the host (``BUCKET.oss-REGION.aliyuncs.com``); oss2 uses path style
(``ENDPOINT/BUCKET/KEY``) on an IP or localhost endpoint, and so do the routes of such an
endpoint.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator

from shim._errors import RequestError, SigningError
from shim.providers._base import (
    EndpointBucket,
    Route,
    Strict,
    bucket_routes,
    http_endpoint,
    resolve_env_values,
)

if TYPE_CHECKING:
    from shim.recognize import ObjectRef

# Every query parameter of V1 and V4 signed URLs (SecurityToken: older SDKs' name for the
# STS token).
SIGNATURE_PARAMS = frozenset(
    {
        "OSSAccessKeyId",
        "Expires",
        "Signature",
        "SecurityToken",
        "security-token",
        "x-oss-signature-version",
        "x-oss-credential",
        "x-oss-date",
        "x-oss-expires",
        "x-oss-signature",
        "x-oss-additional-headers",
        "x-oss-security-token",
    }
)
PUBLIC_PARAMS = frozenset(
    {
        "Expires",
        "x-oss-signature-version",
        "x-oss-date",
        "x-oss-expires",
        "x-oss-additional-headers",
    }
)
# GetObject's query parameters that select or shape the object.
OBJECT_PARAMS = frozenset(
    {
        "versionId",
        "response-cache-control",
        "response-content-disposition",
        "response-content-encoding",
        "response-content-language",
        "response-content-type",
        "response-expires",
    }
)
# Aliyun's rule for bucket names, which oss2 enforces too.
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")
# ECS instance metadata: the STS credentials of the instance's RAM role.
ECS_METADATA = "http://100.100.100.200"
_ECS_ROLE_PATH = "/latest/meta-data/ram/security-credentials/"


class OssCredentials(Strict):
    """``static``: the values given here; ``env``: environment variables read when the config
    is loaded (default OSS_ACCESS_KEY_ID, OSS_ACCESS_KEY_SECRET and OSS_SESSION_TOKEN, the
    names oss2 reads); ``ecs_ram_role``: the temporary credentials of the ECS instance's RAM
    role from the metadata service, which oss2 renews before they expire. Alibaba's SDKs have
    no default chain, so there is no ``default``; ``env`` is the default source."""

    source: Literal["static", "env", "ecs_ram_role"] = "env"
    access_key_id: SecretStr | None = None
    access_key_secret: SecretStr | None = None
    security_token: SecretStr | None = Field(
        default=None, description="the STS token going with a temporary access key"
    )
    access_key_id_env: str | None = None
    access_key_secret_env: str | None = None
    security_token_env: str | None = None
    role_name: str | None = Field(default=None, description="ecs_ram_role: the RAM role's name")
    metadata_endpoint: str = Field(
        default=ECS_METADATA, description="ecs_ram_role: the instance metadata service"
    )

    @model_validator(mode="after")
    def _source_has_what_it_needs(self) -> Self:
        if self.source == "static" and not (self.access_key_id and self.access_key_secret):
            raise ValueError("source 'static' needs both access_key_id and access_key_secret")
        if self.source == "ecs_ram_role" and not self.role_name:
            raise ValueError("source 'ecs_ram_role' needs role_name")
        return self

    @field_validator("metadata_endpoint")
    @classmethod
    def _metadata_is_http_url(cls, value: str) -> str:
        endpoint = http_endpoint(value)
        assert endpoint is not None
        return endpoint


class OssBucket(EndpointBucket):
    """An OSS bucket: BUCKET.oss-REGION.aliyuncs.com, or on ``endpoint``."""

    provider: Literal["oss"]
    bucket: str = Field(description="3 to 63 lower-case letters, digits and hyphens")
    region: str | None = Field(
        default=None,
        description="e.g. cn-hangzhou: URLs are signed with V4 when set, with V1 otherwise",
    )
    endpoint: str | None = Field(
        default=None,
        description="the service endpoint URL; absent means https://oss-REGION.aliyuncs.com",
    )
    credentials: OssCredentials = OssCredentials()

    def default_endpoint_host(self) -> str:
        return f"oss-{self.region}.aliyuncs.com"

    @field_validator("bucket")
    @classmethod
    def _bucket_is_an_oss_name(cls, value: str) -> str:
        if not _BUCKET_NAME.fullmatch(value):
            raise ValueError(
                "an OSS bucket name is 3 to 63 lower-case letters, digits and hyphens, "
                "beginning and ending with a letter or digit"
            )
        return value

    @field_validator("region")
    @classmethod
    def _region_is_bare(cls, value: str | None) -> str | None:
        # "oss-cn-hangzhou" (ali-oss's spelling) and "cn-hangzhou" are the same region.
        return value.removeprefix("oss-") if value else value

    @model_validator(mode="after")
    def _region_or_endpoint(self) -> Self:
        if self.region is None and self.endpoint is None:
            raise ValueError("set region (e.g. cn-hangzhou), endpoint, or both")
        return self


class OssSigner:
    """Signs with oss2 for one bucket: one oss2.Bucket per endpoint URL, built on first use;
    the credentials provider is shared, so ECS role credentials are fetched and renewed once."""

    def __init__(self, bucket: OssBucket, expires: int) -> None:
        self._bucket = bucket
        self._expires = expires
        self._provider: Any = None
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _credentials_provider(self) -> Any:
        # Imported here: oss2 (and its crypto dependencies) load only for OSS buckets.
        import oss2  # type: ignore[import-untyped]

        creds = self._bucket.credentials
        if creds.source == "ecs_ram_role":
            return oss2.EcsRamRoleCredentialsProvider(
                f"{creds.metadata_endpoint}{_ECS_ROLE_PATH}{creds.role_name}"
            )
        if not (creds.access_key_id and creds.access_key_secret):
            # source: env, left unread (a command that signs nothing loaded the config).
            raise SigningError(
                f"no credentials for bucket {self._bucket.bucket!r}: the environment "
                "variables of credentials.source 'env' were not read"
            )
        return oss2.StaticCredentialsProvider(
            creds.access_key_id.get_secret_value(),
            creds.access_key_secret.get_secret_value(),
            creds.security_token.get_secret_value() if creds.security_token else "",
        )

    def _client(self, endpoint: str) -> Any:
        import oss2

        with self._lock:
            if self._provider is None:
                self._provider = self._credentials_provider()
            client = self._clients.get(endpoint)
            if client is None:
                auth = (
                    oss2.ProviderAuthV4(self._provider)
                    if self._bucket.region
                    else oss2.ProviderAuth(self._provider)
                )
                client = oss2.Bucket(
                    auth,
                    endpoint,
                    self._bucket.bucket,
                    region=self._bucket.region,
                    # Keys beginning with '?' are fine: the key is percent-encoded in the path.
                    is_verify_object_strict=False,
                )
                self._clients[endpoint] = client
            return client

    def _failure(self, doing: str, error: Exception) -> SigningError:
        # The type only: oss2's messages may quote what the metadata service answered.
        return SigningError(
            f"cannot {doing} for bucket {self._bucket.bucket!r}: {type(error).__name__}"
        )

    def check(self) -> None:
        try:
            with self._lock:
                if self._provider is None:
                    self._provider = self._credentials_provider()
                found = self._provider.get_credentials()
        except SigningError:
            raise
        except Exception as error:  # oss2 and requests raise many kinds
            raise self._failure("load credentials", error) from None
        if not (found and found.get_access_key_id() and found.get_access_key_secret()):
            raise SigningError(f"no credentials found for bucket {self._bucket.bucket!r}")

    def sign(self, ref: ObjectRef, method: str) -> str:
        if not ref.key.strip():
            # oss2 refuses to sign such a key, whatever the store would say: the client's
            # request cannot be served, which is no failure of the credentials.
            raise RequestError("an OSS object key made only of whitespace cannot be signed")
        try:
            client = self._client(self._bucket.endpoint_url(ref.client_scheme))
            url: str = client.sign_url(
                method, ref.key, self._expires, params=dict(ref.params), slash_safe=True
            )
        except SigningError:
            raise
        except Exception as error:  # oss2 and requests raise many kinds
            raise self._failure("sign", error) from None
        return url


class OssProvider:
    name = "oss"
    dragonfly_type = "oss"
    config = OssBucket
    signature_params = SIGNATURE_PARAMS
    public_params = PUBLIC_PARAMS
    object_params = OBJECT_PARAMS
    # ETag: the MD5 of a simple upload (not of multipart or appendable objects); CRC-64/ECMA
    # of every object.
    checksum_headers = ("ETag", "Content-MD5", "x-oss-hash-crc64ecma")
    env_variables: ClassVar[dict[str, str]] = {
        "access_key_id": "OSS_ACCESS_KEY_ID",
        "access_key_secret": "OSS_ACCESS_KEY_SECRET",
        "security_token": "OSS_SESSION_TOKEN",
    }

    def routes(self, bucket: OssBucket) -> tuple[Route, ...]:
        hosts = ["oss-accelerate.aliyuncs.com", "oss-accelerate-overseas.aliyuncs.com"]
        if bucket.region:
            hosts[:0] = [
                f"oss-{bucket.region}.aliyuncs.com",
                f"oss-{bucket.region}-internal.aliyuncs.com",
            ]
        # OSS's own endpoints serve virtual-hosted URLs only; a custom one takes both styles.
        return bucket_routes(bucket, hosts, path_style=False)

    def check_params(self, params: Mapping[str, str]) -> None:
        """OSS reads every object parameter as given."""

    def signer(self, bucket: OssBucket, expires: int) -> OssSigner:
        return OssSigner(bucket, expires)

    def resolve_env(
        self, credentials: Mapping[str, Any], env: Mapping[str, str], where: str
    ) -> Mapping[str, Any]:
        # OSS credentials come from the environment unless given: env is the default source.
        return resolve_env_values(
            {"source": "env", **credentials},
            env,
            where,
            self.env_variables,
            ("access_key_id", "access_key_secret"),
        )

    def bucket_from_dragonfly(self, storage: Mapping[str, Any]) -> dict[str, Any]:
        bucket: dict[str, Any] = {"provider": self.name, "bucket": storage.get("bucket_name")}
        for key in ("region", "endpoint"):
            if storage.get(key):
                bucket[key] = storage[key]
        if storage.get("access_key_id") or storage.get("access_key_secret"):
            bucket["credentials"] = {
                "source": "static",
                "access_key_id": storage.get("access_key_id"),
                "access_key_secret": storage.get("access_key_secret"),
            }
        return bucket


PROVIDER = OssProvider()
