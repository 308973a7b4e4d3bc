"""Every fault injected into a real shim, with what the client saw and what the cache held.

    python -m bench.bench_faults [--size-mib 4] [--only NAME,...] [--out FILE]

Each row starts a fresh `shim run` against the strict s3rver, injects one fault, downloads one
object with curl through the proxy and records: the status curl saw, the body bytes received
against the object's size and whether they are the object's (prefix), how the transfer ended,
X-Shim-Error and X-Shim-Route, what the cache directory held afterwards (entries in objects/,
files in tmp/), and two more downloads once the fault is cleared (MISS then HIT, unless nothing
is kept by design). Faults no real server produces on demand come from the relay of
tests/support/relay.py in front of s3rver (or standing in for the dfdaemon); a full disk is a
small tmpfs (root); kill -9 and SIGTERM are signals to the shim's PID.

Every row is also checked against shim's promises, and the run exits 1 if one is broken: no
complete 200 whose body is not the object; no Content-Length other than the object's; what a
cut transfer delivered is the object's start (but for the flipped byte); no entry that is not
the whole object; tmp/ empty once the transfer ended; no traceback in shim's output; a shim that
exits 0 on SIGTERM; no client left hanging; correct downloads once the fault is cleared; and the
row's own expected outcome (status, end, error kind, route, entries), so that the table printed
is the table the README shows. Prints a Markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.support.disk import tmpfs
from tests.support.dragonfly import (
    DragonflyError,
    dragonfly_bin_dir,
    start_dfdaemon,
    start_scheduler,
)
from tests.support.procs import free_port
from tests.support.relay import Relay, raw_response, request_target
from tests.support.servers import REPO_ROOT, S3Server, put_object, s3_client, start_s3rver
from tests.support.shim_process import ShimProcess, s3_bucket_config, start_shim

MIB = 1024 * 1024
BUCKET = "faults"
KEY = "model.bin"
# curl gives up after this: a client still waiting then was left hanging.
CLIENT_MAX_SECONDS = 60
# Bytes the client holds before a signal or a full disk is injected mid-transfer.
MID_TRANSFER = MIB
# The origin's pace for the faults injected mid-transfer: seconds, not milliseconds, per object.
SLOW_ORIGIN = 2e6
SMALL_DISK = 16 * MIB
# curl's exit codes and how the transfer ended for each.
CURL_ENDINGS = {
    0: "complete",
    18: "short (closed)",
    28: "hung (curl timed out)",
    52: "no response",
    56: "reset",
}


@dataclass
class Seen:
    """What curl saw of one download."""

    status: int | None
    headers: dict[str, str]
    body: bytes
    curl_exit: int

    @property
    def ended(self) -> str:
        return CURL_ENDINGS.get(self.curl_exit, f"curl exit {self.curl_exit}")

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")


class Curl:
    """One GET through the proxy, with curl in the background, its body and head to files."""

    def __init__(self, proxy: str, url: str, files: Path) -> None:
        files.mkdir(parents=True, exist_ok=True)
        self._body = Path(tempfile.mkstemp(dir=files, suffix=".body")[1])
        self._head = self._body.with_suffix(".head")
        self.process = subprocess.Popen(
            [
                *("curl", "-sS", "-x", proxy, "--max-time", str(CLIENT_MAX_SECONDS)),
                *("-D", str(self._head), "-o", str(self._body), url),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def received(self) -> int:
        return self._body.stat().st_size

    def wait_for(self, nbytes: int) -> None:
        """Return once ``nbytes`` of the body arrived (or the transfer ended)."""
        while self.received() < nbytes and self.process.poll() is None:
            time.sleep(0.01)

    def result(self) -> Seen:
        code = self.process.wait(CLIENT_MAX_SECONDS + 10)
        status, headers = None, {}
        if self._head.exists():
            # The last header block is the response (curl writes one per response it reads).
            blocks = self._head.read_bytes().decode("latin-1").strip().split("\r\n\r\n")
            lines = blocks[-1].split("\r\n") if blocks[-1] else []
            if lines:
                status = int(lines[0].split()[1])
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
        seen = Seen(status, headers, self._body.read_bytes(), code)
        self._body.unlink()
        self._head.unlink(missing_ok=True)
        return seen


def download(shim: ShimProcess, url: str, files: Path) -> Seen:
    return Curl(shim.proxy, url, files).result()


@dataclass
class CacheState:
    entries: int  # data files in objects/
    bad_entries: list[str]  # entries that are not the whole object, or lack their metadata
    tmp_files: int


def cache_state(cache_dir: Path, body: bytes) -> CacheState:
    digest = hashlib.sha256(body).hexdigest()
    objects, tmp = cache_dir / "objects", cache_dir / "tmp"
    data = [p for p in objects.glob("*/*") if p.is_file() and p.suffix != ".json"]
    bad = [
        p.name
        for p in data
        if not p.with_suffix(".json").is_file()
        or hashlib.sha256(p.read_bytes()).hexdigest() != digest
    ]
    tmp_files = sum(1 for p in tmp.iterdir()) if tmp.is_dir() else 0
    return CacheState(len(data), bad, tmp_files)


@dataclass(frozen=True)
class Expect:
    """The outcome a row must show: what the README's table says."""

    status: int | None
    ended: str
    error: str = ""  # X-Shim-Error
    route: str = ""  # X-Shim-Route ("" when absent)
    entries: int = 0
    next: tuple[str, ...] = ("MISS", "HIT")  # X-Shim-Cache of the downloads after clearing
    prefix: bool = True  # what arrived of a cut body is the object's start


