"""Whether the configured dfdaemon is there, for the status page: a TCP connection to its proxy
port, with a timeout, its answer kept a few seconds so that however often the page is loaded
the dfdaemon sees at most one probe per interval."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable

from shim.status import DfdaemonHealth

PROBE_TIMEOUT = 1.0
# Seconds a probe's answer is shown before the dfdaemon is probed again.
PROBE_INTERVAL = 5.0


class DfdaemonProbe:
    def __init__(
        self,
        address: tuple[str, int],
        *,
        timeout: float = PROBE_TIMEOUT,
        interval: float = PROBE_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.address = address
        self._timeout = timeout
        self._interval = interval
        self._clock = clock
        self._last: DfdaemonHealth | None = None
        self._last_at = 0.0
        # Pages loaded while a probe runs wait for its answer instead of probing again.
        self._lock = asyncio.Lock()

    async def health(self) -> DfdaemonHealth:
        async with self._lock:
            if self._last is None or self._clock() - self._last_at >= self._interval:
                self._last = await self._probe()
                self._last_at = self._clock()
            return self._last

    async def _probe(self) -> DfdaemonHealth:
        host, port = self.address
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._timeout):
                _, writer = await asyncio.open_connection(host, port)
        except TimeoutError:
            detail, reachable = f"no connection within {self._timeout:g} s", False
        except OSError as error:
            # asyncio's message repeats the address; the errno says what happened.
            reason = os.strerror(error.errno) if error.errno else str(error)
            detail, reachable = f"cannot connect: {reason}", False
        else:
            elapsed = (time.monotonic() - started) * 1000
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            detail, reachable = f"its proxy port accepts connections ({elapsed:.1f} ms)", True
        return DfdaemonHealth(shown, reachable, detail, time.time())
