"""Run the real ``shim run`` in a subprocess, as users do, for integration tests and benchmarks."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from tests.support.procs import Stoppable, direct_opener, free_port, terminate
from tests.support.servers import REPO_ROOT, ServerStartError


def shim_command(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``shim ARGS`` (this tree's) run to its end as a user runs it; its output as text."""
    return subprocess.run(
        [sys.executable, "-m", "shim", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
        check=False,
    )


@dataclass
class ShimProcess(Stoppable):
    process: subprocess.Popen[bytes] = field(repr=False)
    proxy_port: int
    admin_port: int
    workdir: Path
    _log: IO[bytes] = field(repr=False)

    @property
    def proxy(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def cache_dir(self) -> Path:
        return self.workdir / "cache"

    @property
    def ca_cert(self) -> Path:
        return self.workdir / "conf" / "mitmproxy-ca-cert.pem"

    def output(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def metrics(self) -> dict[str, float]:
        """The Prometheus samples of /metrics, by name with labels."""
        with direct_opener.open(f"{self.admin}/metrics", timeout=5) as response:
            text = response.read().decode()
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM by PID and wait; returns the exit code."""
        code = terminate(self.process, timeout)
        self._log.close()
        return code


def s3_bucket_config(
    bucket: str, endpoint: str, access_key: str = "S3RVER", secret_key: str = "S3RVER"
) -> dict[str, Any]:
    return {
        "provider": "s3",
        "bucket": bucket,
        "endpoint": endpoint,
        "credentials": {
            "source": "static",
            "access_key_id": access_key,
            "secret_access_key": secret_key,
        },
    }


def start_shim(
    workdir: Path,
    config: dict[str, Any],
    *,
    env: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> ShimProcess:
    """Start ``python -m shim run`` with ``config`` (listeners, cache and CA dirs filled in)."""
    workdir.mkdir(parents=True, exist_ok=True)
    proxy_port, admin_port = free_port(), free_port()
    full = {
        "listen": f"127.0.0.1:{proxy_port}",
        "admin": f"127.0.0.1:{admin_port}",
        "confdir": str(workdir / "conf"),
        **config,
        "cache": {"dir": str(workdir / "cache"), **config.get("cache", {})},
    }
    config_path = workdir / "shim.yaml"
    config_path.write_text(yaml.safe_dump(full))
    log = tempfile.TemporaryFile()  # noqa: SIM115 (kept open for the process's life)
    process = subprocess.Popen(
        [sys.executable, "-m", "shim", "run", "--config", str(config_path)],
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    shim = ShimProcess(process, proxy_port, admin_port, workdir, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = shim.output()
            shim.stop()
            raise ServerStartError(f"shim exited with {process.returncode}:\n{output}")
        try:
            with direct_opener.open(f"{shim.admin}/healthz", timeout=1) as response:
                if response.status == 200:
                    return shim
        except OSError:
            time.sleep(0.1)
    output = shim.output()
    shim.stop()
    raise ServerStartError(f"shim not healthy after {timeout}s:\n{output}")
