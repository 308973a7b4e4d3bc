"""An unmodified TorchServe registers models from every store through shim, holding no
credentials: one shim with a bucket of every store (tests/support/stores.py), one TorchServe
proxied through it with the JAVA_TOOL_OPTIONS that `shim env` prints and the truststore of
`shim ca`. Each store's real origin refuses the unsigned URL TorchServe is given; shim signs it
on the way. URLs name the configured endpoint, or (https, through CONNECT) the store's own
public host, which shim maps to that endpoint.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.http import direct
from tests.support.shim_process import ShimProcess, start_shim
from tests.support.stores import ORIGINS, PUBLIC_PREFIXES, Origin
from tests.support.torchserve import (
    TorchServe,
    build_echo_archive,
    echo_reply,
    java_tool_options_from_shim_env,
    require_torchserve,
    start_torchserve,
    truststore_from_shim_ca,
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
        truststore = truststore_from_shim_ca(tmp / "shim" / "shim.yaml", tmp / "trust")
        options = java_tool_options_from_shim_env(shim.proxy_port, truststore=truststore)
        torchserve = stack.enter_context(start_torchserve(tmp / "ts", java_tool_options=options))
        yield World(origins, shim, torchserve)


def register_and_predict(world: World, origin: Origin, name: str, url: str, tmp: Path) -> None:
    """Put an echo model named `name` in the store as `ts/NAME.mar`, have TorchServe
    register it from `url` (the object's URL, unsigned) and answer a prediction."""
    archive = build_echo_archive(tmp, name=name).read_bytes()
    origin.put(f"ts/{name}.mar", archive)
    # The URL alone opens nothing: the origin wants a signature TorchServe cannot make.
    assert direct(origin.url(f"ts/{name}.mar")).status == 403
    origin.relay.reset_counters()

    status, text = world.torchserve.register(url)
    assert status == 200, text
    assert world.torchserve.scale(name)[0] == 200
    request = f"from {url}".encode()
    assert world.torchserve.predict(name, request) == (200, echo_reply(request))
    assert (world.torchserve.model_store / f"{name}.mar").read_bytes() == archive
    # The origin served it once.
    assert len(archive) <= origin.relay.bytes_down < len(archive) + 16 * 1024


@pytest.mark.parametrize("provider", sorted(ORIGINS))
def test_torchserve_registers_a_model_from_the_store_through_shim(
    world: World, provider: str, tmp_path: Path
) -> None:
    origin = world.origins[provider]
    name = f"echo_{provider}"
    register_and_predict(world, origin, name, origin.url(f"ts/{name}.mar"), tmp_path)


@pytest.mark.parametrize("provider", sorted(PUBLIC_PREFIXES))
def test_torchserve_registers_from_the_stores_public_https_url(
    world: World, provider: str, tmp_path: Path
) -> None:
    name = f"echo_{provider}_public"
    url = f"{PUBLIC_PREFIXES[provider]}ts/{name}.mar"
    register_and_predict(world, world.origins[provider], name, url, tmp_path)
