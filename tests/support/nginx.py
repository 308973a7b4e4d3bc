"""Debian's nginx (`apt-get install nginx`) serving a directory of files on loopback: a real
HTTP server nobody on the team wrote, to measure shim's HTTP semantics against.

`start_nginx` writes a config into a prefix directory of its own (pid file, logs and nginx's
temporary directories all there: nothing is written outside it) and runs nginx in the
foreground as one process (`daemon off; master_process off;`: no workers to leave behind,
no switch to another user that could not read a test's temporary directory), `etag on`.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.procs import Stoppable, free_port, terminate, wait_started
from tests.support.servers import ServerStartError

_TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def nginx_config(root: Path, prefix: Path, port: int, tls: tuple[Path, Path] | None = None) -> str:
    """An nginx.conf serving the files under ``root`` on 127.0.0.1:``port`` (over TLS with
    ``tls``: certificate and key files), every path nginx writes under ``prefix``."""
    temp_paths = "\n".join(f"    {name}_temp_path {prefix / name};" for name in _TEMP_DIRS)
    listen = f"127.0.0.1:{port}"
    if tls is not None:
        listen += f" ssl;\n        ssl_certificate {tls[0]};\n        ssl_certificate_key {tls[1]}"
    return f"""\
worker_processes 1;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} warn;
events {{ worker_connections 64; }}
http {{
    access_log {prefix / "access.log"};
{temp_paths}
    default_type application/octet-stream;
    sendfile on;
    server {{
        listen {listen};
        root {root};
        etag on;
    }}
}}
"""


@dataclass
class NginxServer(Stoppable):
    """A running nginx; `stop()` (or leaving the `with` block) ends it."""

    port: int
    root: Path
    prefix: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        """nginx's error log so far."""
        log = self.prefix / "error.log"
        return log.read_text(errors="replace") if log.exists() else ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (nginx's fast shutdown) by PID and wait; SIGKILL if it does not exit."""
        terminate(self.process, timeout)


def start_nginx(
    root: Path, prefix: Path, *, tls: tuple[Path, Path] | None = None, timeout: float = 10.0
) -> NginxServer:
    """Start nginx serving the files under ``root`` (over TLS with ``tls``: certificate and
    key files), its config, logs and temporary files under ``prefix``, and wait until it
    accepts connections on a free loopback port."""
    binary = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    if binary is None:
        raise ServerStartError("no nginx: `apt-get install nginx` (Debian's, as .ci/run does)")
    prefix.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = prefix / "nginx.conf"
    config.write_text(nginx_config(root, prefix, port, tls))
    cmd = [binary, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(config)]
    cmd += ["-g", "daemon off; master_process off;"]
    with contextlib.ExitStack() as on_failure:
        process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        server = NginxServer(port, root, prefix, process)
        on_failure.callback(server.stop)
        _wait_listening(server, timeout)
        on_failure.pop_all()
    return server


def _wait_listening(server: NginxServer, timeout: float) -> None:
    def accepts() -> bool | None:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", server.port)):
            return True
        return None

    def failed(what: str) -> ServerStartError:
        output = server.output().strip() or "(none)"
        return ServerStartError(f"nginx {what}.\nError log:\n{output}")

    wait_started(server.process, accepts, timeout, failed)
