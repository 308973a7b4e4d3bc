"""Each object store's real local origin behind a counting relay, for end-to-end tests that
run the same scenario against every store (through Dragonfly, into TorchServe).

An `Origin` says what a test needs of a store: how to put an object, the URL a client names it
by (unsigned), and a bucket config per node. The nodes' configs sign differently (other keys or
another URL lifetime), so two nodes never send the same signed URL.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support import oss_gateway
from tests.support.azurite import ACCOUNT, ACCOUNT_KEY, put_blob, start_azurite
from tests.support.gcs_gateway import (
    TEST_SERVICE_ACCOUNT_FILE,
    ServiceAccount,
    account_json,
    load_service_account,
    start_gateway,
)
from tests.support.relay import Relay, request_target
from tests.support.servers import REGION, put_object, s3_client, start_s3rver

# Every node's bucket signs URLs for this long, plus its index times NODE_EXPIRES_STEP: the
# lifetime is in every store's signature, so nodes signing at the same second still differ.
BASE_EXPIRES = 3600
NODE_EXPIRES_STEP = 600
NODES = 2
BUCKET = "models"  # the bucket (Azure: container) of every store


@dataclass(frozen=True)
class Origin:
    """A store's origin as the tests drive it; every request to it passes `relay`."""

    provider: str
    relay: Relay
    prefix: str  # the raw URL path before a key: /BUCKET/, /ACCOUNT/CONTAINER/...
    signature_params: tuple[str, ...]  # the query parameters holding the signature itself
    put: Callable[[str, bytes], object]  # stores bytes at a (decoded) key
    buckets: tuple[dict[str, Any], ...]  # one bucket config per node, each signing differently

    def url(self, raw_key: str) -> str:
        """The unsigned URL of an object, as a model server names it (key percent-encoded)."""
        return f"{self.relay.endpoint}{self.prefix}{raw_key}"

    def signatures_seen(self) -> set[str]:
        """The signatures of the requests the origin was sent since the relay's counters were
        reset: the first request of each connection only (the dfdaemon closes every one; a
        client that keeps connections alive shows its first request alone)."""
        found: set[str] = set()
        for head in self.relay.request_heads:
            query = parse_qs(urlsplit(request_target(head)).query)
            for param in self.signature_params:
                found.update(query.get(param, ()))
        return found


def node_expires(node: int) -> int:
    return BASE_EXPIRES + node * NODE_EXPIRES_STEP


@contextlib.contextmanager
def obs_origin(workdir: Path) -> Iterator[Origin]:
    """Huawei OBS URLs (path-style on a custom endpoint) against the strict s3rver; each node
    signs with its own key pair."""
    keys = [(f"NODE{node}KEY", f"node-{node}-secret") for node in range(NODES)]
    with (
        start_s3rver(workdir, extra_key_pairs=dict(keys)) as server,
        Relay(server.host, server.port) as relay,
    ):
        client = s3_client(server)
        client.create_bucket(Bucket=BUCKET)
        buckets = tuple(
            {
                "provider": "obs",
                "alias": "obs",  # one shim holds every store's bucket
                "bucket": BUCKET,
                "endpoint": relay.endpoint,
                "region": REGION,
                "addressing_style": "path",
                "presign_expires": node_expires(node),
                "credentials": {
                    "source": "static",
                    "access_key_id": access_key,
                    "secret_access_key": secret_key,
                },
            }
            for node, (access_key, secret_key) in enumerate(keys)
        )
        yield Origin(
            provider="obs",
            relay=relay,
            prefix=f"/{BUCKET}/",
            signature_params=("X-Amz-Signature",),
            put=lambda key, body: put_object(client, BUCKET, key, body),
            buckets=buckets,
        )


@contextlib.contextmanager
def azure_origin(workdir: Path) -> Iterator[Origin]:
    """Azure Blob against azurite (its emulator-style account URL); every node signs a service
    SAS with the account's key, each with its own lifetime (`se`)."""
    with start_azurite(workdir) as server, Relay(server.host, server.port) as relay:
        buckets = tuple(
            {
                "provider": "azure",
                "alias": "azure",  # one shim holds every store's bucket
                "account": ACCOUNT,
                "container": BUCKET,
                "endpoint": f"{relay.endpoint}/{ACCOUNT}",
                "presign_expires": node_expires(node),
                "credentials": {"source": "static", "account_key": ACCOUNT_KEY},
            }
            for node in range(NODES)
        )
        yield Origin(
            provider="azure",
            relay=relay,
            prefix=f"/{ACCOUNT}/{BUCKET}/",
            signature_params=("sig",),
            put=lambda key, body: put_blob(server, BUCKET, key, body),
            buckets=buckets,
        )


