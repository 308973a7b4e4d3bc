"""Dragonfly's manager on loopback, with the MariaDB and Redis it needs, for preheat tests.

`start_manager` runs the manager of d7y.io/dragonfly/v2 v2.5.1 (`cmd/manager`, built by
`scripts/build-dragonfly` next to the scheduler) on a private MariaDB (`start_mariadb`) and a
private Redis (`start_redis`): Debian's `mariadb-server` and `redis-server`, run as this test's
own processes (own data directory, socket and port on 127.0.0.1, stopped by PID), never the
host's services. The manager seeds a personal access token from `DRAGONFLY_PAT` at start, as
it offers for automation. `scheduler_config` is what a scheduler needs to register with the
manager and take its jobs from Redis; `wait_announced` waits until dfdaemons registered with it.

Typical use::

    with (
        start_mariadb(tmp / "db") as db,
        start_redis(tmp / "redis") as redis,
        start_manager(tmp / "manager", db=db, redis=redis) as manager,
        start_scheduler(tmp / "sched", config=scheduler_config(manager)) as scheduler,
    ):
        ...  # POST {manager.url}/oapi/v1/jobs with `Authorization: Bearer {manager.token}`
"""

from __future__ import annotations

import getpass
import os
import secrets
import shutil
import subprocess
import time
import urllib.error
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.dragonfly import (
    BUILD_SCRIPT,
    HOST,
    SCHEDULER_VERSION,
    Dfdaemon,
    DragonflyError,
    Scheduler,
    _accepts,
    _launch,
    _Process,
    _started,
    _wait_until,
    dragonfly_bin_dir,
    reported_version,
)
from tests.support.procs import direct_opener, free_port, require

MANAGER_VERSION = SCHEDULER_VERSION  # one release for both
MARIADB_USER = "dragonfly"
MARIADB_DATABASE = "manager"


def manager_binary() -> Path:
    """The manager that scripts/build-dragonfly built, beside the scheduler. Raises
    DragonflyError if it is missing or reports another version than MANAGER_VERSION."""
    binary = dragonfly_bin_dir() / "manager"
    build = f"Build it with `scripts/{BUILD_SCRIPT.name}` (manager {MANAGER_VERSION})."
    if not os.access(binary, os.X_OK):
        raise DragonflyError(f"no Dragonfly manager at {binary}. {build}")
    result = subprocess.run(
        [str(binary), "version"], capture_output=True, text=True, timeout=30, check=False
    )
    reported = reported_version("manager", result.stdout + result.stderr)
    if reported != MANAGER_VERSION:
        raise DragonflyError(
            f"{binary} reports {reported or 'no version'}, not {MANAGER_VERSION}. {build}"
        )
    return binary


def require_manager() -> None:
    """Skip the calling test module without the manager, MariaDB or Redis (fail it under
    SHIM_REQUIRE_DRAGONFLY)."""
    missing = [
        f"{program} (Debian package {package})"
        for program, package in (
            ("mariadbd", "mariadb-server"),
            ("mariadb-install-db", "mariadb-server"),
            ("redis-server", "redis-server"),
        )
        if _program(program) is None
    ]
    problem = f"missing: {', '.join(missing)}" if missing else None
    if problem is None:
        try:
            manager_binary()
        except DragonflyError as exc:
            problem = str(exc)
    require("SHIM_REQUIRE_DRAGONFLY", problem)


def _program(name: str) -> str | None:
    # Debian installs the daemons in /usr/sbin, which a user's PATH may not hold.
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")


@dataclass
class MariaDB(_Process):
    port: int = 0
    password: str = field(default="", repr=False)


def start_mariadb(workdir: Path, *, timeout: float = 60.0) -> MariaDB:
    """A private MariaDB on 127.0.0.1 with an empty database for the manager, and a user with
    a password (the manager requires one) allowed only on it."""
    workdir.mkdir(parents=True, exist_ok=True)
    datadir = workdir / "data"
    user = getpass.getuser()  # mariadbd runs as root only when told so
    small = ["--innodb-log-file-size=8M", "--innodb-buffer-pool-size=32M"]
    subprocess.run(
        [
            _program("mariadb-install-db") or "mariadb-install-db",
            "--no-defaults",
            f"--datadir={datadir}",
            f"--user={user}",
            "--auth-root-authentication-method=socket",
            "--skip-test-db",
            "--skip-name-resolve",
            *small,
        ],
        cwd=workdir,
        capture_output=True,
        check=True,
        timeout=120,
    )
    password = secrets.token_hex(16)
    init = workdir / "init.sql"
    init.write_text(
        f"CREATE DATABASE IF NOT EXISTS {MARIADB_DATABASE};\n"
        f"CREATE USER IF NOT EXISTS '{MARIADB_USER}'@'{HOST}' IDENTIFIED BY '{password}';\n"
        f"GRANT ALL ON {MARIADB_DATABASE}.* TO '{MARIADB_USER}'@'{HOST}';\n"
    )
    init.chmod(0o600)
    port = free_port()
    process, log = _launch(
        workdir,
        [
            _program("mariadbd") or "mariadbd",
            "--no-defaults",
            f"--datadir={datadir}",
            f"--socket={workdir / 'mysqld.sock'}",
            f"--pid-file={workdir / 'mysqld.pid'}",
            f"--port={port}",
            f"--bind-address={HOST}",
            f"--user={user}",
            "--skip-name-resolve",
            f"--init-file={init}",
            *small,
        ],
    )
    db = MariaDB("mariadb", workdir, process, log, port=port, password=password)
    return _started(db, timeout, lambda: "ready for connections" in db.output() and _accepts(port))


