"""Two nodes on real Dragonfly, for end-to-end tests: a strict s3rver behind a counting relay,
a scheduler, and per node a Rust dfdaemon with its own shim. The nodes sign with different
keys, so their signatures never agree; only shim's filter and tag make them one task. Node A's
dfdaemon hard-links its local hits for shim (``dfdaemon.link_dir``); node B's streams them
through its proxy: both ways are exercised by every test that reads both nodes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.dragonfly import Dfdaemon, Scheduler, start_dfdaemon, start_scheduler
from tests.support.relay import Relay
from tests.support.servers import S3Server, s3_client, start_s3rver
from tests.support.shim_process import ShimProcess, s3_bucket_config, start_shim

# Node B signs with other credentials than the server's default pair, which node A uses.
NODE_B_KEYS = ("NODEBKEY", "node-b-secret")


@dataclass
class Node:
    dfdaemon: Dfdaemon
    shim: ShimProcess


@dataclass
class Cluster:
    origin: S3Server
    relay: Relay
    scheduler: Scheduler
    bucket: str
    a: Node
    b: Node

    def url(self, key: str) -> str:
        """The unsigned URL of ``key`` (raw, percent-encoded) at the relay."""
        return f"{self.relay.endpoint}/{self.bucket}/{key}"


@contextlib.contextmanager
def start_cluster(tmp: Path, bucket: str, **bucket_fields: Any) -> Iterator[Cluster]:
    """The cluster with ``bucket`` created; each shim's bucket config takes ``bucket_fields``
    (e.g. ``revalidate``), and its dfdaemon route does not fall back to the origin."""

    def node(
        name: str, dfdaemon: Dfdaemon, relay: Relay, *keys: str, link: bool = False
    ) -> ShimProcess:
        config = {**s3_bucket_config(bucket, relay.endpoint, *keys), **bucket_fields}
        route: dict[str, Any] = {"url": dfdaemon.proxy_url, "fallback": False}
        if link:
            route["link_dir"] = str(tmp / f"links-{name}")
        return start_shim(tmp / f"shim-{name}", {"dfdaemon": route, "buckets": [config]})

    with (
        start_s3rver(tmp / "origin", extra_key_pairs=dict([NODE_B_KEYS])) as origin,
        Relay(origin.host, origin.port) as relay,
        start_scheduler(tmp / "scheduler") as scheduler,
        start_dfdaemon(tmp / "dfa", name="node-a", scheduler=scheduler, proxy_rules=[]) as dfa,
        start_dfdaemon(tmp / "dfb", name="node-b", scheduler=scheduler, proxy_rules=[]) as dfb,
        node("a", dfa, relay, link=True) as shim_a,
        node("b", dfb, relay, *NODE_B_KEYS) as shim_b,
    ):
        s3_client(origin).create_bucket(Bucket=bucket)
        yield Cluster(origin, relay, scheduler, bucket, Node(dfa, shim_a), Node(dfb, shim_b))
