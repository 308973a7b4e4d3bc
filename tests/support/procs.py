"""Small pieces every test helper that runs something shares."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from typing import Self

import pytest

# Straight to loopback, whatever *_proxy variables the environment holds.
direct_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# Ports already handed out by this process: the OS may offer a port again as soon as its probe
# socket closes, before the server it was meant for binds it.
_HANDED_OUT: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that the OS says is free now, and that no earlier call returned
    (two servers of one test never get the same port)."""
    while True:
        with socket.socket() as sock:
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


class Stoppable:
    """``with`` support for a helper that owns a process or a resource: leaving stops it."""

    def stop(self) -> object:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def terminate(process: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM by PID and wait; SIGKILL if it has not exited after ``timeout`` seconds.
    Returns the exit code (negative: the signal that ended it). Idempotent."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode


def wait_started[T](
    process: subprocess.Popen[bytes],
    probe: Callable[[], T | None],
    timeout: float,
    failed: Callable[[str], Exception],
) -> T:
    """Poll ``probe()`` until it gives a value (the port a server printed, a connection
    accepted...) and return it. Raise ``failed(what)`` if the process exits or ``timeout``
    seconds pass first; ``what`` says which ("exited with code 1")."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found is not None:
            return found
        if process.poll() is not None:
            what = f"exited with code {process.returncode}"
        elif time.monotonic() > deadline:
            what = f"was not ready after {timeout:.0f} s"
        else:
            time.sleep(0.02)
            continue
        raise failed(what)


def require(env_var: str, missing: str | None) -> None:
    """For a test module that needs a component: go on when ``missing`` is None. Else fail it when
    ``env_var`` is set (non-empty, not "0"), as `make test` and CI set it, or skip it (plain
    `pytest`, `make test SHIM_REQUIRE=0`)."""
    if missing is None:
        return
    required = os.environ.get(env_var, "")
    if required not in ("", "0"):
        pytest.fail(
            f"{missing} [{env_var}={required}: required; to skip instead, "
            f"`make test SHIM_REQUIRE=0` or {env_var}=0]",
            pytrace=False,
        )
    pytest.skip(
        f"{missing} [a failure under {env_var}=1, as in `make test`]", allow_module_level=True
    )
