"""Each object store's real local origin behind a counting relay, for end-to-end tests that
run the same scenario against every store (through Dragonfly, into TorchServe).

An `Origin` says what a test needs of a store: how to put an object, the URL a client names it
by (unsigned), and a bucket config per node. The nodes' configs sign differently (other keys or
another URL lifetime), so two nodes never send the same signed URL.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.support.relay import Relay, request_target
from tests.support.servers import REGION, put_object, s3_client, start_s3rver

# Every node's bucket signs URLs for this long, plus its index times NODE_EXPIRES_STEP: the
# lifetime is in every store's signature, so nodes signing at the same second still differ.
BASE_EXPIRES = 3600
NODE_EXPIRES_STEP = 600
NODES = 2


@dataclass(frozen=True)
class Origin:
    """A store's origin as the tests drive it; every request to it passes `relay`."""

    provider: str
    relay: Relay
    prefix: str  # the raw URL path before a key: /BUCKET/, /ACCOUNT/CONTAINER/...
    signature_param: str  # the query parameter holding the signature itself
    put: Callable[[str, bytes], None]  # stores bytes at a (decoded) key
    buckets: tuple[dict[str, Any], ...]  # one bucket config per node, each signing differently

    def url(self, raw_key: str) -> str:
        """The unsigned URL of an object, as a model server names it (key percent-encoded)."""
        return f"{self.relay.endpoint}{self.prefix}{raw_key}"

    def signatures_seen(self) -> set[str]:
        """The signatures of the requests the origin was sent (the first of each connection)."""
        found: set[str] = set()
        for head in self.relay.request_heads:
            values = parse_qs(urlsplit(request_target(head)).query).get(self.signature_param)
            found.update(values or ())
        return found


def node_expires(node: int) -> int:
    return BASE_EXPIRES + node * NODE_EXPIRES_STEP


@contextlib.contextmanager
def obs_origin(workdir: Path, bucket: str = "models") -> Iterator[Origin]:
    """Huawei OBS URLs (path-style on a custom endpoint) against the strict s3rver; each node
    signs with its own key pair."""
    keys = [(f"NODE{node}KEY", f"node-{node}-secret") for node in range(NODES)]
    with (
        start_s3rver(workdir, extra_key_pairs=dict(keys)) as server,
        Relay(server.host, server.port) as relay,
    ):
        client = s3_client(server)
        client.create_bucket(Bucket=bucket)
        buckets = tuple(
            {
                "provider": "obs",
                "bucket": bucket,
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
            prefix=f"/{bucket}/",
            signature_param="X-Amz-Signature",
            put=lambda key, body: put_object(client, bucket, key, body),
            buckets=buckets,
        )


# The stores the end-to-end tests run against, by provider name.
ORIGINS: dict[str, Callable[[Path], contextlib.AbstractContextManager[Origin]]] = {
    "obs": obs_origin,
}