@dataclass
class Row:
    fault: str
    injected: str
    status: int | None
    ended: str
    received: int
    expected: int
    identical: bool  # the body received is the whole object
    prefix: bool  # the body received is the object's start
    error: str
    route: str
    entries: int
    tmp_files: int
    next: list[str]  # X-Shim-Cache[/route] of the downloads after clearing, "!" when wrong
    note: str
    seconds: float
    violations: list[str] = field(default_factory=list)


class Trial:
    """One row: the shims it starts, what it saw, and every broken promise."""

    def __init__(self, lab: Lab, fault: str, injected: str, expect: Expect) -> None:
        self.lab, self.fault, self.injected, self.expect = lab, fault, injected, expect
        self.dir = lab.workdir / "".join(c if c.isalnum() else "-" for c in fault)
        self.files = self.dir / "client"
        self.shims: list[ShimProcess] = []
        self.violations: list[str] = []
        self.notes: list[str] = []
        self.seen: Seen | None = None
        self.state = CacheState(0, [], 0)
        self.next: list[str] = []
        self.started = time.monotonic()

    def shim(self, config: dict[str, Any], workdir: Path | None = None) -> ShimProcess:
        shim = start_shim(workdir or self.dir / "shim", config)
        self.shims.append(shim)
        return shim

    def stop(self, shim: ShimProcess, sig: signal.Signals = signal.SIGTERM) -> int:
        """Signal the shim, wait for it and scan its output; returns its exit code."""
        if shim.process.poll() is None:
            os.kill(shim.pid, sig)
        try:
            code = shim.process.wait(40)
        except subprocess.TimeoutExpired:
            self.violations.append(f"shim did not exit within 40 s of {sig.name}")
            os.kill(shim.pid, signal.SIGKILL)
            code = shim.process.wait()
        output = shim.output()
        shim.stop()
        if "Traceback" in output:
            tail = output[output.index("Traceback") :][:800]
            self.violations.append(f"traceback in shim's output: {tail}")
        if sig == signal.SIGTERM and code != 0:
            self.violations.append(f"shim exited {code} on SIGTERM")
        return code

    def inject(
        self,
        shim: ShimProcess,
        url: str,
        *,
        during: Callable[[], None] | None = None,
        cache_dir: Path | None = None,
    ) -> Seen:
        """Download ``url`` with the fault in place; ``during`` runs once the first
        MID_TRANSFER bytes arrived. Records what the client saw and, once the transfer
        ended and tmp/ emptied (or 5 s passed), what the cache held."""
        client = Curl(shim.proxy, url, self.files)
        if during is not None:
            client.wait_for(MID_TRANSFER)
            during()
        self.seen = seen = client.result()
        self._check_seen(seen)
        if shim.process.poll() is None:
            self.settle(cache_dir or shim.cache_dir)
        return seen

    def settle(self, cache_dir: Path) -> None:
        deadline = time.monotonic() + 5
        while True:
            self.state = cache_state(cache_dir, self.lab.body)
            if self.state.tmp_files == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if self.state.bad_entries:
            self.violations.append(f"entries that are not the object: {self.state.bad_entries}")
        if self.state.tmp_files:
            self.violations.append(f"{self.state.tmp_files} file(s) left in tmp/")

    def cleared(self, shim: ShimProcess, url: str) -> None:
        """Two downloads once the fault is cleared: each must be the whole object."""
        for _ in self.expect.next:
            seen = download(shim, url, self.files)
            ok = seen.status == 200 and seen.curl_exit == 0 and seen.body == self.lab.body
            route = seen.header("X-Shim-Route")
            label = seen.header("X-Shim-Cache") or "?"
            if route not in ("cache", "direct"):
                label += f"/{route}"
            self.next.append(label if ok else f"{label}!")
            if not ok:
                self.violations.append(
                    f"after clearing: {seen.status}, {seen.ended}, "
                    f"{len(seen.body)} of {len(self.lab.body)} bytes"
                )
        states = [label.split("/")[0].rstrip("!") for label in self.next]
        if tuple(states) != self.expect.next:
            self.violations.append(f"after clearing: {states}, expected {list(self.expect.next)}")

    def _check_seen(self, seen: Seen) -> None:
        body = self.lab.body
        if seen.curl_exit == 28:
            self.violations.append("the client was left hanging")
        if seen.status in (200, 206):
            length = seen.header("Content-Length")
            if seen.status == 200 and length != str(len(body)):
                self.violations.append(f"a 200 with Content-Length {length!r}, not {len(body)}")
            if seen.curl_exit == 0 and seen.body != body:
                self.violations.append(f"a complete {seen.status} whose body is not the object")
            if self.expect.prefix and not body.startswith(seen.body):
                self.violations.append("the bytes received are not the object's start")

    def row(self) -> Row:
        seen, expect = self.seen, self.expect
        assert seen is not None, f"{self.fault}: no download recorded"
        got = Expect(
            seen.status,
            seen.ended,
            seen.header("X-Shim-Error"),
            seen.header("X-Shim-Route"),
            self.state.entries,
            expect.next,
            expect.prefix,
        )
        if got != expect:
            self.violations.append(f"expected {expect}, saw {got}")
        body = self.lab.body
        return Row(
            fault=self.fault,
            injected=self.injected,
            status=seen.status,
            ended=seen.ended,
            received=len(seen.body),
            expected=len(body),
            identical=seen.body == body,
            prefix=body.startswith(seen.body),
            error=got.error,
            route=got.route,
            entries=self.state.entries,
            tmp_files=self.state.tmp_files,
            next=self.next,
            note=" ".join(self.notes),
            seconds=time.monotonic() - self.started,
            violations=self.violations,
        )


