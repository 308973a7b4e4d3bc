"""Real Dragonfly P2P components on loopback, for integration tests and benchmarks.

`start_scheduler` runs the Go scheduler (d7y.io/dragonfly/v2 v2.5.1) without a manager, from a
local dynconfig file; `start_dfdaemon` / `start_dfdaemons` run Rust dfdaemons (crate
dragonfly-client 1.5.10, the dfdaemon deployed today) that register with it. Both binaries come
from `scripts/build-dragonfly`, which caches them outside the repo (see `dragonfly_bin_dir`). The
Go dfdaemon (`dfget daemon`) cannot be built here with verified checksums: see that script.

Each process gets its own ports (free ones from the OS, all on 127.0.0.1), its own directories
under `workdir` and, for dfdaemons, its own `host.hostname`: the scheduler never pairs two peers
of one host (a host ID is "IP-hostname"), and two same-host dfdaemons with one hostname silently
both fetch from the origin. The scheduler's `backToSourceCount: 1` lets only the first peer of a
task fetch from the origin; later peers download the pieces from it.

What the origin sees: every peer first sends `GET` with `Range: bytes=0-0` (1 byte, to learn the
headers and size), the first peer then fetches each 4 MiB piece once with a `Range` request, and
later peers send nothing more. So "served once" means the body bytes, not the request count, and
an origin that ignores `Range` makes dfdaemon answer 200 with an empty body and
`X-Dragonfly-Error-Type: backend`.

Typical use::

    with start_scheduler(tmp / "sched") as scheduler, contextlib.ExitStack() as stack:
        a, b = (stack.enter_context(d) for d in
                start_dfdaemons(tmp, ["peer-a", "peer-b"], scheduler=scheduler))
        via_proxy(a.proxy_port, url)   # origin -> a
        via_proxy(b.proxy_port, url)   # a -> b: the origin only gets b's 1-byte probe
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from tests.support.procs import Stoppable, direct_opener, free_port, require, terminate

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-dragonfly"
BIN_DIR_ENV = "SHIM_DRAGONFLY_BIN_DIR"

SCHEDULER_VERSION = "v2.5.1"
DFDAEMON_VERSION = "1.5.10"
# Each binary's expected version and the argument that prints it. Checked before every start:
# task IDs, headers and config keys differ between releases.
_VERSIONS = {
    "scheduler": (SCHEDULER_VERSION, "version"),
    "dfdaemon": (DFDAEMON_VERSION, "--version"),
}

# Loopback only: every listener binds here and every peer advertises it.
HOST = "127.0.0.1"


class DragonflyError(RuntimeError):
    """A Dragonfly binary is missing or of another version, or a process did not come up; the
    message says which."""


def dragonfly_bin_dir() -> Path:
    """The directory of the `scheduler` and `dfdaemon` binaries that scripts/build-dragonfly built.

    `$SHIM_DRAGONFLY_BIN_DIR` if set, else `${XDG_CACHE_HOME:-~/.cache}/shim-ci/dragonfly/bin`.
    Raises DragonflyError naming the build script if either binary is missing or reports another
    version than SCHEDULER_VERSION / DFDAEMON_VERSION (`scheduler version`, `dfdaemon --version`).
    """
    configured = os.environ.get(BIN_DIR_ENV)
    if configured:
        bin_dir = Path(configured)
    else:
        cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        bin_dir = Path(cache) / "shim-ci" / "dragonfly" / "bin"
    build = (
        f"Build them with `{BUILD_SCRIPT.relative_to(REPO_ROOT)}` "
        f"(scheduler {SCHEDULER_VERSION}, dfdaemon {DFDAEMON_VERSION}; "
        f"`${BIN_DIR_ENV}` overrides the directory)."
    )
    missing = [name for name in _VERSIONS if not os.access(bin_dir / name, os.X_OK)]
    if missing:
        raise DragonflyError(
            f"Dragonfly binaries missing from {bin_dir}: {', '.join(missing)}. {build}"
        )
    wrong = [
        f"{name} reports {reported or 'no version'}, not {expected}"
        for name, (expected, _) in _VERSIONS.items()
        if (reported := _reported_version(bin_dir / name)) != expected
    ]
    if wrong:
        raise DragonflyError(f"Dragonfly binaries in {bin_dir}: {'; '.join(wrong)}. {build}")
    return bin_dir


def reported_version(name: str, output: str) -> str | None:
    """The version in what binary `name` printed when asked for it, as scripts/build-dragonfly
    reads it: the `GitVersion:` line of `scheduler version` or `manager version` ("v2.5.1"),
    the first x.y.z of `dfdaemon --version` ("dfdaemon 1.5.10 (hash, date)" gives "1.5.10")."""
    if name in ("scheduler", "manager"):
        match = re.search(r"^GitVersion:\s*(\S+)", output, re.MULTILINE)
    else:
        match = re.search(r"(?<![\w.])v?(\d+\.\d+\.\d+)(?![\w.])", output)
    return match.group(1) if match else None


def _reported_version(binary: Path) -> str | None:
    """Run `binary` asking for its version, once per file as it is now (a rebuild is asked anew)."""
    stat = binary.stat()
    return _ask_version(binary, stat.st_mtime_ns, stat.st_size)


@functools.cache
def _ask_version(binary: Path, _mtime_ns: int, _size: int) -> str | None:
    argument = _VERSIONS[binary.name][1]
    try:
        result = subprocess.run(
            [str(binary), argument],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DragonflyError(f"`{binary} {argument}` did not run: {exc}") from exc
    return reported_version(binary.name, result.stdout + result.stderr)


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that the OS says is free now (the dfdaemon's QUIC listener)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class _Process(Stoppable):
    """A started Dragonfly process: its log, its PID, and how to stop it."""

    name: str
    workdir: Path
    process: subprocess.Popen[bytes] = field(repr=False)
    # Unlinked temp file holding the process's stdout and stderr (its --console log).
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        """What the process logged so far (stdout and stderr). Empty after `stop()`."""
        if self._log is None:
            return ""
        fd = self._log.fileno()
        # pread leaves alone the file offset the process shares with us and writes at.
        return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM by PID and wait; SIGKILL if it has not exited after `timeout` s.

        Returns the exit code (negative: killed by that signal). Idempotent.
        """
        terminate(self.process, timeout)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.process.returncode


