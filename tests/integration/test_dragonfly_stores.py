"""Every store through real Dragonfly: a scheduler and two Rust dfdaemons on loopback, one per
node, each node with its own shim holding one bucket of every store (tests/support/stores.py).
Each store's real origin sits behind a relay that counts what it serves and keeps the request
heads, so the test sees the signed URLs that reached the origin.

The nodes sign every store's URLs differently (other keys, another URL lifetime). The
dfdaemons have no proxy rule and no filter of their own: only the filter list shim sends for
the store makes the two signatures one task, which the origin serves once.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from shim.taskid import rust_task_id
from tests.support.dragonfly import require_dragonfly, start_dfdaemons, start_scheduler
from tests.support.http import direct, via_proxy
from tests.support.relay import request_target
from tests.support.shim_process import ShimProcess, start_shim
from tests.support.stores import NODES, ORIGINS, Origin

pytestmark = [pytest.mark.slow, pytest.mark.dragonfly]
require_dragonfly()

# Three 4 MiB pieces: node B must get all of them from node A, none from the origin.
OBJECT_SIZE = 12 * 1024 * 1024
# What a dfdaemon's size probe (a one-byte range) costs the origin, headers included.
PROBE_BYTES = 4096


@dataclass
class Cluster:
    origins: dict[str, Origin]
    shims: list[ShimProcess]  # one per node, in front of that node's dfdaemon


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("p2p-stores")
    with contextlib.ExitStack() as stack:
        origins = {name: stack.enter_context(start(tmp / name)) for name, start in ORIGINS.items()}
        scheduler = stack.enter_context(start_scheduler(tmp / "scheduler"))
        names = [f"node-{node}" for node in range(NODES)]
        daemons = [
            stack.enter_context(daemon)
            for daemon in start_dfdaemons(tmp, names, scheduler=scheduler, proxy_rules=[])
        ]
        shims = [
            stack.enter_context(
                start_shim(
                    tmp / f"shim-{node}",
                    {
                        "dfdaemon": {"url": daemon.proxy_url, "fallback": False},
                        # Many buckets, many providers, one proxy.
                        "buckets": [origin.buckets[node] for origin in origins.values()],
                    },
                )
            )
            for node, daemon in enumerate(daemons)
        ]
        yield Cluster(origins, shims)


def tampered(target: str, params: tuple[str, ...]) -> str:
    """`target` with one letter or digit of its signature (the value of one of `params`)
    changed: the value keeps its form, only the signature is wrong."""
    path, _, query = target.partition("?")
    pairs = query.split("&")
    at = next(i for i, pair in enumerate(pairs) if pair.partition("=")[0] in params)
    name, _, value = pairs[at].partition("=")
    char = next(i for i, c in enumerate(value) if c.isalnum())
    new = "B" if value[char] == "A" else "A"
    pairs[at] = f"{name}={value[:char]}{new}{value[char + 1 :]}"
    return f"{path}?{'&'.join(pairs)}"


@pytest.mark.parametrize("provider", sorted(ORIGINS))
def test_two_nodes_signing_differently_share_one_task_and_one_origin_copy(
    cluster: Cluster, provider: str
) -> None:
    origin = cluster.origins[provider]
    body = os.urandom(OBJECT_SIZE)
    origin.put("p2p/model v1.mar", body)
    url = origin.url("p2p/model%20v1.mar")
    origin.relay.reset_counters()

    first = via_proxy(cluster.shims[0].proxy_port, url)
    assert (first.status, first.headers["X-Shim-Route"]) == (200, "dfdaemon"), first.body[:500]
    assert first.body == body
    origin_bytes = origin.relay.bytes_down
    assert OBJECT_SIZE <= origin_bytes < OBJECT_SIZE + 64 * 1024

    second = via_proxy(cluster.shims[1].proxy_port, url)
    assert (second.status, second.headers["X-Shim-Route"]) == (200, "dfdaemon"), second.body[:500]
    assert second.body == body
    # Node B got the object from node A: the origin only answered its size probe.
    assert origin.relay.bytes_down - origin_bytes < PROBE_BYTES

    # One task, as the dfdaemons reported it, and as shim computes it from the unsigned URL.
    # The task is named by the URL without its signature and, by its tag, the object's version.
    task = rust_task_id(url, tag=f";etag={first.headers['ETag']}")
    assert first.headers["X-Shim-Task-Id"] == second.headers["X-Shim-Task-Id"] == task

    # Both nodes' signatures reached the origin, and they differ.
    assert len(origin.signatures_seen()) == NODES, origin.relay.request_heads

    # The origin judged them: a signed request as node A sent it passes, tampered or unsigned
    # it is refused.
    signed = request_target(origin.relay.request_heads[0])
    assert direct(f"{origin.relay.endpoint}{signed}").body == body
    forged = direct(f"{origin.relay.endpoint}{tampered(signed, origin.signature_params)}")
    assert forged.status == 403
    assert direct(url).status == 403
