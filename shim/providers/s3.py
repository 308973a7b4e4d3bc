"""Amazon S3 and S3-compatible stores (MinIO, Ceph...): SigV4 presigned URLs via boto3.

``S3Compatible`` and ``S3Signer`` are shared with stores that speak S3's signatures against
their own endpoints (Huawei OBS).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self

from pydantic import Field, SecretStr, model_validator

from shim._errors import RequestError, SigningError
from shim.providers._base import (
    EndpointBucket,
    Route,
    Strict,
    bucket_routes,
    resolve_env_values,
)

if TYPE_CHECKING:
    from boto3.session import Session
    from mypy_boto3_s3 import S3Client

    from shim.recognize import ObjectRef

# Dragonfly's Rust dfdaemon default list for S3: the parameters that vary per signature.
SIGNATURE_PARAMS = frozenset(
    {
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-Expires",
        "X-Amz-SignedHeaders",
        "X-Amz-Signature",
        "X-Amz-Security-Token",
        "X-Amz-User-Agent",
        # SigV2 presigned URLs, which clients may still paste.
        "AWSAccessKeyId",
        "Signature",
        "Expires",
    }
)

PUBLIC_PARAMS = frozenset(
    {"X-Amz-Algorithm", "X-Amz-Date", "X-Amz-Expires", "X-Amz-SignedHeaders", "Expires"}
)

# Query parameters of a GET/HEAD that name or shape the object, with boto3's names for them.
_PARAM_NAMES = {
    "versionId": "VersionId",
    "partNumber": "PartNumber",
    "response-cache-control": "ResponseCacheControl",
    "response-content-disposition": "ResponseContentDisposition",
    "response-content-encoding": "ResponseContentEncoding",
    "response-content-language": "ResponseContentLanguage",
    "response-content-type": "ResponseContentType",
    "response-expires": "ResponseExpires",
}
OBJECT_PARAMS = frozenset(_PARAM_NAMES)
MAX_PART_NUMBER = 10000
_OPERATIONS = {"GET": "get_object", "HEAD": "head_object"}


class S3Credentials(Strict):
    """``static``: the values given here; ``env``: the named environment variables, read when
    the config is loaded (default names: the store's own, e.g. AWS_ACCESS_KEY_ID); ``default``:
    the AWS SDK's default chain (environment, profile, web identity, instance metadata...),
    which refreshes temporary credentials before they expire."""

    source: Literal["static", "env", "default"] = "default"
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    access_key_id_env: str | None = None
    secret_access_key_env: str | None = None
    session_token_env: str | None = None
    profile: str | None = None

    @model_validator(mode="after")
    def _static_needs_both_keys(self) -> Self:
        if self.source == "static" and not (self.access_key_id and self.secret_access_key):
            raise ValueError("source 'static' needs both access_key_id and secret_access_key")
        return self


class S3Compatible(EndpointBucket):
    """A bucket of a store that verifies S3's signatures."""

    bucket: str = Field(min_length=1, max_length=255)
    region: str = "us-east-1"
    addressing_style: Literal["auto", "virtual", "path"] = "auto"
    credentials: S3Credentials = S3Credentials()


class S3Bucket(S3Compatible):
    """An AWS S3 bucket, or one of an S3-compatible store given as ``endpoint``."""

    provider: Literal["s3"]

    def default_endpoint_host(self) -> str:
        return f"s3.{self.region}.amazonaws.com"


def check_part_number(params: Mapping[str, str]) -> None:
    part = params.get("partNumber")
    if part is not None and not (
        part.isascii() and part.isdigit() and len(part) <= 5 and 1 <= int(part) <= MAX_PART_NUMBER
    ):
        raise RequestError(f"partNumber must be a whole number from 1 to {MAX_PART_NUMBER}")


class S3Signer:
    """Presigns with SigV4 for one bucket. The boto3 client is built on first use, once per
    endpoint; boto3 refreshes temporary credentials of its default chain by itself."""

    def __init__(self, bucket: S3Compatible, expires: int) -> None:
        self._bucket = bucket
        self._expires = expires
        self._clients: dict[str, S3Client] = {}
        self._lock = threading.Lock()

    def _session(self) -> Session:
        # Imported here: boto3 and botocore load only for buckets that sign with them.
        import boto3.session

        creds = self._bucket.credentials
        if creds.source == "static":
            assert creds.access_key_id and creds.secret_access_key
            return boto3.session.Session(
                aws_access_key_id=creds.access_key_id.get_secret_value(),
                aws_secret_access_key=creds.secret_access_key.get_secret_value(),
                aws_session_token=(
                    creds.session_token.get_secret_value() if creds.session_token else None
                ),
            )
        return boto3.session.Session(profile_name=creds.profile)

    def _client(self, endpoint: str) -> S3Client:
        with self._lock:
            client = self._clients.get(endpoint)
            if client is None:
                import botocore.config
                from botocore.handlers import set_list_objects_encoding_type_url

                client = self._session().client(
                    "s3",
                    region_name=self._bucket.region,
                    endpoint_url=endpoint,
                    config=botocore.config.Config(
                        signature_version="s3v4",
                        s3={"addressing_style": self._bucket.addressing_style},
                    ),
                )
                # boto3 asks for URL-encoded keys in every listing it makes, and decodes them
                # itself; a listing signed for a client must ask for what the client asked.
                for operation in ("ListObjects", "ListObjectsV2"):
                    client.meta.events.unregister(
                        f"before-parameter-build.s3.{operation}", set_list_objects_encoding_type_url
                    )
                self._clients[endpoint] = client
            return client

    def _no_credentials(self) -> SigningError:
        return SigningError(
            f"no credentials found for bucket {self._bucket.bucket!r}: set "
            "buckets[].credentials, or provide them to the AWS SDK's default chain"
        )

    def check(self) -> None:
        import botocore.exceptions

        try:
            found = self._session().get_credentials()
        except botocore.exceptions.BotoCoreError as error:
            raise SigningError(
                f"cannot load credentials for bucket {self._bucket.bucket!r}: "
                f"{type(error).__name__}"
            ) from None
        if found is None:
            raise self._no_credentials()
        # Built now, so that the first download does not wait for it (about 0.1 s).
        self._client(self._bucket.endpoint_url("https"))

    def sign(self, ref: ObjectRef, method: str) -> str:
        params: dict[str, Any] = {"Key": ref.key}
        for name, value in ref.params:
            # boto3 validates types: a part number is an int (check_params checked its digits).
            params[_PARAM_NAMES[name]] = int(value) if name == "partNumber" else value
        return self._presign(_OPERATIONS[method], params, ref.client_scheme)

    def sign_listing(self, operation: str, params: Mapping[str, Any]) -> str:
        """A presigned URL of the bucket's ``operation`` (list_objects or list_objects_v2) with
        boto3's ``params``, bucket aside (may block)."""
        return self._presign(operation, params, "https")

    def _presign(self, operation: str, params: Mapping[str, Any], client_scheme: str) -> str:
        import botocore.exceptions

        try:
            client = self._client(self._bucket.endpoint_url(client_scheme))
            return client.generate_presigned_url(
                operation, Params={"Bucket": self._bucket.bucket, **params}, ExpiresIn=self._expires
            )
        except botocore.exceptions.NoCredentialsError:
            raise self._no_credentials() from None
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
            raise SigningError(
                f"cannot sign for bucket {self._bucket.bucket!r}: {type(error).__name__}"
            ) from None


def s3_bucket_from_dragonfly(storage: Mapping[str, Any], provider: str) -> dict[str, Any]:
    """dragonfly-endpoint's ``object_storage`` for an S3-signed store, as a bucket mapping."""
    bucket: dict[str, Any] = {"provider": provider, "bucket": storage.get("bucket_name")}
    for key in ("region", "endpoint"):
        if storage.get(key):
            bucket[key] = storage[key]
    if storage.get("access_key") or storage.get("secret_key"):
        bucket["credentials"] = {
            "source": "static",
            "access_key_id": storage.get("access_key"),
            "secret_access_key": storage.get("secret_key"),
        }
    return bucket


class S3Provider:
    name = "s3"
    dragonfly_type = "s3"
    config = S3Bucket
    signature_params = SIGNATURE_PARAMS
    public_params = PUBLIC_PARAMS
    object_params = OBJECT_PARAMS
    # MD5 of a single-part upload as the ETag; SHA/CRC checksums when the uploader asked for them.
    checksum_headers = (
        "ETag",
        "x-amz-checksum-crc32",
        "x-amz-checksum-crc32c",
        "x-amz-checksum-crc64nvme",
        "x-amz-checksum-sha1",
        "x-amz-checksum-sha256",
    )
    env_variables: ClassVar[dict[str, str]] = {
        "access_key_id": "AWS_ACCESS_KEY_ID",
        "secret_access_key": "AWS_SECRET_ACCESS_KEY",
        "session_token": "AWS_SESSION_TOKEN",
    }

    def routes(self, bucket: S3Bucket) -> tuple[Route, ...]:
        # Every spelling AWS accepts for a regional endpoint, plus the legacy global one.
        region = bucket.region
        hosts = (
            f"s3.{region}.amazonaws.com",
            f"s3-{region}.amazonaws.com",
            f"s3.dualstack.{region}.amazonaws.com",
            "s3.amazonaws.com",
        )
        # A custom endpoint replaces AWS's names.
        return bucket_routes(bucket, () if bucket.endpoint else hosts)

    def check_params(self, params: Mapping[str, str]) -> None:
        check_part_number(params)

    def signer(self, bucket: S3Bucket, expires: int) -> S3Signer:
        return S3Signer(bucket, expires)

    def resolve_env(
        self, credentials: Mapping[str, Any], env: Mapping[str, str], where: str
    ) -> Mapping[str, Any]:
        return resolve_env_values(
            credentials, env, where, self.env_variables, ("access_key_id", "secret_access_key")
        )

    def bucket_from_dragonfly(self, storage: Mapping[str, Any]) -> dict[str, Any]:
        return s3_bucket_from_dragonfly(storage, self.name)


PROVIDER = S3Provider()
