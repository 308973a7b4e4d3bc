"""The dfdaemon probe of the status page, against real loopback sockets: a port that accepts, one
that refuses, one that never answers; and at most one probe per interval, however many pages."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator

from shim.dfdaemon_health import DfdaemonProbe
from tests.support.procs import free_port


@contextlib.asynccontextmanager
async def listener() -> AsyncIterator[tuple[tuple[str, int], list[int]]]:
    """A loopback port that accepts connections; the list grows by one per connection."""
    accepted: list[int] = []

    def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[:2], accepted


@contextlib.contextmanager
def silent_port() -> Iterator[tuple[str, int]]:
    """A loopback port whose accept queue is full: a new connection is never answered."""
    with socket.socket() as server, contextlib.ExitStack() as stack:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        for _ in range(3):
            client = stack.enter_context(socket.socket())
            client.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                client.connect(server.getsockname())
        yield server.getsockname()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_dfdaemon_that_accepts_is_reachable() -> None:
    async def main() -> None:
        async with listener() as (address, _):
            health = await DfdaemonProbe(address).health()
        assert health.reachable
        assert health.address == f"127.0.0.1:{address[1]}"
        assert health.detail.startswith("its proxy port accepts connections (")

    asyncio.run(main())


def test_a_dfdaemon_that_is_not_there_is_unreachable() -> None:
    async def main() -> None:
        health = await DfdaemonProbe(("127.0.0.1", free_port())).health()
        assert (health.reachable, health.detail) == (False, "cannot connect: Connection refused")

    asyncio.run(main())


def test_a_dfdaemon_that_never_answers_is_given_up_on_after_the_timeout() -> None:
    async def main() -> None:
        with silent_port() as address:
            health = await DfdaemonProbe(address, timeout=0.3).health()
        assert (health.reachable, health.detail) == (False, "no connection within 0.3 s")

    asyncio.run(main())


def test_pages_loaded_at_once_or_within_the_interval_share_one_probe() -> None:
    async def main() -> None:
        clock = Clock()
        async with listener() as (address, accepted):
            probe = DfdaemonProbe(address, interval=5.0, clock=clock)
            first = await asyncio.gather(*(probe.health() for _ in range(20)))
            clock.now += 4.9
            assert await probe.health() is first[0]
            await asyncio.sleep(0.05)  # let the server count what it accepted
            assert len(accepted) == 1
            clock.now += 0.1
            assert (await probe.health()).checked_at >= first[0].checked_at
            await asyncio.sleep(0.05)
            assert len(accepted) == 2

    asyncio.run(main())
