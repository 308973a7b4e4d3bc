"""Run a real, unmodified TorchServe (0.12.0) for integration tests.

TorchServe lives in its own venv outside the repo, made by ``scripts/install-torchserve``
(torch is a multi-GB CUDA build the test venv does not carry). Everything that needs torch runs
as a subprocess of that venv: ``torch-model-archiver``, the TorchScript export, TorchServe.

Each `start_torchserve` is a fully isolated instance: ports from the OS for inference,
management, metrics and both gRPC APIs; its own model store, TMPDIR/TEMP (where the launcher keeps
its pid file and the worker sockets), LOG_LOCATION and METRICS_LOCATION; a config.properties with
token auth off and the model API on; ``--ncs --foreground``.

TorchServe downloads ``POST /models?url=...`` with plain ``java.net.HttpURLConnection``: no
timeouts (pass ``-Dsun.net.client.defaultReadTimeout=MS`` in ``java_tool_options``), proxies only
from JVM properties (``-Dhttp.proxyHost=...``), never for localhost/127.* unless
``-Dhttp.nonProxyHosts=`` (empty) is given.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import quote, urlencode

from tests.support.procs import Stoppable, require
from tests.support.servers import REPO_ROOT, ServerStartError

VENV_ENV_VAR = "SHIM_TORCHSERVE_VENV"
DEFAULT_VENV = Path.home() / ".cache" / "shim-ci" / "torchserve-venv"
INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install-torchserve"
PID_FILE_NAME = ".model_server.pid"
JAVA_MAIN_CLASS = "org.pytorch.serve.ModelServer"


class TorchServeMissing(RuntimeError):
    """The TorchServe venv is not there (or broken); the message says how to make it."""


class TorchServeError(RuntimeError):
    """A TorchServe helper failed; the message carries the output that explains why."""


def torchserve_venv() -> Path:
    """The venv holding torchserve, torch-model-archiver and torch.

    ``$SHIM_TORCHSERVE_VENV``, else ``~/.cache/shim-ci/torchserve-venv``. Raises
    `TorchServeMissing` naming ``scripts/install-torchserve`` if it lacks the executables.
    """
    venv = Path(os.environ.get(VENV_ENV_VAR) or DEFAULT_VENV)
    missing = [
        name
        for name in ("python", "torchserve", "torch-model-archiver")
        if not os.access(venv / "bin" / name, os.X_OK)
    ]
    if missing:
        raise TorchServeMissing(
            f"no TorchServe venv at {venv} (missing bin/{', bin/'.join(missing)}): "
            f"run {INSTALL_SCRIPT.relative_to(REPO_ROOT)} (about 5 GB: torch is a CUDA build), "
            f"or point ${VENV_ENV_VAR} at a venv with torchserve==0.12.0, "
            "torch-model-archiver==0.12.0, pyyaml and torch"
        )
    return venv


# --- model archives ---------------------------------------------------------------------------

ECHO_PREFIX = b"echo:"

_ECHO_HANDLER = '''\
"""Handler-only model: answers every request with b"echo:" + its body."""
import json


def _raw(item):
    value = item.get("data")
    if value is None:
        value = item.get("body")
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    # A JSON body TorchServe already decoded.
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def handle(data, context):
    if data is None:  # called once without data when the worker loads the model
        return None
    return [b"echo:" + _raw(item) for item in data]
'''

_LINEAR_HANDLER = '''\
"""Class handler for a TorchScript nn.Linear: each request body is a JSON list of floats."""
import json

import torch
from ts.torch_handler.base_handler import BaseHandler


class LinearHandler(BaseHandler):
    def preprocess(self, data):
        rows = []
        for item in data:
            value = item.get("data")
            if value is None:
                value = item.get("body")
            if isinstance(value, (bytes, bytearray)):
                value = json.loads(value)
            rows.append([float(x) for x in value])
        return torch.tensor(rows, dtype=torch.float32, device=self.device)

    def postprocess(self, data):
        return data.tolist()
'''

# Fixed weights chosen so the expected output is exact in float32.
_LINEAR_WEIGHT = ((1.0, 2.0, 3.0), (4.0, 5.0, 6.0))
_LINEAR_BIAS = (0.5, -1.0)
_LINEAR_INPUT = (1.0, 0.5, -2.0)

_EXPORT_LINEAR = """\
import sys, warnings
warnings.simplefilter("ignore")
import torch
weight, bias, out = {weight!r}, {bias!r}, sys.argv[1]
model = torch.nn.Linear(len(weight[0]), len(weight))
with torch.no_grad():
    model.weight.copy_(torch.tensor(weight))
    model.bias.copy_(torch.tensor(bias))
