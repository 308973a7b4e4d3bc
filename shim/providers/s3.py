"""S3 and S3-compatible stores (AWS, Huawei OBS, MinIO...): SigV4 presigned URLs via boto3."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import boto3
import botocore.config
import botocore.exceptions

from shim._errors import SigningError
from shim.config import BucketConfig

if TYPE_CHECKING:
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

# boto3's names for the object-shaping query parameters recognise.py lets through.
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
_OPERATIONS = {"GET": "get_object", "HEAD": "head_object"}


class S3Signer:
    """Presigns with SigV4 for one bucket. The boto3 client is built on first use, once."""

    def __init__(self, bucket: BucketConfig, expires: int) -> None:
        self._bucket = bucket
        self._expires = expires
        self._clients: dict[str, S3Client] = {}
        self._lock = threading.Lock()

    def _endpoint(self, client_scheme: str) -> str:
        if self._bucket.endpoint is not None:
            return self._bucket.endpoint
        scheme = "https" if client_scheme == "https" or self._bucket.upgrade_http else "http"
        return f"{scheme}://s3.{self._bucket.region}.amazonaws.com"

    def _client(self, endpoint: str) -> S3Client:
        with self._lock:
            client = self._clients.get(endpoint)
            if client is None:
                creds = self._bucket.credentials
                session_args: dict[str, Any] = {}
                if creds.source == "static":
                    assert creds.access_key_id and creds.secret_access_key
                    session_args = {
                        "aws_access_key_id": creds.access_key_id.get_secret_value(),
                        "aws_secret_access_key": creds.secret_access_key.get_secret_value(),
                        "aws_session_token": (
                            creds.session_token.get_secret_value() if creds.session_token else None
                        ),
                    }
                elif creds.profile:
                    session_args = {"profile_name": creds.profile}
                session = boto3.session.Session(**session_args)
                client = session.client(
                    "s3",
                    region_name=self._bucket.region,
                    endpoint_url=endpoint,
                    config=botocore.config.Config(
                        signature_version="s3v4",
                        s3={"addressing_style": self._bucket.addressing_style},
                    ),
                )
                self._clients[endpoint] = client
            return client

    def sign(self, ref: ObjectRef, method: str) -> str:
        params: dict[str, Any] = {"Bucket": self._bucket.bucket, "Key": ref.key}
        for name, value in ref.params:
            # boto3 validates types: a part number is an int (recognize checked its digits).
            params[_PARAM_NAMES[name]] = int(value) if name == "partNumber" else value
        try:
            client = self._client(self._endpoint(ref.client_scheme))
            return client.generate_presigned_url(
                _OPERATIONS[method], Params=params, ExpiresIn=self._expires
            )
        except botocore.exceptions.NoCredentialsError:
            raise SigningError(
                f"no credentials found for bucket {self._bucket.bucket!r}: set "
                "buckets[].credentials, or provide them to the AWS SDK's default chain"
            ) from None
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
            raise SigningError(
                f"cannot sign for bucket {self._bucket.bucket!r}: {type(error).__name__}"
            ) from None
