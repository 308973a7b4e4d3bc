"""deploy/netinit/shim-redirect, the transparent shape's iptables redirect, run for real with the
environment the chart gives its init container, in a network namespace this test makes: which
connections reach shim's listener and which their destination, by UID, address family,
destination, port; that a second run leaves the same rules; and that a value that could smuggle
a rule into the restore file is refused before anything is installed.

Everything happens inside the namespace (its own loopback and a veth pair with documentation
addresses, both ends inside): no packet leaves it.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.netns import require_netns
from tests.support.procs import terminate

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "deploy" / "netinit" / "shim-redirect"
SHIM_UID = 10001
OTHER_UID = 65534  # nobody: a model server's process

# The environment the chart gives the init container in its transparent-exclusions case
# (tests/test_deploy.py checks the rendered one is this): ports 80, 443, 9000 and 8000:8100
# redirected to 8792, port 8081 and two CIDRs excluded, IPv6 on.
RENDERED_ENV = {
    "SHIM_REDIRECT_TO_PORT": "8792",
    "SHIM_REDIRECT_PORTS": "80,443,9000,8000:8100",
    "SHIM_REDIRECT_EXEMPT_UID": str(SHIM_UID),
    "SHIM_REDIRECT_EXCLUDE_CIDRS": "10.96.0.0/12,fd00:10:96::/112",
    "SHIM_REDIRECT_EXCLUDE_PORTS": "8081",
    "SHIM_REDIRECT_IPV6": "true",
}

# One process in the namespace answers each connection with who it is: "shim" on shim's
# transparent port (loopback, both families), "origin" on the destination ports.
LISTENER = r"""
import selectors, socket, sys
sel = selectors.DefaultSelector()
def listen(family, host, port, label):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((host, port)); s.listen(16); sel.register(s, selectors.EVENT_READ, label)
listen(socket.AF_INET, "127.0.0.1", 8792, b"shim")
listen(socket.AF_INET6, "::1", 8792, b"shim")
for port in (80, 8050, 8081):
    listen(socket.AF_INET, "0.0.0.0", port, b"origin")
    listen(socket.AF_INET6, "::", port, b"origin")
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        conn, _ = key.fileobj.accept()
        conn.sendall(key.data); conn.close()
"""

# The client runs as another UID, which cannot read a Python under /root (pyenv, the venv):
# the system's Python is enough for a socket.
CLIENT_PYTHON = "/usr/bin/python3"
CLIENT = r"""
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as s:
    print(s.recv(16).decode())
