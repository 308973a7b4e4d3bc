"""Google Cloud Storage: V4 signed URLs (GOOG4-RSA-SHA256) from google-cloud-storage.

The SDK signs with a service account's key (a key file, or its JSON given inline or in an
environment variable). Ambient credentials (workload identity, the metadata server) hold no
key: the SDK then builds the URL and the IAM Credentials API's ``signBlob`` signs it as the
service account, authorised by an access token that google-auth refreshes before it expires.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
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
    import google.auth.credentials

    from shim.recognize import ObjectRef

SIGNATURE_PARAMS = frozenset(
    {
        "X-Goog-Algorithm",
        "X-Goog-Credential",
        "X-Goog-Date",
        "X-Goog-Expires",
        "X-Goog-SignedHeaders",
        "X-Goog-Signature",
        # V2 signed URLs, which clients may still paste.
        "GoogleAccessId",
        "Expires",
        "Signature",
    }
)
PUBLIC_PARAMS = frozenset(
    {"X-Goog-Algorithm", "X-Goog-Date", "X-Goog-Expires", "X-Goog-SignedHeaders", "Expires"}
)
# What the XML API reads from a GET's query, and the SDK signs, by its argument names.
_PARAM_ARGUMENTS = {
    "generation": "generation",
    "response-content-disposition": "response_disposition",
    "response-content-type": "response_type",
}
OBJECT_PARAMS = frozenset(_PARAM_ARGUMENTS)
MAX_GENERATION = 2**63 - 1

DEFAULT_HOST = "storage.googleapis.com"
DEFAULT_IAM_ENDPOINT = "https://iamcredentials.googleapis.com"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
KEY_JSON_VARIABLE = "GOOGLE_SERVICE_ACCOUNT_JSON"


class GcsCredentials(Strict):
    """``file``: a service account key file; ``static``: the key file's JSON itself; ``env``:
    a variable holding that JSON or naming the key file, read when the config is loaded
    (default GOOGLE_SERVICE_ACCOUNT_JSON); ``default``: Application Default Credentials
    (GOOGLE_APPLICATION_CREDENTIALS, gcloud's, or the metadata server of GCE/GKE: workload
    identity), signing through IAM signBlob when they hold no key."""

    source: Literal["file", "static", "env", "default"] = "default"
    service_account_file: str | None = None
    service_account_json: SecretStr | None = None
    service_account_json_env: str | None = None
    service_account_email: str | None = Field(
        default=None,
        description="with source default: the service account that signs through IAM "
        "signBlob; default: the one the credentials belong to",
    )
    iam_endpoint: str | None = Field(
        default=None,
        description="the IAM Credentials API endpoint; default "
        "https://iamcredentials.googleapis.com (a Private Service Connect name, or a test server)",
    )

    @field_validator("iam_endpoint")
    @classmethod
    def _iam_endpoint_is_http_url(cls, value: str | None) -> str | None:
        return http_endpoint(value)

    @model_validator(mode="after")
    def _source_has_its_key(self) -> Self:
        if self.source == "file" and not self.service_account_file:
            raise ValueError("source 'file' needs service_account_file")
        if self.source == "static":
            if self.service_account_json is None:
                raise ValueError("source 'static' needs service_account_json")
            _key_info(self.service_account_json)
        return self


def _key_info(key_json: SecretStr) -> dict[str, Any]:
    """A service account key's fields, or ValueError naming what is wrong (never its content)."""
    try:
        info = json.loads(key_json.get_secret_value())
    except json.JSONDecodeError:
        raise ValueError("service_account_json is not valid JSON") from None
    if not isinstance(info, dict) or not {"client_email", "private_key"} <= info.keys():
        raise ValueError(
            "service_account_json is not a service account key (JSON with client_email "
            "and private_key)"
        )
    return info


class GcsBucket(EndpointBucket):
    """A Cloud Storage bucket: storage.googleapis.com/BUCKET, or ``endpoint``/BUCKET."""

    provider: Literal["gcs"]
    bucket: str = Field(min_length=3, max_length=222)
    endpoint: str | None = Field(
        default=None,
        description="what replaces https://storage.googleapis.com: objects are fetched from "
        "ENDPOINT/BUCKET/OBJECT (Private Service Connect, an emulator)",
    )
    project_id: str | None = None
    credentials: GcsCredentials = GcsCredentials()

    def default_endpoint_host(self) -> str:
        return DEFAULT_HOST

    @field_validator("bucket")
    @classmethod
    def _bucket_has_no_percent(cls, value: str) -> str:
        if "%" in value:
            raise ValueError("a bucket name has no '%'")
        return value