@dataclass
class Lab:
    s3: S3Server
    workdir: Path
    body: bytes
    relays: list[Relay] = field(default_factory=list)

    def relay(self) -> Relay:
        """A fresh relay in front of s3rver, stopped at the end of the row."""
        relay = Relay(self.s3.host, self.s3.port)
        relay.start()
        self.relays.append(relay)
        return relay

    def stop_relays(self) -> None:
        for relay in self.relays:
            relay.stop()
        self.relays.clear()

    def upload(self, key: str) -> None:
        put_object(s3_client(self.s3), BUCKET, key, self.body)


def bucket(endpoint: str, **credentials: str) -> dict[str, Any]:
    return {"buckets": [s3_bucket_config(BUCKET, endpoint, **credentials)]}


def object_url(relay: Relay, key: str = KEY) -> str:
    return f"{relay.endpoint}/{BUCKET}/{key}"


def truncated_200(body: bytes, sent: int) -> Callable[[bytes], bytes]:
    """A relay answer: a 200 promising the whole ``body`` that ends after ``sent`` bytes of it."""
    whole = raw_response(200, {"Content-Type": "application/octet-stream"}, body)
    return lambda head: whole[: len(whole) - len(body) + sent]


# -- the faults -------------------------------------------------------------------------------
# Each runs in its Trial: starts its shims, injects, records, clears the fault, downloads again.