@dataclass
class Scheduler(_Process):
    """A running scheduler; `stop()` (or leaving the `with` block) ends it."""

    port: int = 0
    config_path: Path = field(default=Path(), repr=False)
    dynconfig_path: Path = field(default=Path(), repr=False)

    @property
    def addr(self) -> str:
        """host:port of its gRPC service, as dfdaemons dial it."""
        return f"{HOST}:{self.port}"


@dataclass
class Dfdaemon(_Process):
    """A running dfdaemon; `stop()` (or leaving the `with` block) ends it."""

    hostname: str = ""
    proxy_port: int = 0
    upload_port: int = 0
    storage_tcp_port: int = 0
    storage_quic_port: int = 0
    health_port: int = 0
    metrics_port: int = 0
    stats_port: int = 0
    config_path: Path = field(default=Path(), repr=False)

    @property
    def proxy_url(self) -> str:
        """The HTTP proxy to send absolute-form requests to, e.g. `curl -x`."""
        return f"http://{HOST}:{self.proxy_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{HOST}:{self.metrics_port}/metrics"

    @property
    def storage_dir(self) -> Path:
        return self.workdir / "storage"


def start_scheduler(
    workdir: Path,
    *,
    back_to_source_count: int = 1,
    config: Mapping[str, Any] | None = None,
    timeout: float = 30.0,
) -> Scheduler:
    """Start a scheduler (no manager, local dynconfig in `workdir`) and wait until it serves.

    `back_to_source_count` is how many peers of a task may fetch from the origin; with the
    default 1 every later peer downloads from earlier ones. `config` is merged over the
    generated scheduler.yaml (a section at a time).
    """
    bin_dir = dragonfly_bin_dir()
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    full: dict[str, Any] = {
        "server": {
            "advertiseIP": HOST,
            "advertisePort": port,
            "listenIP": HOST,
            "port": port,
            "host": "shim-scheduler",
            "logDir": str(workdir / "log"),
            "pluginDir": str(workdir / "plugins"),
        },
        "scheduler": {
            "algorithm": "default",
            "backToSourceCount": back_to_source_count,
        },
        "job": {"enable": False},
    }
    _merge(full, config or {})
    config_path = workdir / "scheduler.yaml"
    config_path.write_text(yaml.safe_dump(full))
    dynconfig_path = workdir / "dynconfig.yaml"
    cmd = [
        str(bin_dir / "scheduler"),
        "--config",
        str(config_path),
        "--dynconfig",
        str(dynconfig_path),
        "--console",
    ]
    process, log = _launch(workdir, cmd)
    scheduler = Scheduler(
        name="scheduler",
        workdir=workdir,
        process=process,
        _log=log,
        port=port,
        config_path=config_path,
        dynconfig_path=dynconfig_path,
    )
    return _started(
        scheduler, timeout, lambda: "started grpc server" in scheduler.output() and _accepts(port)
    )