class GcsSigner:
    """Signs V4 URLs for one bucket. Credentials are loaded on first use, once."""

    def __init__(self, bucket: GcsBucket, expires: int) -> None:
        self._bucket = bucket
        self._expires = timedelta(seconds=expires)
        self._signing: google.auth.credentials.Signing | None = None
        self._client: Any = None
        self._lock = threading.Lock()

    def _failed(self, what: str) -> SigningError:
        return SigningError(f"{what} for bucket {self._bucket.bucket!r}")

    def _load(self) -> google.auth.credentials.Signing:
        # Imported here: google-auth and google-cloud-storage load only for GCS buckets.
        from google.oauth2 import service_account

        creds = self._bucket.credentials
        if creds.source == "file":
            assert creds.service_account_file is not None
            path = Path(creds.service_account_file).expanduser()
            try:
                loaded: service_account.Credentials = (
                    service_account.Credentials.from_service_account_file(str(path))  # type: ignore[no-untyped-call]
                )
                return loaded
            except OSError as error:
                raise self._failed(
                    f"cannot read the service account key file {str(path)!r} "
                    f"({error.strerror or type(error).__name__})"
                ) from None
            except (ValueError, KeyError, TypeError):
                raise self._failed(
                    f"{str(path)!r} is not a service account key file (JSON with "
                    "client_email, private_key and token_uri)"
                ) from None
        if creds.source == "static":
            assert creds.service_account_json is not None
            try:
                info = _key_info(creds.service_account_json)
                parsed: service_account.Credentials = (
                    service_account.Credentials.from_service_account_info(info)  # type: ignore[no-untyped-call]
                )
                return parsed
            except (ValueError, KeyError, TypeError):
                raise self._failed(
                    "service_account_json is not a usable service account key"
                ) from None
        if creds.source == "default":
            return self._default()
        raise self._failed("credentials.source 'env' was not read from the environment")

    def _default(self) -> google.auth.credentials.Signing:
        import google.auth
        import google.auth.credentials
        import google.auth.exceptions

        from shim.providers._gcs_iam import IamSigning

        creds = self._bucket.credentials
        try:
            found, _project = google.auth.default(scopes=[CLOUD_PLATFORM_SCOPE])
        except google.auth.exceptions.GoogleAuthError as error:
            raise self._failed(
                "no Google default credentials found (GOOGLE_APPLICATION_CREDENTIALS, gcloud's "
                f"application default credentials or a metadata server: {type(error).__name__}); "
                "set buckets[].credentials"
            ) from None
        email = creds.service_account_email
        if isinstance(found, google.auth.credentials.Signing) and email in (
            None,
            found.signer_email,
        ):
            return found  # a key of its own: signs locally
        return IamSigning(found, email, creds.iam_endpoint or DEFAULT_IAM_ENDPOINT)

    def _credentials(self) -> google.auth.credentials.Signing:
        import google.auth.exceptions
        from google.cloud.storage import Client  # type: ignore[import-untyped]

        with self._lock:
            if self._signing is None:
                signing = self._load()
                try:
                    signing.signer_email  # noqa: B018 (an IAM signer asks who it is now)
                except google.auth.exceptions.GoogleAuthError as error:
                    raise self._failed(
                        f"cannot get an access token from the default credentials "
                        f"({type(error).__name__})"
                    ) from None
                except SigningError as error:
                    raise self._failed(str(error)) from None
                self._client = Client.create_anonymous_client()
                self._signing = signing
            return self._signing

    def check(self) -> None:
        self._credentials()

    def sign(self, ref: ObjectRef, method: str) -> str:
        import google.auth.exceptions
        from google.cloud.storage import Blob, Bucket

        signing = self._credentials()
        arguments = {_PARAM_ARGUMENTS[name]: value for name, value in ref.params}
        blob = Blob(ref.key, Bucket(self._client, self._bucket.bucket))
        try:
            url = blob.generate_signed_url(
                version="v4",
                expiration=self._expires,
                api_access_endpoint=self._bucket.endpoint_url(ref.client_scheme),
                method=method,
                credentials=signing,
                **arguments,
            )
        except SigningError as error:
            raise self._failed(str(error)) from None
        except (google.auth.exceptions.GoogleAuthError, ValueError, TypeError, KeyError) as error:
            raise self._failed(f"cannot sign ({type(error).__name__})") from None
        return str(url)


class GcsProvider:
    name = "gcs"
    dragonfly_type = "gcs"
    config = GcsBucket
    signature_params = SIGNATURE_PARAMS
    public_params = PUBLIC_PARAMS
    object_params = OBJECT_PARAMS
    # The XML API's x-goog-hash carries crc32c= and md5= (base64), one header each; the ETag
    # is the MD5 (hex) of objects not composed; the stored length is the object's own size.
    checksum_headers = ("x-goog-hash", "ETag", "x-goog-stored-content-length")
    env_variables: ClassVar[dict[str, str]] = {"service_account_json": KEY_JSON_VARIABLE}

    def routes(self, bucket: GcsBucket) -> tuple[Route, ...]:
        # Google's names for the bucket always name it; a custom endpoint adds its own.
        return bucket_routes(bucket, (DEFAULT_HOST,))

    def check_params(self, params: Mapping[str, str]) -> None:
        generation = params.get("generation")
        if generation is not None and not (
            generation.isascii()
            and generation.isdigit()
            and len(generation) <= 19
            and int(generation) <= MAX_GENERATION
        ):
            raise RequestError("generation must be a whole number (an object generation)")

    def signer(self, bucket: GcsBucket, expires: int) -> GcsSigner:
        return GcsSigner(bucket, expires)

    def resolve_env(
        self, credentials: Mapping[str, Any], env: Mapping[str, str], where: str
    ) -> Mapping[str, Any]:
        resolved = resolve_env_values(
            credentials, env, where, self.env_variables, ("service_account_json",)
        )
        value = resolved.get("service_account_json")
        if credentials.get("source") == "env" and not str(value).lstrip().startswith("{"):
            # The variable names a key file (as GOOGLE_APPLICATION_CREDENTIALS does).
            del resolved["service_account_json"]
            resolved.update(source="file", service_account_file=value)
        return resolved

    def bucket_from_dragonfly(self, storage: Mapping[str, Any]) -> dict[str, Any]:
        bucket: dict[str, Any] = {"provider": self.name, "bucket": storage.get("bucket_name")}
        for key in ("project_id", "endpoint"):
            if storage.get(key):
                bucket[key] = storage[key]
        if storage.get("service_account_path"):
            bucket["credentials"] = {
                "source": "file",
                "service_account_file": storage["service_account_path"],
            }
        return bucket


PROVIDER = GcsProvider()
