"""The TorchServe harness itself: a real TorchServe 0.12.0 downloads models from a plain local
HTTP server (no proxy, no shim), serves them and stops cleanly.

Needs the venv from scripts/install-torchserve. Without it the module is skipped, unless
SHIM_REQUIRE_TORCHSERVE is set (non-empty, not "0"): then it fails.
"""

from __future__ import annotations

import functools
import http.server
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.torchserve import (
    LinearExpectation,
    TorchServe,
    build_echo_archive,
    build_linear_archive,
    echo_reply,
    require_torchserve,
    start_torchserve,
)

pytestmark = [pytest.mark.slow, pytest.mark.torchserve]


require_torchserve()


@dataclass
class FileServer:
    """Plain HTTP server on loopback serving a directory; records the paths it was asked for."""

    root: Path
    requests: list[str] = field(default_factory=list)
    port: int = 0

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LinearExpectation]:
    """echo.mar and linear.mar, built once, in one directory; and the linear model's case."""
    out = tmp_path_factory.mktemp("archives")
    build_echo_archive(out)
    _, expected = build_linear_archive(out)
    return out, expected


@pytest.fixture(scope="module")
def file_server(archives: tuple[Path, LinearExpectation]) -> Iterator[FileServer]:
    served = FileServer(archives[0])

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            served.requests.append(self.path)

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(served.root))
    )
    served.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served
    server.shutdown()
    server.server_close()
    thread.join(10)


@pytest.fixture(scope="module")
def torchserve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchServe]:
    """One TorchServe shared by the module's tests that do not test its lifecycle."""
    with start_torchserve(tmp_path_factory.mktemp("torchserve")) as server:
        yield server


def _explain(server: TorchServe) -> str:
    return f"\n{server.output()[-4000:]}\n{server.logs()[-8000:]}"


def test_full_cycle_echo_model(
    tmp_path: Path, file_server: FileServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """start -> register by URL -> scale 1 worker synchronously -> predict -> unregister -> stop,
    then neither java nor its worker is left running."""
    times: dict[str, float] = {}
    t0 = time.monotonic()
    server = start_torchserve(tmp_path / "ts")
    try:
        times["start"] = time.monotonic() - t0
        assert server.ping() == 200
        java_pid = server.java_pid
        assert java_pid is not None
        assert server.launcher.pid != java_pid

        status, body = server.register(file_server.url("echo.mar"), timeout=60)
        times["register"] = time.monotonic() - t0
        assert status == 200, body + _explain(server)
        assert "/echo.mar" in file_server.requests
        assert (server.model_store / "echo.mar").is_file()

        status, body = server.scale("echo", workers=1)
        times["scale"] = time.monotonic() - t0
        assert status == 200, body + _explain(server)
        status, description = server.describe("echo")
        assert status == 200
        workers = json.loads(description)[0]["workers"]
        assert [w["status"] for w in workers] == ["READY"]
        worker_pid = int(workers[0]["pid"])

        status, answer = server.predict("echo", b"hello torchserve")
        times["predict"] = time.monotonic() - t0
        assert (status, answer) == (200, echo_reply(b"hello torchserve")), _explain(server)

        status, body = server.unregister("echo")
        assert status == 200, body
        assert server.predict("echo", b"x")[0] == 404
    finally:
        server.stop()
    times["stop"] = time.monotonic() - t0

    assert server.launcher.returncode is not None
    assert not Path(f"/proc/{java_pid}").exists() or _is_zombie(java_pid)
    assert not Path(f"/proc/{worker_pid}").exists() or _is_zombie(worker_pid)
    with capsys.disabled():
        print(
            "\nTorchServe cycle (cumulative s): "
            + ", ".join(f"{step} {at:.2f}" for step, at in times.items())
        )


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2] in "ZX"


def test_linear_torchscript_model(
    torchserve: TorchServe,
    file_server: FileServer,
    archives: tuple[Path, LinearExpectation],
) -> None:
    expected = archives[1]
    status, body = torchserve.register(file_server.url("linear.mar"), timeout=60)
    assert status == 200, body + _explain(torchserve)
    status, body = torchserve.scale("linear")
    assert status == 200, body + _explain(torchserve)

    for content_type in ("application/json", "application/octet-stream"):
        status, answer = torchserve.predict(
            "linear", expected.request_body, content_type=content_type
        )
        assert status == 200, answer.decode(errors="replace") + _explain(torchserve)
        assert expected.matches(answer), (answer, expected.output)


def test_failed_download_leaves_server_healthy(
    torchserve: TorchServe, file_server: FileServer
) -> None:
    url = file_server.url("missing.mar")
    status, body = torchserve.register(url, timeout=60)
    assert status in (400, 500), body
    assert "/missing.mar" in file_server.requests
    assert status == 400
    assert json.loads(body)["type"] == "DownloadArchiveException"
    assert url in body
    assert torchserve.ping() == 200
    assert not (torchserve.model_store / "missing.mar").exists()
