"""Small pieces every test helper that runs something shares."""

from __future__ import annotations

import socket
import urllib.request
from typing import Self

# Straight to loopback, whatever *_proxy variables the environment holds.
direct_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that the OS says is free now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class Stoppable:
    """``with`` support for a helper that owns a process or a resource: leaving stops it."""

    def stop(self) -> object:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