def start_dfdaemon(
    workdir: Path,
    *,
    name: str,
    scheduler: Scheduler | None,
    proxy_rules: Sequence[Mapping[str, Any]] | None = None,
    config: Mapping[str, Any] | None = None,
    log_level: str = "info",
    timeout: float = 60.0,
) -> Dfdaemon:
    """Start a dfdaemon named `name` (its `host.hostname`) in `workdir` and wait until it serves.

    `scheduler` is the scheduler it registers with. `None` points it at a port where nothing
    listens: dfdaemon 1.5 then exits at once ("available schedulers not found"), so this raises
    DragonflyError; it exists to test that failure. `proxy_rules` replaces the default
    `[{"regex": ".*"}]` (every GET through P2P); a rule is `{"regex", "useTLS", "redirect",
    "filteredQueryParams"}`, its regex matched against the URL without its query. `config` is
    merged over the generated dfdaemon.yaml (a section at a time). Start-up takes about 3.5 s
    (the first host announcement samples CPU, network and disk): to start several, use
    `start_dfdaemons`, which waits for them together.
    """
    daemon = _launch_dfdaemon(
        workdir,
        name=name,
        scheduler=scheduler,
        proxy_rules=proxy_rules,
        config=config,
        log_level=log_level,
    )
    with contextlib.ExitStack() as on_failure:
        on_failure.callback(daemon.stop)
        _wait_dfdaemon(daemon, time.monotonic() + timeout, timeout)
        on_failure.pop_all()
    return daemon


def start_dfdaemons(
    workdir: Path,
    names: Sequence[str],
    *,
    scheduler: Scheduler | None,
    proxy_rules: Sequence[Mapping[str, Any]] | None = None,
    config: Mapping[str, Any] | None = None,
    log_level: str = "info",
    timeout: float = 60.0,
) -> list[Dfdaemon]:
    """Start one dfdaemon per name, each in `workdir / name`, and wait for all of them at once.

    Same arguments as `start_dfdaemon`. On failure every one of them is stopped. The caller
    stops them (e.g. `contextlib.ExitStack.enter_context` on each).
    """
    if len(set(names)) != len(names):
        raise ValueError(
            f"dfdaemon names must differ (the scheduler pairs only distinct hosts): {names}"
        )
    with contextlib.ExitStack() as on_failure:
        daemons: list[Dfdaemon] = []
        for name in names:
            daemon = _launch_dfdaemon(
                workdir / name,
                name=name,
                scheduler=scheduler,
                proxy_rules=proxy_rules,
                config=config,
                log_level=log_level,
            )
            on_failure.callback(daemon.stop)
            daemons.append(daemon)
        deadline = time.monotonic() + timeout
        for daemon in daemons:
            _wait_dfdaemon(daemon, deadline, timeout)
        on_failure.pop_all()
    return daemons