@contextlib.contextmanager
def gcs_origin(workdir: Path) -> Iterator[Origin]:
    """Google Cloud Storage against the V4-verifying gateway; node 0 signs with the test
    service account's key file, every other node with a service account of its own."""
    first = load_service_account(TEST_SERVICE_ACCOUNT_FILE)
    others = [
        ServiceAccount(
            f"node-{node}@{first.project_id}.iam.gserviceaccount.com",
            first.project_id,
            f"{node:040x}",
            rsa.generate_private_key(public_exponent=65537, key_size=2048),
        )
        for node in range(1, NODES)
    ]
    credentials = [
        {"source": "file", "service_account_file": str(TEST_SERVICE_ACCOUNT_FILE)},
        *(
            {"source": "static", "service_account_json": json.dumps(account_json(account))}
            for account in others
        ),
    ]
    with (
        start_gateway(workdir, [first, *others]) as gateway,
        Relay("127.0.0.1", gateway.port) as relay,
    ):
        buckets = tuple(
            {
                "provider": "gcs",
                "alias": "gcs",  # one shim holds every store's bucket
                "bucket": BUCKET,
                "endpoint": relay.endpoint,
                "presign_expires": node_expires(node),
                "credentials": credentials[node],
            }
            for node in range(NODES)
        )
        yield Origin(
            provider="gcs",
            relay=relay,
            prefix=f"/{BUCKET}/",
            signature_params=("X-Goog-Signature",),
            put=lambda key, body: gateway.put(BUCKET, key, body),
            buckets=buckets,
        )


@contextlib.contextmanager
def oss_origin(workdir: Path) -> Iterator[Origin]:
    """Aliyun OSS against the verifying gateway; node 0 signs V4 with an access key, every
    other node V1 (no region) with an STS key and its security token."""
    static = {
        "source": "static",
        "access_key_id": oss_gateway.ACCESS_KEY_ID,
        "access_key_secret": oss_gateway.ACCESS_KEY_SECRET,
    }
    sts = {
        "source": "static",
        "access_key_id": oss_gateway.STS_ACCESS_KEY_ID,
        "access_key_secret": oss_gateway.STS_ACCESS_KEY_SECRET,
        "security_token": oss_gateway.STS_TOKEN,
    }
    # A region makes shim sign V4; without one, V1.
    signing: list[dict[str, Any]] = [
        {"region": oss_gateway.REGION, "credentials": static},
        *({"credentials": sts} for _ in range(1, NODES)),
    ]
    with oss_gateway.OssGateway(workdir) as gateway, Relay("127.0.0.1", gateway.port) as relay:
        buckets = tuple(
            {
                "provider": "oss",
                "alias": "oss",
                "bucket": BUCKET,
                "endpoint": relay.endpoint,
                "presign_expires": node_expires(node),
                **signing[node],
            }
            for node in range(NODES)
        )
        yield Origin(
            provider="oss",
            relay=relay,
            prefix=f"/{BUCKET}/",
            signature_params=("x-oss-signature", "Signature"),
            put=lambda key, body: gateway.put(BUCKET, key, body),
            buckets=buckets,
        )


# The stores the end-to-end tests run against, by provider name.
ORIGINS: dict[str, Callable[[Path], contextlib.AbstractContextManager[Origin]]] = {
    "azure": azure_origin,
    "gcs": gcs_origin,
    "obs": obs_origin,
    "oss": oss_origin,
}

# The store's own public names for node 0's bucket, which shim recognises besides the
# configured endpoint and signs towards it: the URLs users paste. Azure's and OBS's configured
# endpoint replaces the store's names.
PUBLIC_PREFIXES = {
    "gcs": f"https://storage.googleapis.com/{BUCKET}/",
    "oss": f"https://{BUCKET}.oss-{oss_gateway.REGION}.aliyuncs.com/",
}
