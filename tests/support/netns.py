"""A network namespace with a veth link to this one, for tests of the transparent mode.

The namespace plays a model-server host with no proxy settings: its default route points at
this namespace, where an iptables REDIRECT sends its port-80 traffic to the shim. Needs root
(ip, iptables); everything made here is removed on exit.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.procs import Stoppable, require

_NETNS_ETC = Path("/etc/netns")


def can_make_namespaces() -> str | None:
    """None if this process can build the namespace, else why not."""
    if os.geteuid() != 0:
        return "needs root (ip netns, iptables)"
    missing = [tool for tool in ("ip", "iptables") if shutil.which(tool) is None]
    return f"missing {', '.join(missing)} (apt-get install iproute2 iptables)" if missing else None


def require_netns() -> None:
    """Skip the calling test module where namespaces cannot be made (fail it under
    SHIM_REQUIRE_NETNS)."""
    reason = can_make_namespaces()
    require("SHIM_REQUIRE_NETNS", f"the netns tests {reason}" if reason else None)


def _run(*args: str) -> None:
    result = subprocess.run(args, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {result.stderr.strip()}")


@dataclass
class NetnsHost(Stoppable):
    """A namespace ``name`` at ``address``, reaching this namespace at ``gateway``."""

    name: str
    address: str
    gateway: str
    _undo: list[tuple[str, ...]] = field(default_factory=list, repr=False)
    _hosts_dir: Path | None = field(default=None, repr=False)

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def redirect(self, port: int, to_port: int) -> None:
        """Send the namespace's TCP traffic for ``port`` to ``to_port`` here (REDIRECT)."""
        rule = ("-i", self._host_veth, "-p", "tcp", "--dport", str(port))
        _run("iptables", "-t", "nat", "-A", "PREROUTING", *rule, "-j", "REDIRECT",
             "--to-ports", str(to_port))  # fmt: skip
        self._undo.append(("iptables", "-t", "nat", "-D", "PREROUTING", *rule, "-j",
                           "REDIRECT", "--to-ports", str(to_port)))  # fmt: skip

    def resolve(self, names: dict[str, str]) -> None:
        """Name -> address entries for the namespace (``ip netns exec`` mounts this hosts file)."""
        self._hosts_dir = _NETNS_ETC / self.name
        self._hosts_dir.mkdir(parents=True, exist_ok=True)
        # The machine's own name too: a JVM looks it up at start and stalls if it cannot.
        lines = [f"127.0.0.1 localhost {socket.gethostname()}"]
        lines += [f"{ip} {name}" for name, ip in names.items()]
        (self._hosts_dir / "hosts").write_text("\n".join(lines) + "\n")

    @property
    def _host_veth(self) -> str:
        return f"vh{self.name[-8:]}"

    def stop(self) -> None:
        for command in reversed(self._undo):
            subprocess.run(command, capture_output=True, check=False)
        self._undo.clear()
        subprocess.run(["ip", "link", "del", self._host_veth], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)
        if self._hosts_dir is not None:
            shutil.rmtree(self._hosts_dir, ignore_errors=True)


def make_test_host() -> NetnsHost:
    """A fresh namespace on a /30 link from 10.231.0.0/16, picked at random."""
    suffix = secrets.token_hex(4)
    third, fourth = divmod(secrets.randbelow(16384) * 4, 256)
    gateway, address = f"10.231.{third}.{fourth + 1}", f"10.231.{third}.{fourth + 2}"
    host = NetnsHost(name=f"shimt{suffix}", address=address, gateway=gateway)
    inner = f"vn{suffix}"
    try:
        _run("ip", "netns", "add", host.name)
        _run("ip", "link", "add", host._host_veth, "type", "veth", "peer", "name", inner)
        _run("ip", "link", "set", inner, "netns", host.name)
        _run("ip", "addr", "add", f"{gateway}/30", "dev", host._host_veth)
        _run("ip", "link", "set", host._host_veth, "up")
        inside = host.exec_prefix()
        _run(*inside, "ip", "addr", "add", f"{address}/30", "dev", inner)
        _run(*inside, "ip", "link", "set", inner, "up")
        _run(*inside, "ip", "link", "set", "lo", "up")
        _run(*inside, "ip", "route", "add", "default", "via", gateway)
    except BaseException:
        host.stop()
        raise
    return host
