"""A store's SDK loads only in a shim that has a bucket of that store: each SDK costs 5 to 11 MB
of memory (``shim run``'s target is 150 MB in all), so a process with S3 buckets only must not
carry Azure's, Google's and Alibaba's."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.offline_buckets import OFFLINE_BUCKETS
from tests.support.servers import REPO_ROOT

# The top-level packages of every store SDK shim could load, Huawei's own (obs) included.
SDK_PACKAGES = frozenset({"boto3", "botocore", "azure", "google", "oss2", "obs"})

# What ``shim run`` loads, then the settings and signers it builds, checks and signs with, for
# the bucket given on stdin; prints the SDK packages then loaded.
_SHIM_WITH_ONE_BUCKET = f"""
import json, sys
import mitmproxy.tools.dump
import shim.addon, shim.cli, shim.lifecycle
from shim.config import settings_from_mapping
from shim.recognize import ObjectRef
from shim.signing import signers_for

settings = settings_from_mapping({{"buckets": [json.load(sys.stdin)]}}, env={{}})
for bucket, signer in signers_for(settings.buckets, 3600).items():
    signer.check()
    signer.sign(ObjectRef(bucket, "models/resnet.mar", (), "https"), "GET")
loaded = {{name.partition(".")[0] for name in sys.modules}} & {set(SDK_PACKAGES)!r}
print(json.dumps(sorted(loaded)))
"""

# The SDK each store signs with; OBS verifies S3's signatures and signs through boto3.
SDK_OF_STORE = {
    "s3": {"boto3", "botocore"},
    "obs": {"boto3", "botocore"},
    "azure": {"azure"},
    "gcs": {"google"},
    "oss": {"oss2"},
}


def test_every_store_is_covered() -> None:
    assert set(SDK_OF_STORE) == set(OFFLINE_BUCKETS)


@pytest.mark.parametrize("store", sorted(SDK_OF_STORE))
def test_a_shim_with_one_store_loads_that_stores_sdk_only(store: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _SHIM_WITH_ONE_BUCKET],
        input=json.dumps(OFFLINE_BUCKETS[store]),
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert set(json.loads(result.stdout)) == SDK_OF_STORE[store]
