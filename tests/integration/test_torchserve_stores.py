"""An unmodified TorchServe registers models from every store through shim, holding no
credentials: one shim with a bucket of every store (tests/support/stores.py), one TorchServe
proxied through it with the JAVA_TOOL_OPTIONS that `shim env` prints. Each store's real origin
refuses the unsigned URL TorchServe is given; shim signs it on the way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.http import direct
from tests.support.shim_process import ShimProcess, start_shim
from tests.support.stores import ORIGINS, Origin
from tests.support.torchserve import (
    TorchServe,
    build_echo_archive,
    echo_reply,
    java_tool_options_from_shim_env,
    require_torchserve,
    start_torchserve,
)

pytestmark = [pytest.mark.slow, pytest.mark.torchserve]
require_torchserve()


@dataclass
class World:
    origins: dict[str, Origin]
    shim: ShimProcess
    torchserve: TorchServe


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("ts-stores")
    with contextlib.ExitStack() as stack:
        origins = {name: stack.enter_context(start(tmp / name)) for name, start in ORIGINS.items()}
        config = {"buckets": [origin.buckets[0] for origin in origins.values()]}
        shim = stack.enter_context(start_shim(tmp / "shim", config))
        options = java_tool_options_from_shim_env(shim.proxy_port)
        torchserve = stack.enter_context(start_torchserve(tmp / "ts", java_tool_options=options))
        yield World(origins, shim, torchserve)


@pytest.mark.parametrize("provider", sorted(ORIGINS))
def test_torchserve_registers_a_model_from_the_store_through_shim(
    world: World, provider: str, tmp_path: Path
) -> None:
    origin = world.origins[provider]
    name = f"echo_{provider}"
    archive = build_echo_archive(tmp_path, name=name).read_bytes()
    origin.put(f"models/{name}.mar", archive)
    url = origin.url(f"models/{name}.mar")
    # The URL alone opens nothing: the origin wants a signature TorchServe cannot make.
    assert direct(url).status == 403
    origin.relay.reset_counters()

    status, text = world.torchserve.register(url)
    assert status == 200, text
    assert world.torchserve.scale(name)[0] == 200
    assert world.torchserve.predict(name, b"from " + provider.encode()) == (
        200,
        echo_reply(b"from " + provider.encode()),
    )
    assert (world.torchserve.model_store / f"{name}.mar").read_bytes() == archive
    # The origin served it to shim's signature, once.
    assert len(origin.signatures_seen()) == 1
    assert len(archive) <= origin.relay.bytes_down < len(archive) + 16 * 1024