@dataclass
class Redis(_Process):
    port: int = 0

    @property
    def addr(self) -> str:
        return f"{HOST}:{self.port}"


def start_redis(workdir: Path, *, timeout: float = 30.0) -> Redis:
    """A private Redis on 127.0.0.1 that keeps nothing on disk."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [
        _program("redis-server") or "redis-server",
        "--port", str(port),
        "--bind", HOST,
        "--dir", str(workdir),
        "--save", "",
        "--appendonly", "no",
    ]  # fmt: skip
    process, log = _launch(workdir, cmd)
    redis = Redis("redis", workdir, process, log, port=port)
    ready = "Ready to accept connections"
    return _started(redis, timeout, lambda: ready in redis.output() and _accepts(port))


@dataclass
class Manager(_Process):
    rest_port: int = 0
    grpc_port: int = 0
    redis: Redis | None = field(default=None, repr=False)
    token: str = field(default="", repr=False)  # a personal access token with the job scope

    @property
    def url(self) -> str:
        """Its REST API (the open API under /oapi/v1)."""
        return f"http://{HOST}:{self.rest_port}"

    @property
    def grpc_addr(self) -> str:
        return f"{HOST}:{self.grpc_port}"


def start_manager(workdir: Path, *, db: MariaDB, redis: Redis, timeout: float = 60.0) -> Manager:
    """The manager on `db` and `redis`, its REST API and gRPC on free loopback ports, with a
    fresh personal access token (`Manager.token`); waits until /healthy answers."""
    workdir.mkdir(parents=True, exist_ok=True)
    rest_port, grpc_port = free_port(), free_port()
    config = {
        "server": {
            "name": "shim-manager",
            "logDir": str(workdir / "log"),
            "pluginDir": str(workdir / "plugins"),
            "cacheDir": str(workdir / "cache"),
            "grpc": {
                "advertiseIP": HOST,
                "listenIP": HOST,
                "port": {"start": grpc_port, "end": grpc_port},
            },
            "rest": {"addr": f"{HOST}:{rest_port}"},
        },
        "auth": {
            "jwt": {
                "realm": "shim-test",
                "key": secrets.token_hex(16),
                "timeout": "1h",
                "maxRefresh": "1h",
            }
        },
        "database": {
            "type": "mariadb",
            "mysql": {
                "user": MARIADB_USER,
                "password": db.password,
                "host": HOST,
                "port": db.port,
                "dbname": MARIADB_DATABASE,
                "migrate": True,
            },
            "redis": {"addrs": [redis.addr]},
        },
        "metrics": {"enable": False},
    }
    config_path = workdir / "manager.yaml"
    config_path.write_text(yaml.safe_dump(config))
    config_path.chmod(0o600)
    token = secrets.token_hex(16)
    process, log = _launch(
        workdir,
        [str(manager_binary()), "--config", str(config_path), "--console"],
        env={"DRAGONFLY_PAT": token},
    )
    manager = Manager(
        "manager",
        workdir,
        process,
        log,
        rest_port=rest_port,
        grpc_port=grpc_port,
        redis=redis,
        token=token,
    )
    return _started(manager, timeout, lambda: _healthy(manager.url))


def _healthy(url: str) -> bool:
    try:
        with direct_opener.open(f"{url}/healthy", timeout=1) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def scheduler_config(manager: Manager) -> dict[str, Any]:
    """Sections of a scheduler's config (see `start_scheduler`'s `config`) that register it
    with `manager`, in the default scheduler cluster 1, and take jobs from the manager's Redis
    with a few workers (the defaults start 2000)."""
    assert manager.redis is not None
    return {
        "manager": {
            "addr": manager.grpc_addr,
            "schedulerClusterID": 1,
            "keepAlive": {"interval": "5s"},
        },
        "database": {"redis": {"addrs": [manager.redis.addr]}},
        "job": {
            "enable": True,
            "globalWorkerNum": 1,
            "schedulerWorkerNum": 1,
            "localWorkerNum": 4,
        },
    }


def wait_announced(scheduler: Scheduler, daemons: Sequence[Dfdaemon], timeout: float = 30) -> None:
    """Wait until every dfdaemon announced its host to `scheduler` (a seed peer's host ID ends
    in "-seed"): only then does a preheat include it."""

    def announced() -> bool:
        lines = [line for line in scheduler.output().splitlines() if "announce new host" in line]
        return all(
            any(
                f'"hostID": "{HOST}-{daemon.hostname}{suffix}"' in line
                for line in lines
                for suffix in ("", "-seed")
            )
            for daemon in daemons
        )

    _wait_until(scheduler, time.monotonic() + timeout, timeout, announced)
