"""Debian's Chromium (`apt-get install chromium`, as .ci/run does), headless, loading one page on
loopback: the DOM as the browser built it (`--dump-dom`), or a screenshot of it.

Each run has a private profile directory, may reach 127.0.0.1 and nothing else (no proxy, every
other name unresolvable, no background networking), and is stopped by its PID if it outlives
its timeout. Chromium refuses to start as root with its sandbox on ("Running as root without
--no-sandbox is not supported", crbug.com/638180): as root, and only then, it runs without it.
The pages it loads here are shim's own, whose Content-Security-Policy forbids any script.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

from tests.support.procs import terminate
from tests.support.servers import ServerStartError

WINDOW = (1280, 1000)

_FLAGS = (
    "--headless",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--no-proxy-server",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    # A container's /dev/shm may be too small for Chromium's shared memory: /tmp instead.
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
)


def chromium_binary() -> str:
    binary = shutil.which("chromium")
    if binary is None:
        raise ServerStartError(
            "no chromium: `apt-get install chromium` (Debian's, as .ci/run does)"
        )
    return binary


def _run(url: str, profile: Path, args: list[str], timeout: float) -> str:
    if urlsplit(url).hostname != "127.0.0.1":
        raise ValueError(f"chromium loads pages on 127.0.0.1 only, not {url}")
    cmd = [chromium_binary(), *_FLAGS, f"--user-data-dir={profile}", *args, url]
    if os.geteuid() == 0:
        cmd.insert(2, "--no-sandbox")
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        terminate(process, 5)
        raise ServerStartError(f"chromium did not finish loading {url} in {timeout} s") from None
    if process.returncode != 0:
        raise ServerStartError(f"chromium exited with {process.returncode}:\n{stderr.decode()}")
    return stdout.decode()


def dump_dom(url: str, profile: Path, *, timeout: float = 60.0) -> str:
    """The page's DOM, serialized once it loaded."""
    return _run(url, profile, ["--dump-dom"], timeout)


def screenshot(
    url: str, profile: Path, path: Path, *, window: tuple[int, int] = WINDOW, timeout: float = 60.0
) -> None:
    """A PNG of the page as a ``window``-sized browser window shows it, written to ``path``."""
    _run(url, profile, [f"--window-size={window[0]},{window[1]}", f"--screenshot={path}"], timeout)


def png_facts(data: bytes) -> tuple[int, int, int]:
    """Width, height, and how many distinct byte values its pixel rows hold (a blank page: a
    handful) of a PNG; ValueError if ``data`` is no PNG."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    width, height = struct.unpack(">II", data[16:24])
    offset, idat = 8, bytearray()
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        if kind == b"IDAT":
            idat += data[offset + 8 : offset + 8 + length]
        offset += 12 + length
    return width, height, len(set(zlib.decompress(bytes(idat))))


class _Tables(HTMLParser):
    """The text of each cell of each row of each table with an id, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._rows: list[list[str]] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._rows = self.tables.setdefault(dict(attrs).get("id") or "", [])
        elif tag == "tr" and self._rows is not None:
            self._rows.append([])
        elif tag in ("td", "th") and self._rows:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._rows and self._cell is not None:
            self._rows[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "table":
            self._rows = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def table_rows(dom: str, table_id: str) -> list[list[str]]:
    """The rows (header row first) of the table with ``table_id`` in ``dom``, as cell texts."""
    parser = _Tables()
    parser.feed(dom)
    return parser.tables.get(table_id, [])
