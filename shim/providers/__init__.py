"""Providers: per object store, the query parameters its signatures use and a signer.

A provider is one module exposing ``SIGNATURE_PARAMS`` and a ``Signer`` class built from a
``BucketConfig``; ``signer_for`` picks it. Adding a store touches one module and its test.
"""

from __future__ import annotations

from typing import Protocol

from shim.config import BucketConfig
from shim.providers import s3
from shim.recognize import ObjectRef


class Signer(Protocol):
    def sign(self, ref: ObjectRef, method: str) -> str:
        """Return a presigned URL for ``method`` on ``ref``. May block (credential refresh)."""
        ...


SIGNATURE_PARAMS: dict[str, frozenset[str]] = {"s3": s3.SIGNATURE_PARAMS}

# Every provider's parameters, so a client's stale signature of any kind is recognised.
ALL_SIGNATURE_PARAMS: frozenset[str] = frozenset().union(*SIGNATURE_PARAMS.values())


def signer_for(bucket: BucketConfig, expires: int) -> Signer:
    return s3.S3Signer(bucket, expires)
