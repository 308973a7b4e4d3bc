"""Providers: one module per object store, each exposing a ``PROVIDER`` (see ``_base.Provider``).

This is the one list of stores. Adding a store: its module, a line in ``PROVIDERS`` and in the
``BucketConfig`` union, its tests and its README section.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from shim.providers import azure, gcs, obs, oss, s3
from shim.providers._base import BucketBase, Provider, Route, Signer

__all__ = [
    "ALL_SIGNATURE_PARAMS",
    "PROVIDERS",
    "PUBLIC_SIGNATURE_PARAMS",
    "BucketConfig",
    "Provider",
    "Route",
    "Signer",
    "provider_of",
]

PROVIDERS: dict[str, Provider] = {
    p.name: p for p in (s3.PROVIDER, obs.PROVIDER, azure.PROVIDER, oss.PROVIDER, gcs.PROVIDER)
}

# A bucket of any store, told apart by its ``provider`` key.
BucketConfig = Annotated[
    s3.S3Bucket | obs.ObsBucket | azure.AzureBucket | oss.OssBucket | gcs.GcsBucket,
    Field(discriminator="provider"),
]

# Every store's signature parameters, so a stale signature of any kind is redacted.
ALL_SIGNATURE_PARAMS: frozenset[str] = frozenset().union(
    *(p.signature_params for p in PROVIDERS.values())
)

# Signature parameters whose values are public in every store that uses them.
PUBLIC_SIGNATURE_PARAMS: frozenset[str] = frozenset().union(
    *(p.public_params for p in PROVIDERS.values())
) - frozenset().union(*(p.signature_params - p.public_params for p in PROVIDERS.values()))


def provider_of(bucket: BucketBase) -> Provider:
    return PROVIDERS[bucket.provider]