"""


class Namespace:
    def __init__(self) -> None:
        self.name = f"shimr{secrets.token_hex(4)}"

    def run(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )

    def must(self, *args: str) -> str:
        result = self.run(*args)
        assert result.returncode == 0, (args, result.stderr)
        return result.stdout

    def redirect(self, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return self.run(str(SCRIPT), env={"PATH": os.environ["PATH"], **env})

    def answer(self, uid: int, host: str, port: int) -> str:
        """Who answers a connection from ``uid`` to host:port: shim or the destination."""
        out = self.must(
            "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
            CLIENT_PYTHON, "-c", CLIENT, host, str(port),
        )  # fmt: skip
        return out.strip()

    def nat_rules(self, tool: str) -> list[str]:
        return [line for line in self.must(tool, "-t", "nat", "-S").splitlines() if line]


@pytest.fixture
def namespace() -> Iterator[Namespace]:
    require_netns()
    ns = Namespace()
    subprocess.run(["ip", "netns", "add", ns.name], check=True)
    listener = None
    try:
        ns.must("ip", "link", "set", "lo", "up")
        # A link of its own (a veth pair with both ends inside: no dummy module needed).
        ns.must("ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1")
        for link in ("d0", "d1"):
            ns.must("ip", "link", "set", link, "up")
        # Destinations: documentation addresses, and one address in each excluded CIDR.
        for address in ("192.0.2.1/24", "10.96.0.1/12"):
            ns.must("ip", "addr", "add", address, "dev", "d0")
        for address in ("2001:db8::1/64", "fd00:10:96::1/112"):
            ns.must("ip", "-6", "addr", "add", address, "dev", "d0", "nodad")
        listener = subprocess.Popen(
            ["ip", "netns", "exec", ns.name, sys.executable, "-c", LISTENER],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert listener.stdout is not None
        assert listener.stdout.readline() == b"ready\n"
        yield ns
    finally:
        if listener is not None:
            terminate(listener, timeout=5)
        subprocess.run(["ip", "netns", "del", ns.name], check=False)


@pytest.mark.parametrize("backend", ["iptables", "iptables-legacy"])
def test_redirect_catches_the_pod_but_not_shim_nor_the_exclusions(
    namespace: Namespace, backend: str
) -> None:
    env = {**RENDERED_ENV, "SHIM_REDIRECT_IPTABLES": backend}
    v4, v6 = {"iptables": ("iptables", "ip6tables"), "iptables-legacy": (
        "iptables-legacy", "ip6tables-legacy")}[backend]  # fmt: skip
    # Before: everyone reaches the destination.
    assert namespace.answer(OTHER_UID, "192.0.2.1", 80) == "origin"

    result = namespace.redirect(env)
    assert result.returncode == 0, result.stderr
    expected = {
        # The model server's connections, IPv4 and IPv6, listed ports and ranges: shim.
        (OTHER_UID, "192.0.2.1", 80): "shim",
        (OTHER_UID, "2001:db8::1", 80): "shim",
        (OTHER_UID, "192.0.2.1", 8050): "shim",
        # shim's own upstream connections: their destination.
        (SHIM_UID, "192.0.2.1", 80): "origin",
        (SHIM_UID, "2001:db8::1", 80): "origin",
        # Excluded CIDRs, an excluded port inside a redirected range, loopback: untouched.
        (OTHER_UID, "10.96.0.1", 80): "origin",
        (OTHER_UID, "fd00:10:96::1", 80): "origin",
        (OTHER_UID, "192.0.2.1", 8081): "origin",
        (OTHER_UID, "127.0.0.1", 80): "origin",
        (OTHER_UID, "::1", 80): "origin",
    }
    answers = {case: namespace.answer(*case) for case in expected}
    assert answers == expected

    # Everything is in the SHIM_REDIRECT chain, jumped to once from OUTPUT, per family.
    rules4, rules6 = namespace.nat_rules(v4), namespace.nat_rules(v6)
    for rules in (rules4, rules6):
        assert [r for r in rules if r.startswith("-A OUTPUT")] == [
            "-A OUTPUT -p tcp -j SHIM_REDIRECT"
        ]
        assert not [r for r in rules if r.startswith("-A PREROUTING")]
        assert all(r.startswith(("-P ", "-N SHIM_REDIRECT", "-A OUTPUT", "-A SHIM_REDIRECT"))
                   for r in rules), rules  # fmt: skip
    assert "-A SHIM_REDIRECT -d 10.96.0.0/12 -j RETURN" in rules4
    assert not any("fd00:10:96::/112" in r for r in rules4)
    assert "-A SHIM_REDIRECT -d fd00:10:96::/112 -j RETURN" in rules6

    # A restarted init container: the same rules, not twice as many.
    result = namespace.redirect(env)
    assert result.returncode == 0, result.stderr
    assert (namespace.nat_rules(v4), namespace.nat_rules(v6)) == (rules4, rules6)
    # After a change of values (a pod spec is immutable, but a re-run must not keep stale
    # rules): the chain is refilled, not appended to.
    result = namespace.redirect({**env, "SHIM_REDIRECT_EXCLUDE_PORTS": ""})
    assert result.returncode == 0, result.stderr
    assert namespace.answer(OTHER_UID, "192.0.2.1", 8081) == "shim"
    assert len(namespace.nat_rules(v4)) == len(rules4) - 1


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SHIM_REDIRECT_EXCLUDE_CIDRS", "10.0.0.0/8\n-I OUTPUT -j ACCEPT"),
        ("SHIM_REDIRECT_PORTS", "80 -j ACCEPT"),
        ("SHIM_REDIRECT_EXCLUDE_PORTS", "8081,"),
        ("SHIM_REDIRECT_EXEMPT_UID", "shim"),
        ("SHIM_REDIRECT_IPV6", "yes"),
        ("SHIM_REDIRECT_IPTABLES", "/tmp/iptables"),
    ],
)
def test_redirect_refuses_a_value_that_is_not_what_it_names(
    namespace: Namespace, name: str, value: str
) -> None:
    result = namespace.redirect({**RENDERED_ENV, name: value})
    assert result.returncode == 2, result
    assert f"shim-redirect: {name}" in result.stderr
    # Refused before anything was installed.
    assert not any("SHIM_REDIRECT" in rule for rule in namespace.nat_rules("iptables"))
    assert namespace.answer(OTHER_UID, "192.0.2.1", 80) == "origin"
