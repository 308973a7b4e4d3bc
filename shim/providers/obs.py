"""Huawei Cloud OBS: S3-compatible, signed through the S3 signer against OBS's endpoint.

OBS verifies AWS SigV4 presigned URLs; URLs that people paste from OBS's own SDK or console carry
OBS's signature parameters instead, which the filter list covers too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from shim.providers._base import Route, bucket_routes, resolve_env_values
from shim.providers.s3 import (
    OBJECT_PARAMS,
    PUBLIC_PARAMS,
    S3Compatible,
    S3Credentials,
    S3Signer,
    check_part_number,
    s3_bucket_from_dragonfly,
)
from shim.providers.s3 import SIGNATURE_PARAMS as S3_SIGNATURE_PARAMS

# Dragonfly's default list for OBS, and the S3 parameters of the URLs shim signs.
SIGNATURE_PARAMS = S3_SIGNATURE_PARAMS | {
    "AccessKeyId",
    "Signature",
    "Expires",
    "X-Obs-Date",
    "X-Obs-Security-Token",
    # The spelling Huawei's own SDK writes into the URLs it signs with STS credentials.
    "x-obs-security-token",
}


class ObsCredentials(S3Credentials):
    """``static`` or ``env`` (default: OBS_ACCESS_KEY_ID, OBS_SECRET_ACCESS_KEY and
    OBS_SECURITY_TOKEN, the names Huawei's SDK reads). The AWS SDK's chain finds AWS keys, not
    OBS keys, so there is no ``default``."""

    source: Literal["static", "env"] = "env"


class ObsBucket(S3Compatible):
    """A Huawei OBS bucket: BUCKET.obs.REGION.myhuaweicloud.com, or ``endpoint``."""

    provider: Literal["obs"]
    region: str = "cn-north-4"
    addressing_style: Literal["auto", "virtual", "path"] = "virtual"
    credentials: ObsCredentials = ObsCredentials()

    def default_endpoint_host(self) -> str:
        return f"obs.{self.region}.myhuaweicloud.com"


class ObsProvider:
    name = "obs"
    dragonfly_type = "obs"
    config = ObsBucket
    signature_params = SIGNATURE_PARAMS
    public_params = PUBLIC_PARAMS | {"X-Obs-Date"}
    object_params = OBJECT_PARAMS
    checksum_headers = ("ETag", "x-obs-checksum-crc64ecma")
    env_variables: ClassVar[dict[str, str]] = {
        "access_key_id": "OBS_ACCESS_KEY_ID",
        "secret_access_key": "OBS_SECRET_ACCESS_KEY",
        "session_token": "OBS_SECURITY_TOKEN",
    }

    def routes(self, bucket: ObsBucket) -> tuple[Route, ...]:
        # A custom endpoint replaces OBS's name.
        return bucket_routes(bucket, () if bucket.endpoint else (bucket.default_endpoint_host(),))

    def check_params(self, params: Mapping[str, str]) -> None:
        check_part_number(params)

    def signer(self, bucket: ObsBucket, expires: int) -> S3Signer:
        return S3Signer(bucket, expires)

    def resolve_env(
        self, credentials: Mapping[str, Any], env: Mapping[str, str], where: str
    ) -> Mapping[str, Any]:
        # OBS credentials come from the environment unless given: env is the default source.
        return resolve_env_values(
            {"source": "env", **credentials},
            env,
            where,
            self.env_variables,
            ("access_key_id", "secret_access_key"),
        )

    def bucket_from_dragonfly(self, storage: Mapping[str, Any]) -> dict[str, Any]:
        return s3_bucket_from_dragonfly(storage, self.name)


PROVIDER = ObsProvider()