def origin_404(lab: Lab, t: Trial) -> None:
    origin = lab.relay()
    shim = t.shim(bucket(origin.endpoint))
    t.inject(shim, object_url(origin, "absent.bin"))
    lab.upload("absent.bin")
    t.cleared(shim, object_url(origin, "absent.bin"))


def origin_403(lab: Lab, t: Trial) -> None:
    origin = lab.relay()
    wrong = bucket(origin.endpoint, secret_key="not-the-secret")
    t.inject(t.shim(wrong), object_url(origin))
    assert t.seen is not None
    if b"<Code>SignatureDoesNotMatch</Code>" not in t.seen.body:
        t.violations.append("the origin's error code did not reach the client")
    if b"<StringToSign>REDACTED</StringToSign>" not in t.seen.body:
        t.violations.append("the string-to-sign was not redacted")
    t.stop(t.shims[-1])
    t.notes.append("Cleared by restarting shim with the right secret on the same cache.")
    t.cleared(t.shim(bucket(origin.endpoint)), object_url(origin))


def origin_503(lab: Lab, t: Trial) -> None:
    origin = lab.relay()
    error = (
        b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
    )
    origin.answer = lambda head: raw_response(503, {"Content-Type": "application/xml"}, error)
    shim = t.shim(bucket(origin.endpoint))
    t.inject(shim, object_url(origin))
    origin.answer = None
    t.cleared(shim, object_url(origin))


def retries(shim: ShimProcess) -> str:
    count = shim.metrics().get('shim_origin_retries_total{upstream="origin"}', 0)
    return f"shim_origin_retries_total {count:.0f}"


def reset_once(lab: Lab, t: Trial) -> None:
    origin = lab.relay()
    origin.drop_next_requests = 1
    shim = t.shim(bucket(origin.endpoint))
    t.inject(shim, object_url(origin))
    t.notes.append(
        f"The origin saw {origin.connections} connections, {origin.dropped_requests} reset; "
        f"{retries(shim)}."
    )
    t.cleared(shim, object_url(origin))


def reset_always(lab: Lab, t: Trial) -> None:
    origin = lab.relay()
    origin.drop_next_requests = 1000
    shim = t.shim(bucket(origin.endpoint))
    t.inject(shim, object_url(origin))
    t.notes.append(f"The origin was asked {origin.dropped_requests} times; {retries(shim)}.")
    origin.drop_next_requests = 0
    t.cleared(shim, object_url(origin))


def reset_mid_body(lab: Lab, t: Trial) -> None:
    origin = lab.relay()
    origin.cut_after_bytes = len(lab.body) // 2
    shim = t.shim(bucket(origin.endpoint))
    t.inject(shim, object_url(origin))
    origin.cut_after_bytes = None
    t.cleared(shim, object_url(origin))


def stall_mid_body(lab: Lab, t: Trial) -> None:
    origin = lab.relay()
    origin.stall_after_bytes = len(lab.body) // 2
    shim = t.shim({"origin_timeout": 2, **bucket(origin.endpoint)})
    started = time.monotonic()
    t.inject(shim, object_url(origin))
    t.notes.append(
        f"The client's transfer ended {time.monotonic() - started:.1f} s after it began."
    )
    origin.resume()
    t.cleared(shim, object_url(origin))


