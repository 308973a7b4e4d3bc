"""One bucket per provider with credentials that sign offline (no network, no server), for
property tests and the signing benchmark. Every registered provider must have one."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from shim.providers import BucketConfig
from tests.support.gcs_gateway import TEST_SERVICE_ACCOUNT_FILE

OFFLINE_BUCKETS: dict[str, dict[str, Any]] = {
    "s3": {
        "provider": "s3",
        "bucket": "models",
        "region": "eu-west-1",
        "credentials": {"source": "static", "access_key_id": "AKID", "secret_access_key": "SK"},
    },
    "obs": {
        "provider": "obs",
        "bucket": "models",
        "credentials": {"source": "static", "access_key_id": "AKID", "secret_access_key": "SK"},
    },
    "azure": {
        "provider": "azure",
        "account": "models0",
        "container": "models",
        "credentials": {"source": "static", "account_key": "a2V5LWZvci1vZmZsaW5lLXNpZ25pbmc="},
    },
    "oss": {
        "provider": "oss",
        "bucket": "models",
        "region": "cn-hangzhou",
        "credentials": {"source": "static", "access_key_id": "AKID", "access_key_secret": "SK"},
    },
    "gcs": {
        "provider": "gcs",
        "bucket": "models",
        # Google's conformance-vector service account: its key signs locally.
        "credentials": {
            "source": "static",
            "service_account_json": TEST_SERVICE_ACCOUNT_FILE.read_text(),
        },
    },
}


def offline_bucket(provider: str) -> BucketConfig:
    adapter: TypeAdapter[BucketConfig] = TypeAdapter(BucketConfig)
    return adapter.validate_python(OFFLINE_BUCKETS[provider])