torch.jit.script(model.eval()).save(out)
"""


@dataclass(frozen=True)
class LinearExpectation:
    """What the linear model must predict: POST `request_body` answers JSON `output`."""

    input: tuple[float, ...]
    output: tuple[float, ...]

    @property
    def request_body(self) -> bytes:
        return json.dumps(list(self.input)).encode()

    def matches(self, response_body: bytes, tolerance: float = 1e-5) -> bool:
        try:
            got = json.loads(response_body)
        except ValueError:
            return False
        return (
            isinstance(got, list)
            and len(got) == len(self.output)
            and all(
                isinstance(g, int | float) and abs(g - e) <= tolerance
                for g, e in zip(got, self.output, strict=True)
            )
        )


def echo_reply(body: bytes) -> bytes:
    """What the echo model answers to a predict request with `body` (sent as bytes)."""
    return ECHO_PREFIX + body


def _run(cmd: Sequence[str], *, cwd: Path, what: str, timeout: float = 300.0) -> None:
    result = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise TorchServeError(
            f"{what} failed ({result.returncode}): {' '.join(cmd)}\n"
            f"{result.stdout}\n{result.stderr}".strip()
        )


def _archive(
    out_dir: Path,
    name: str,
    handler_source: str,
    handler_file: str,
    *,
    pt_script: str = "",
    extra_files: Sequence[Path] = (),
) -> Path:
    venv = torchserve_venv()
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"mar-{name}-") as build:
        build_dir = Path(build)
        (build_dir / handler_file).write_text(handler_source)
        cmd = [
            str(venv / "bin" / "torch-model-archiver"),
            "--model-name",
            name,
            "--version",
            "1.0",
            "--handler",
            handler_file,
            "--export-path",
            str(out_dir),
            "--force",
        ]
        if pt_script:
            (build_dir / "export.py").write_text(pt_script)
            _run(
                [str(venv / "bin" / "python"), "export.py", f"{name}.pt"],
                cwd=build_dir,
                what="TorchScript export",
            )
            cmd += ["--serialized-file", f"{name}.pt"]
        if extra_files:
            cmd += ["--extra-files", ",".join(str(path.resolve()) for path in extra_files)]
        _run(cmd, cwd=build_dir, what="torch-model-archiver")
    archive = out_dir / f"{name}.mar"
    if not archive.is_file():
        raise TorchServeError(f"torch-model-archiver made no {archive}")
    return archive


def build_echo_archive(
    out_dir: Path, *, name: str = "echo", extra_files: Sequence[Path] = ()
) -> Path:
    """Build ``out_dir/NAME.mar``: a handler-only model answering `echo_reply(body)`;
    ``extra_files`` ride along (weights, to make an archive of a realistic size)."""
    return _archive(out_dir, name, _ECHO_HANDLER, "echo_handler.py", extra_files=extra_files)


def build_linear_archive(out_dir: Path, *, name: str = "linear") -> tuple[Path, LinearExpectation]:
    """Build ``out_dir/NAME.mar``: a TorchScript ``nn.Linear(3, 2)`` with fixed weights served by
    a `BaseHandler` subclass. Returns the archive and an input with the output it must give."""
    script = _EXPORT_LINEAR.format(weight=_LINEAR_WEIGHT, bias=_LINEAR_BIAS)
    archive = _archive(out_dir, name, _LINEAR_HANDLER, "linear_handler.py", pt_script=script)
    output = tuple(
        sum(w * x for w, x in zip(row, _LINEAR_INPUT, strict=True)) + b
        for row, b in zip(_LINEAR_WEIGHT, _LINEAR_BIAS, strict=True)
    )
    return archive, LinearExpectation(_LINEAR_INPUT, output)


# --- processes --------------------------------------------------------------------------------


def _free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct free ports (all bound at once, so the OS cannot hand one out twice)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind((host, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state is [0], ppid [1]), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting to be reaped)."""
    stat = _proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _proc_stat(int(entry.name))) is not None:
            children.setdefault(int(stat[1]), []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _wait_gone(pids: Sequence[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(_alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@dataclass
class TorchServe(Stoppable):
    """A running TorchServe; `stop()` (or leaving the `with` block) ends java and its workers."""

    launcher: subprocess.Popen[bytes] = field(repr=False)
    workdir: Path
    api_host: str
    inference_port: int
    management_port: int
    metrics_port: int
    grpc_inference_port: int
    grpc_management_port: int
    _output: IO[bytes] = field(repr=False)
    java_pid: int | None = None
    # Worker processes seen under java, killed at stop if java left any behind.
    _seen_workers: set[int] = field(default_factory=set, repr=False)

    # -- layout

    @property
    def model_store(self) -> Path:
        return self.workdir / "model_store"

    @property
    def tmp_dir(self) -> Path:
        return self.workdir / "tmp"

    @property
    def log_dir(self) -> Path:
        return self.workdir / "logs"

    @property
    def config_path(self) -> Path:
        return self.workdir / "config.properties"

    @property
    def pid_file(self) -> Path:
        return self.tmp_dir / PID_FILE_NAME

    @property
    def inference_url(self) -> str:
        return f"http://{_host_for_url(self.api_host)}:{self.inference_port}"

    @property
    def management_url(self) -> str:
        return f"http://{_host_for_url(self.api_host)}:{self.management_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{_host_for_url(self.api_host)}:{self.metrics_port}"

    # -- API

    def _request(
        self,
        port: int,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float,
    ) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.api_host, port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=dict(headers or {}))
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def ping(self, *, timeout: float = 5.0) -> int:
        """Status of ``GET /ping`` (200 when healthy); raises OSError if nothing answers."""
        return self._request(self.inference_port, "GET", "/ping", timeout=timeout)[0]

    def register(
        self,
        url: str,
        *,
        timeout: float = 120.0,
        params: Mapping[str, str] | None = None,
    ) -> tuple[int, str]:
        """``POST /models?url=URL`` (query-encoded, so ``&`` in URL arrives as part of it) with
        optional extra `params` (``model_name``, ``initial_workers``, ``s3_sse_kms``...).

        TorchServe does not time out downloads itself: a silent origin hangs this call until
        `timeout` raises TimeoutError.
        """
        query = urlencode({"url": url, **(params or {})})
        status, body = self._request(
            self.management_port, "POST", f"/models?{query}", timeout=timeout
        )
        return status, body.decode(errors="replace")

    def scale(self, name: str, workers: int = 1, *, timeout: float = 180.0) -> tuple[int, str]:
        """``PUT /models/NAME?min_worker=N&synchronous=true``: returns once the workers are up."""
        query = urlencode({"min_worker": workers, "synchronous": "true"})
        status, body = self._request(
            self.management_port, "PUT", f"/models/{quote(name)}?{query}", timeout=timeout
        )
        self._note_workers()
        return status, body.decode(errors="replace")

    def describe(self, name: str, *, timeout: float = 30.0) -> tuple[int, str]:
        """``GET /models/NAME``: the model's versions and workers as JSON."""
        status, body = self._request(
            self.management_port, "GET", f"/models/{quote(name)}", timeout=timeout
        )
        return status, body.decode(errors="replace")

    def predict(
        self,
        name: str,
        data: bytes | str,
        *,
        content_type: str = "application/octet-stream",
        timeout: float = 60.0,
    ) -> tuple[int, bytes]:
        """``POST /predictions/NAME`` with `data` as the body; returns (status, raw body)."""
        body = data.encode() if isinstance(data, str) else data
        return self._request(
            self.inference_port,
            "POST",
            f"/predictions/{quote(name)}",
            body=body,
            headers={"Content-Type": content_type},
            timeout=timeout,
        )

    def unregister(self, name: str, *, timeout: float = 60.0) -> tuple[int, str]:
        """``DELETE /models/NAME`` (stops its workers)."""
        status, body = self._request(
            self.management_port, "DELETE", f"/models/{quote(name)}", timeout=timeout
        )
        return status, body.decode(errors="replace")

    # -- diagnostics

    def logs(self) -> str:
        """ts_log.log then model_log.log (the download errors' causes are only in ts_log)."""
        parts = []
        for name in ("ts_log.log", "model_log.log"):
            path = self.log_dir / name
            text = path.read_text(errors="replace") if path.is_file() else "(none)"
            parts.append(f"===== {name} =====\n{text}")
        return "\n".join(parts)

    def output(self) -> str:
        """What the launcher and java printed on stdout/stderr."""
        if self._output.closed:
            return ""
        fd = self._output.fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")

    # -- lifecycle

    def read_java_pid(self) -> int | None:
        """The java pid from the launcher's pid file, if it names a live TorchServe frontend."""
        try:
            pid = int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        return pid if JAVA_MAIN_CLASS.encode() in cmdline else None

    def _note_workers(self) -> None:
        if self.java_pid is not None and _alive(self.java_pid):
            self._seen_workers.update(_descendants(self.java_pid))

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the java pid (from the pid file), then the launcher; wait for both and the
        model workers; SIGKILL whatever is left after `timeout`. Idempotent."""
        java = self.java_pid or self.read_java_pid()
        if java is not None and _alive(java):
            self._seen_workers.update(_descendants(java))
            _signal(java, signal.SIGTERM)
            if not _wait_gone([java], timeout):
                _signal(java, signal.SIGKILL)
                _wait_gone([java], 5.0)
        if self.launcher.poll() is None:
            # In --foreground the launcher exits by itself once java has; this covers the rest.
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.launcher.wait(2.0 if java is not None else 0.0)
        if self.launcher.poll() is None:
            self.launcher.send_signal(signal.SIGTERM)
            try:
                self.launcher.wait(timeout)
            except subprocess.TimeoutExpired:
                self.launcher.kill()
                self.launcher.wait()
        # java stops its workers on SIGTERM; after a SIGKILL they could outlive it.
        leftovers = [pid for pid in self._seen_workers if _alive(pid)]
        if leftovers and not _wait_gone(leftovers, 5.0):
            for pid in leftovers:
                if _alive(pid):
                    _signal(pid, signal.SIGKILL)
            _wait_gone(leftovers, 5.0)
        self._seen_workers.clear()
        if not self._output.closed:
            self._output.close()


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def start_torchserve(
    workdir: Path,
    *,
    java_tool_options: str | None = None,
    extra_env: Mapping[str, str] | None = None,
    netns: str | None = None,
    api_host: str = "127.0.0.1",
    extra_properties: Mapping[str, str] | None = None,
    timeout: float = 120.0,
) -> TorchServe:
    """Start an isolated TorchServe under `workdir` and wait until ``/ping`` answers 200.

    `java_tool_options` becomes ``JAVA_TOOL_OPTIONS`` (proxy, truststore and timeout properties:
    it applies however java starts). `extra_env` is added to the launcher's environment.
    `netns` runs the launcher as ``ip netns exec NETNS torchserve ...`` (the caller made the
    namespace); then `api_host` must be an address of that namespace: TorchServe listens on it
    and the helpers talk to it. `extra_properties` add to or override config.properties
    (e.g. ``allowed_urls``, ``vmargs``).
    """
    venv = torchserve_venv()
    workdir = workdir.resolve()
    ports = _free_ports(5)
    for sub in ("model_store", "tmp", "logs", "metrics"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    host = _host_for_url(api_host)
    properties = {
        "inference_address": f"http://{host}:{ports[0]}",
        "management_address": f"http://{host}:{ports[1]}",
        "metrics_address": f"http://{host}:{ports[2]}",
        "grpc_inference_address": api_host,
        "grpc_inference_port": str(ports[3]),
        "grpc_management_address": api_host,
        "grpc_management_port": str(ports[4]),
        "model_store": str(workdir / "model_store"),
        "disable_token_authorization": "true",
        "enable_model_api": "true",
        # No GPU probing: the tests run on CPU whatever the machine has.
        "number_of_gpu": "0",
        **(extra_properties or {}),
    }
    config_path = workdir / "config.properties"
    config_path.write_text("".join(f"{key}={value}\n" for key, value in properties.items()))

    tmp = str(workdir / "tmp")
    env = {
        **os.environ,
        "TMPDIR": tmp,
        "TEMP": tmp,
        "LOG_LOCATION": str(workdir / "logs"),
        "METRICS_LOCATION": str(workdir / "metrics"),
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "VIRTUAL_ENV": str(venv),
    }
    if java_tool_options is not None:
        env["JAVA_TOOL_OPTIONS"] = java_tool_options
    env.update(extra_env or {})

    cmd = [
        str(venv / "bin" / "torchserve"),
        "--start",
        "--foreground",
        "--ncs",
        "--disable-token-auth",
        "--enable-model-api",
        "--ts-config",
        str(config_path),
        "--model-store",
        str(workdir / "model_store"),
    ]
    if netns is not None:
        cmd = ["ip", "netns", "exec", netns, *cmd]

    output = (workdir / "torchserve.out").open("w+b")
    try:
        launcher = subprocess.Popen(
            cmd,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    except BaseException:
        output.close()
        raise
    server = TorchServe(
        launcher=launcher,
        workdir=workdir,
        api_host=api_host,
        inference_port=ports[0],
        management_port=ports[1],
        metrics_port=ports[2],
        grpc_inference_port=ports[3],
        grpc_management_port=ports[4],
        _output=output,
    )
    try:
        _wait_healthy(server, cmd, timeout)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_healthy(server: TorchServe, cmd: Sequence[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if server.java_pid is None:
            server.java_pid = server.read_java_pid()
        if server.launcher.poll() is not None:
            what = f"exited with code {server.launcher.returncode}"
        elif time.monotonic() > deadline:
            what = f"was not healthy after {timeout:.0f} s"
        else:
            with contextlib.suppress(OSError, http.client.HTTPException):
                if server.ping(timeout=2.0) == 200 and server.java_pid is not None:
                    return
            time.sleep(0.1)
            continue
        raise ServerStartError(
            f"TorchServe ({' '.join(cmd)}) {what}.\n"
            f"Output:\n{server.output().strip() or '(none)'}\n{server.logs()}"
        )


def require_torchserve() -> None:
    """Skip the calling test module without the venv (fail it under SHIM_REQUIRE_TORCHSERVE)."""
    try:
        torchserve_venv()
    except TorchServeMissing as exc:
        missing: str | None = str(exc)
    else:
        missing = None
    # Outside the except block: a failure under the requirement is not "during handling".
    require("SHIM_REQUIRE_TORCHSERVE", missing)


def java_tool_options_from_shim_env(proxy_port: int, *, truststore: Path | None = None) -> str:
    """The ``JAVA_TOOL_OPTIONS`` that ``shim env`` prints for a shim proxy on loopback, taken as
    a user would copy it (``-Dhttp.nonProxyHosts=`` empty: test origins are on 127.*)."""
    command = [sys.executable, "-m", "shim", "env", "--proxy", f"127.0.0.1:{proxy_port}"]
    command += ["--non-proxy-hosts", ""]
    if truststore is not None:
        command += ["--truststore", str(truststore)]
    printed = subprocess.run(
        command, check=True, cwd=REPO_ROOT, capture_output=True, text=True
    ).stdout
    prefix = "export JAVA_TOOL_OPTIONS="
    (line,) = [ln for ln in printed.splitlines() if ln.startswith(prefix)]
    return shlex.split(line.removeprefix(prefix))[0]


def serve_echo_through_shim(
    workdir: Path, proxy_port: int, url: str, archive: bytes, payload: bytes
) -> None:
    """Start a TorchServe sent through the shim at ``proxy_port`` (as ``shim env`` says), have
    it register the echo model at ``url``, scale it and answer ``payload``; its model store
    must then hold ``archive``. Raises AssertionError naming the step that failed."""
    options = java_tool_options_from_shim_env(proxy_port)
    with start_torchserve(workdir, java_tool_options=options) as ts:
        status, text = ts.register(url)
        assert status == 200, f"register: {status} {text}"
        status, text = ts.scale("echo")
        assert status == 200, f"scale: {status} {text}"
        assert ts.predict("echo", payload) == (200, echo_reply(payload)), "predict"
        assert (ts.model_store / "echo.mar").read_bytes() == archive, "the stored archive"


def truststore_from_shim_ca(shim_config: Path, out_dir: Path) -> Path:
    """The truststore ``shim ca`` writes for the shim run with `shim_config` (the JDK's CAs plus
    the shim's interception CA, PKCS12), for https model URLs through CONNECT."""
    subprocess.run(
        [sys.executable, "-m", "shim", "ca", "--config", str(shim_config), "--out", str(out_dir)],
        check=True,
        cwd=REPO_ROOT,
        capture_output=True,
    )
    return out_dir / "truststore.p12"