def short_body(lab: Lab, t: Trial) -> None:
    origin = lab.relay()
    origin.answer = truncated_200(lab.body, len(lab.body) // 2)
    shim = t.shim(bucket(origin.endpoint))
    t.inject(shim, object_url(origin))
    origin.answer = None
    t.cleared(shim, object_url(origin))


def flipped_byte(lab: Lab, t: Trial) -> None:
    origin = lab.relay()
    origin.corrupt_at_byte = len(lab.body) // 2
    shim = t.shim(bucket(origin.endpoint))
    t.inject(shim, object_url(origin))
    origin.corrupt_at_byte = None
    t.cleared(shim, object_url(origin))


def redirect(lab: Lab, t: Trial) -> None:
    origin, elsewhere = lab.relay(), lab.relay()

    def answer(head: bytes) -> bytes:
        location = f"{elsewhere.endpoint}{request_target(head)}"
        return raw_response(
            307, {"Location": location}, b"<Error><Code>TemporaryRedirect</Code></Error>"
        )

    origin.answer = answer
    shim = t.shim(bucket(origin.endpoint))
    seen = t.inject(shim, object_url(origin))
    location = seen.header("Location")
    if "X-Amz-Signature=REDACTED" not in location or elsewhere.connections:
        t.violations.append(f"redirect followed or its signature kept: {location[:200]}")
    origin.answer = None
    t.cleared(shim, object_url(origin))


def dfdaemon_config(url: str, endpoint: str) -> dict[str, Any]:
    return {"dfdaemon": {"url": url}, **bucket(endpoint)}


def dfdaemon_down(lab: Lab, t: Trial) -> None:
    origin = lab.relay()
    shim = t.shim(dfdaemon_config(f"http://127.0.0.1:{free_port()}", origin.endpoint))
    t.inject(shim, object_url(origin))
    t.notes.append("Still down for the next downloads.")
    t.cleared(shim, object_url(origin))


def dfdaemon_5xx(lab: Lab, t: Trial) -> None:
    origin = lab.relay()
    # Stands in for the dfdaemon: answers itself while the fault lasts, then forwards to s3rver,
    # which serves absolute-form requests as a dfdaemon's back-to-source fetch would.
    dfdaemon = lab.relay()
    dfdaemon.answer = lambda head: raw_response(500, {"Content-Type": "text/plain"}, b"error")
    shim = t.shim(dfdaemon_config(dfdaemon.endpoint, origin.endpoint))
    t.inject(shim, object_url(origin))
    dfdaemon.answer = None
    t.cleared(shim, object_url(origin))


def dfdaemon_truncating(lab: Lab, t: Trial) -> None:
    origin = lab.relay()
    try:
        dragonfly_bin_dir()
    except DragonflyError:
        dfdaemon = lab.relay()  # standing in, as for dfdaemon_5xx
        dfdaemon.answer = truncated_200(lab.body, len(lab.body) // 2)
        t.notes.append(
            "The relay stood in for the dfdaemon (a truncated 200, then forwarding to s3rver): "
            "the Rust dfdaemon was not built."
        )
        shim = t.shim(dfdaemon_config(dfdaemon.endpoint, origin.endpoint))
        t.inject(shim, object_url(origin))
        if origin.connections:
            t.violations.append("shim fell back to the origin after the body had started")
        dfdaemon.answer = None
        t.cleared(shim, object_url(origin))
        return
    with (
        start_scheduler(t.dir / "scheduler") as scheduler,
        start_dfdaemon(
            t.dir / "dfdaemon", name="faults", scheduler=scheduler, proxy_rules=[]
        ) as df,
        Relay("127.0.0.1", df.proxy_port) as cutter,
    ):
        # Past the response head and into the body: a dfdaemon failing mid-body.
        cutter.cut_after_bytes = len(lab.body) // 2
        t.notes.append("A real Rust dfdaemon, cut by the relay between it and shim.")
        shim = t.shim(dfdaemon_config(cutter.endpoint, origin.endpoint))
        t.inject(shim, object_url(origin))
        cutter.cut_after_bytes = None
        t.cleared(shim, object_url(origin))
        t.stop(shim)
    if origin.connections == 0:
        t.violations.append("the dfdaemon never reached the origin")


def fill_disk(disk: Path, leave: int) -> Path:
    """Write a file on ``disk`` until ``leave`` bytes are free (0: until ENOSPC)."""
    filler = disk / "filler"
    chunk = bytes(64 * 1024)
    with filler.open("wb", buffering=0) as out:
        while True:
            stats = os.statvfs(disk)
            free = stats.f_bavail * stats.f_frsize
            if free <= leave:
                break
            try:
                out.write(chunk[: max(1, min(len(chunk), free - leave))])
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise
                break
    return filler


def disk_config(disk: Path, endpoint: str) -> dict[str, Any]:
    return {"cache": {"dir": str(disk / "cache"), "min_free": 0}, **bucket(endpoint)}


def disk_full_mid_fill(lab: Lab, t: Trial) -> None:
    if os.geteuid() != 0:
        t.violations.append("not run: mounting a tmpfs needs root")
        return
    origin = lab.relay()
    origin.rate_limit_bytes_per_s = SLOW_ORIGIN
    with tmpfs(t.dir / "disk", SMALL_DISK) as disk:
        shim = t.shim(disk_config(disk, origin.endpoint))
        filler: list[Path] = []
        t.inject(
            shim,
            object_url(origin),
            during=lambda: filler.append(fill_disk(disk, 0)),
            cache_dir=disk / "cache",
        )
        filler[0].unlink()
        origin.rate_limit_bytes_per_s = None
        t.cleared(shim, object_url(origin))
        t.stop(shim)


def no_room_on_disk(lab: Lab, t: Trial) -> None:
    if os.geteuid() != 0:
        t.violations.append("not run: mounting a tmpfs needs root")
        return
    origin = lab.relay()
    with tmpfs(t.dir / "disk", SMALL_DISK) as disk:
        shim = t.shim(disk_config(disk, origin.endpoint))
        filler = fill_disk(disk, len(lab.body) // 4)
        t.inject(shim, object_url(origin), cache_dir=disk / "cache")
        filler.unlink()
        t.cleared(shim, object_url(origin))
        output = shim.output()
        t.stop(shim)
    if "streaming it through memory" not in output:
        t.violations.append("shim did not say it streamed the object through memory")


def kill_mid_fill(lab: Lab, t: Trial) -> None:
    origin = lab.relay()
    origin.rate_limit_bytes_per_s = SLOW_ORIGIN
    config = bucket(origin.endpoint)
    shim = t.shim(config)
    t.inject(shim, object_url(origin), during=lambda: os.kill(shim.pid, signal.SIGKILL))
    t.stop(shim, signal.SIGKILL)
    left = cache_state(shim.cache_dir, lab.body)
    t.notes.append(f"The kill left {left.tmp_files} file(s) in tmp/; the restart removed them.")
    if left.tmp_files == 0:
        t.violations.append("the kill left nothing to clean up: the fault missed the fill")
    if left.entries:
        t.violations.append("the killed fill left an entry in objects/")
    origin.rate_limit_bytes_per_s = None
    again = t.shim(config)
    t.settle(again.cache_dir)
    t.cleared(again, object_url(origin))


def sigterm_mid_transfer(lab: Lab, t: Trial) -> None:
    origin = lab.relay()
    origin.rate_limit_bytes_per_s = SLOW_ORIGIN
    config = bucket(origin.endpoint)
    shim = t.shim(config)
    codes: list[int] = []
    t.inject(shim, object_url(origin), during=lambda: codes.append(t.stop(shim)))
    t.settle(shim.cache_dir)
    t.notes.append(f"shim exited {codes[0]}; restarted on the same cache for the next downloads.")
    origin.rate_limit_bytes_per_s = None
    t.cleared(t.shim(config), object_url(origin))


@dataclass(frozen=True)
class Fault:
    name: str
    injected: str
    expect: Expect
    run: Callable[[Lab, Trial], None]


def faults() -> list[Fault]:
    def answered(status: int, error: str = "origin_status") -> Expect:
        return Expect(status, "complete", error)

    # A failed transfer: the 200's head, then the connection closes short of Content-Length.
    cut = Expect(200, "short (closed)", route="direct")
    served = Expect(200, "complete", route="direct", entries=1, next=("HIT", "HIT"))
    fell_back = Expect(200, "complete", route="fallback", next=("MISS", "MISS"))
    disk = f"{SMALL_DISK // MIB} MiB tmpfs"
    return [
        Fault("origin 404", "s3rver: no such key", answered(404), origin_404),
        Fault("origin 403", "s3rver: wrong secret", answered(403), origin_403),
        Fault("origin 503", "relay answers 503 SlowDown", answered(503), origin_503),
        Fault("reset before the response (once)", "relay resets 1 request", served, reset_once),
        Fault(
            "reset before the response (always)",
            "relay resets every request",
            answered(502, "origin"),
            reset_always,
        ),
        Fault("reset mid-body", "relay: RST after half", cut, reset_mid_body),
        Fault(
            "stall mid-body", "relay: silent after half; origin_timeout 2 s", cut, stall_mid_body
        ),
        Fault("short body", "relay answers a 200 closed after half", cut, short_body),
        Fault(
            "flipped byte",
            "relay flips one byte at half (ETag is MD5)",
            Expect(200, "short (closed)", route="direct", prefix=False),
            flipped_byte,
        ),
        Fault("redirect", "relay answers 307 elsewhere", answered(307), redirect),
        Fault("dfdaemon down", "closed port", fell_back, dfdaemon_down),
        Fault("dfdaemon 5xx", "relay as dfdaemon answers 500", fell_back, dfdaemon_5xx),
        Fault(
            "dfdaemon truncating",
            "dfdaemon's 200 ends after half",
            Expect(200, "short (closed)", route="dfdaemon", next=("MISS", "MISS")),
            dfdaemon_truncating,
        ),
        Fault("disk full mid-fill", f"{disk} filled up during the fill", cut, disk_full_mid_fill),
        Fault(
            "no room on disk",
            f"{disk} with a quarter of the object free",
            Expect(200, "complete", route="direct"),
            no_room_on_disk,
        ),
        Fault("kill -9 mid-fill", "SIGKILL after 1 MiB, restart", cut, kill_mid_fill),
        Fault("SIGTERM mid-transfer", "SIGTERM after 1 MiB, restart", served, sigterm_mid_transfer),
    ]


def run(selected: list[Fault], size: int, workdir: Path) -> list[Row]:
    rows = []
    with start_s3rver(workdir / "s3rver") as s3:
        lab = Lab(s3, workdir, os.urandom(size))
        lab.upload(KEY)
        for fault in selected:
            print(f"[{fault.name}] {fault.injected}...", flush=True)
            trial = Trial(lab, fault.name, fault.injected, fault.expect)
            try:
                fault.run(lab, trial)
            except Exception as error:  # the row fails, the others still run
                trial.violations.append(f"{type(error).__name__}: {error}")
            finally:
                for shim in trial.shims:
                    if shim.process.poll() is None:
                        trial.stop(shim)
                lab.stop_relays()
            if trial.seen is None:
                trial.seen = Seen(None, {}, b"", -1)
            rows.append(trial.row())
    return rows


def table(rows: list[Row]) -> str:
    columns = ["fault", "injected", "client saw", "body received", "X-Shim-Error", "route"]
    columns += ["cache after", "next, fault cleared"]
    lines = [
        f"| {' | '.join(columns)} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.status in (200, 206):
            what = "whole object" if r.identical else "its start" if r.prefix else "not its start"
            body = f"{r.received / MIB:.2f} of {r.expected / MIB:.0f} MiB, {what}"
        else:
            body = f"{r.received} B error body"
        saw = f"{r.status or '-'}, {r.ended}"
        cache = f"{r.entries} entr{'y' if r.entries == 1 else 'ies'}, {r.tmp_files} in tmp/"
        lines.append(
            f"| {r.fault} | {r.injected} | {saw} | {body} | {r.error or '-'} | {r.route or '-'} "
            f"| {cache} | {', '.join(r.next) or '-'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size-mib", type=int, default=4)
    parser.add_argument("--only", default="", help="comma-separated fault names (default: all)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "faults.json")
    args = parser.parse_args()
    selected = faults()
    if args.only:
        names = {name.strip() for name in args.only.split(",")}
        selected = [f for f in selected if f.name in names]
        if unknown := names - {f.name for f in selected}:
            parser.error(f"unknown faults: {', '.join(sorted(unknown))}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="shim-faults-", dir="/var/tmp") as tmp:
        rows = run(selected, args.size_mib * MIB, Path(tmp))
    print(table(rows))
    for r in rows:
        if r.note:
            print(f"- {r.fault}: {r.note}")
    print(f"{len(rows)} faults in {time.monotonic() - started:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"size": args.size_mib * MIB, "rows": [asdict(r) for r in rows]}, indent=2)
    )
    print(f"wrote {args.out}")
    broken = [r for r in rows if r.violations]
    for r in broken:
        for violation in r.violations:
            print(f"BROKEN {r.fault}: {violation}", file=sys.stderr)
    if broken:
        sys.exit(1)


if __name__ == "__main__":
    main()