def _launch_dfdaemon(
    workdir: Path,
    *,
    name: str,
    scheduler: Scheduler | None,
    proxy_rules: Sequence[Mapping[str, Any]] | None,
    config: Mapping[str, Any] | None,
    log_level: str,
) -> Dfdaemon:
    """Write the config of a dfdaemon and start it, without waiting for it."""
    bin_dir = dragonfly_bin_dir()
    if not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", name):
        raise ValueError(f"dfdaemon name must be a lowercase DNS label: {name!r}")
    workdir.mkdir(parents=True, exist_ok=True)
    ports = {
        "proxy": free_port(),
        "upload": free_port(),
        "storage_tcp": free_port(),
        "storage_quic": free_udp_port(),
        "health": free_port(),
        "metrics": free_port(),
        "stats": free_port(),
    }
    full: dict[str, Any] = {
        "host": {"hostname": name, "ip": HOST},
        "server": {
            "pluginDir": str(workdir / "plugins"),
            "cacheDir": str(workdir / "cache"),
        },
        "download": {"server": {"socketPath": str(workdir / "run" / "dfdaemon.sock")}},
        "upload": {"server": {"ip": HOST, "port": ports["upload"]}},
        "storage": {
            "server": {
                "ip": HOST,
                "tcpPort": ports["storage_tcp"],
                "quicPort": ports["storage_quic"],
            },
            "dir": str(workdir / "storage"),
        },
        "proxy": {
            "server": {"ip": HOST, "port": ports["proxy"]},
            "rules": [dict(rule) for rule in proxy_rules]
            if proxy_rules is not None
            else [{"regex": ".*"}],
        },
        "health": {"server": {"ip": HOST, "port": ports["health"]}},
        "metrics": {"server": {"ip": HOST, "port": ports["metrics"]}},
        "stats": {"server": {"ip": HOST, "port": ports["stats"]}},
    }
    _merge(full, config or {})
    config_path = workdir / "dfdaemon.yaml"
    config_path.write_text(yaml.safe_dump(full))
    scheduler_addr = scheduler.addr if scheduler is not None else f"{HOST}:{free_port()}"
    dynconfig_path = workdir / "dynconfig.yaml"
    dynconfig_path.write_text(yaml.safe_dump({"scheduler": {"addrs": [scheduler_addr]}}))
    cmd = [
        str(bin_dir / "dfdaemon"),
        "--config",
        str(config_path),
        "--dynconfig",
        str(dynconfig_path),
        "--log-dir",
        str(workdir / "log"),
        "--log-level",
        log_level,
        "--console",
    ]
    process, log = _launch(workdir, cmd)
    return Dfdaemon(
        name=name,
        workdir=workdir,
        process=process,
        _log=log,
        hostname=name,
        proxy_port=ports["proxy"],
        upload_port=ports["upload"],
        storage_tcp_port=ports["storage_tcp"],
        storage_quic_port=ports["storage_quic"],
        health_port=ports["health"],
        metrics_port=ports["metrics"],
        stats_port=ports["stats"],
        config_path=config_path,
    )


def _wait_dfdaemon(daemon: Dfdaemon, deadline: float, timeout: float) -> None:
    _wait_until(
        daemon,
        deadline,
        timeout,
        lambda: _healthy(daemon.health_port) and _accepts(daemon.proxy_port),
    )


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> None:
    """Merge `extra` into `base`, recursing into sections that are mappings on both sides."""
    for key, value in extra.items():
        current = base.get(key)
        if isinstance(current, dict) and isinstance(value, Mapping):
            _merge(current, value)
        else:
            base[key] = value


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def _healthy(port: int) -> bool:
    try:
        with direct_opener.open(f"http://{HOST}:{port}/healthy", timeout=1) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _launch(
    workdir: Path, cmd: Sequence[str], env: Mapping[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
    """Start `cmd` in `workdir`, its output in an unlinked temp file (for the `_Process` that
    owns it, which closes it on stop()); the caller waits."""
    log = tempfile.TemporaryFile()  # noqa: SIM115 (owned by the process object)
    try:
        process = subprocess.Popen(
            cmd,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    except BaseException:
        log.close()
        raise
    return process, log


def _started[P: _Process](proc: P, timeout: float, ready: Callable[[], bool]) -> P:
    """`proc` once `ready()`; stopped, and DragonflyError with its log, if it exits or is not
    ready after `timeout` s first."""
    try:
        _wait_until(proc, time.monotonic() + timeout, timeout, ready)
    except BaseException:
        proc.stop()
        raise
    return proc


def _wait_until(proc: _Process, deadline: float, timeout: float, ready: Callable[[], bool]) -> None:
    """Poll `ready()` until true; raise DragonflyError with the process's log if the process
    exits or the monotonic clock passes `deadline` (`timeout` s after the start) first."""
    while True:
        if proc.process.poll() is not None:
            what = f"exited with code {proc.process.returncode}"
        elif ready():
            return
        elif time.monotonic() > deadline:
            what = f"was not ready after {timeout:.0f} s"
        else:
            time.sleep(0.05)
            continue
        raise DragonflyError(
            f"{proc.name} (pid {proc.pid}, workdir {proc.workdir}) {what}.\n"
            f"Output:\n{proc.output().strip() or '(none)'}"
        )


def require_dragonfly() -> None:
    """Skip the calling test module without the binaries of the expected versions (fail it
    under SHIM_REQUIRE_DRAGONFLY)."""
    missing = None
    try:
        dragonfly_bin_dir()
    except DragonflyError as exc:
        missing = str(exc)
    require("SHIM_REQUIRE_DRAGONFLY", missing)
