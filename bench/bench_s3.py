"""Throughput and peak memory of the shim against direct downloads, side by side in one run.

    python -m bench.bench_s3 [--sizes-gib 1,4] [--origin-rate-mb 250] [--out FILE]

Scenarios per object size:
  origin direct   a presigned GET straight to the strict S3 server behind a relay that limits
                  it to --origin-rate-mb (the origin's own throughput)
  shim miss       the same object through the shim, cold cache, origin behind the same relay
  file direct     the same bytes from a plain local file server (aiohttp, sendfile)
  shim hit        through the shim, from its cache (plain HTTP: zero-copy)
  shim hit stream through the shim, from its cache, with zero_copy_hits off (the path TLS uses)
Each shim scenario runs in a fresh shim process, so its peak RSS (VmHWM) is its own. The
client is curl, writing to /dev/null. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tests.support.procs import free_port
from tests.support.relay import Relay
from tests.support.servers import REPO_ROOT, S3Server, s3_client, start_s3rver
from tests.support.shim_process import s3_bucket_config, start_shim

GIB = 1024**3
BUCKET = "bench"


@dataclass
class Row:
    size_gib: int
    scenario: str
    seconds: float
    mb_per_s: float
    ratio: float | None = None  # against this scenario's baseline
    baseline: str | None = None
    peak_rss_mb: float | None = None  # VmHWM: everything resident, file-backed pages included
    peak_anon_mb: float | None = None  # sampled RssAnon peak: what the process itself holds
    peak_file_mb: float | None = None  # sampled RssFile peak: mapped page-cache pages


class MemorySampler:
    """Polls /proc/PID/status for RssAnon and RssFile peaks while a transfer runs."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self._pid, self._interval = pid, interval
        self.anon_kb = self.file_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            fields = _status(self._pid)
            self.anon_kb = max(self.anon_kb, fields.get("RssAnon", 0))
            self.file_kb = max(self.file_kb, fields.get("RssFile", 0))
            time.sleep(self._interval)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def _status(pid: int) -> dict[str, int]:
    fields = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            fields[name] = int(value.split()[0])
    return fields


def curl(url: str, *, proxy: str | None = None, expect_size: int) -> float:
    """Download ``url`` to /dev/null; return the seconds it took. Fails on a short body."""
    args = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}"]
    if proxy:
        args += ["-x", proxy]
    out = subprocess.run([*args, url], check=True, capture_output=True, text=True).stdout
    status, size, seconds = out.split()
    if status != "200" or int(size) != expect_size:
        raise RuntimeError(f"download of {url} gave {status} with {size} of {expect_size} bytes")
    return float(seconds)


def make_file(path: Path, size: int) -> None:
    chunk = os.urandom(64 * 1024 * 1024)
    with path.open("wb") as out:
        for offset in range(0, size, len(chunk)):
            out.write(chunk[: min(len(chunk), size - offset)])


def run(sizes_gib: list[int], origin_rate: float, workdir: Path) -> list[Row]:
    rows: list[Row] = []
    with start_s3rver(workdir / "s3rver") as s3:
        client = s3_client(s3)
        client.create_bucket(Bucket=BUCKET)
        relay = Relay(s3.host, s3.port, rate_limit_bytes_per_s=origin_rate)
        relay.start()
        files_dir = workdir / "files"
        files_dir.mkdir()
        file_port = free_port()
        file_server = subprocess.Popen(
            [
                sys.executable,
                str(REPO_ROOT / "bench" / "fileserver.py"),
                str(files_dir),
                str(file_port),
            ]
        )
        try:
            time.sleep(1.5)
            for size_gib in sizes_gib:
                rows += _one_size(size_gib, s3, relay, files_dir, file_port, workdir)
        finally:
            file_server.terminate()
            file_server.wait()
            relay.stop()
    return rows


def _one_size(
    size_gib: int, s3: S3Server, relay: Relay, files_dir: Path, file_port: int, workdir: Path
) -> list[Row]:
    size = size_gib * GIB
    key = f"model-{size_gib}g.bin"
    source = files_dir / key
    print(f"[{size_gib} GiB] writing and uploading the object...", flush=True)
    make_file(source, size)
    s3_client(s3).upload_file(str(source), BUCKET, key)
    rows: list[Row] = []

    # s3rver checks the signature against the Host it receives: sign for the relay.
    signed = s3_client(s3, endpoint_url=relay.endpoint).generate_presigned_url(
        "get_object", Params={"Bucket": BUCKET, "Key": key}
    )
    seconds = curl(signed, expect_size=size)
    origin = Row(size_gib, "origin direct", seconds, size / seconds / 1e6)
    rows.append(origin)

    url = f"{relay.endpoint}/{BUCKET}/{key}"
    shim_dir = workdir / f"shim-{size_gib}"
    config: dict[str, Any] = {"buckets": [s3_bucket_config(BUCKET, relay.endpoint)]}
    rows.append(_through_shim(size_gib, "shim miss", shim_dir, config, url, size, origin))

    seconds = curl(f"http://127.0.0.1:{file_port}/{key}", expect_size=size)
    local = Row(size_gib, "file direct", seconds, size / seconds / 1e6)
    rows.append(local)
    rows.append(_through_shim(size_gib, "shim hit", shim_dir, config, url, size, local))
    streamed: dict[str, Any] = {**config, "cache": {"zero_copy_hits": False}}
    rows.append(_through_shim(size_gib, "shim hit stream", shim_dir, streamed, url, size, local))
    source.unlink()
    return rows


def _through_shim(
    size_gib: int,
    scenario: str,
    shim_dir: Path,
    config: dict[str, object],
    url: str,
    size: int,
    baseline: Row,
) -> Row:
    with start_shim(shim_dir, config) as shim, MemorySampler(shim.pid) as memory:
        seconds = curl(url, proxy=shim.proxy, expect_size=size)
        peak_kb = _status(shim.pid).get("VmHWM", 0)
    speed = size / seconds / 1e6
    return Row(
        size_gib,
        scenario,
        seconds,
        speed,
        ratio=speed / baseline.mb_per_s,
        baseline=baseline.scenario,
        peak_rss_mb=peak_kb / 1024,
        peak_anon_mb=memory.anon_kb / 1024,
        peak_file_mb=memory.file_kb / 1024,
    )


def table(rows: list[Row]) -> str:
    head = (
        f"{'size':>5} {'scenario':<16} {'MB/s':>8} {'ratio':>6} {'vs':<14} "
        f"{'VmHWM MB':>9} {'anon MB':>8} {'file MB':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:

        def fmt(value: float | None, spec: str) -> str:
            return format(value, spec) if value is not None else "-"

        lines.append(
            f"{r.size_gib:>3}Gi {r.scenario:<16} {r.mb_per_s:>8.0f} {fmt(r.ratio, '.2f'):>6} "
            f"{r.baseline or '':<14} {fmt(r.peak_rss_mb, '.0f'):>9} "
            f"{fmt(r.peak_anon_mb, '.0f'):>8} {fmt(r.peak_file_mb, '.0f'):>8}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes-gib", default="1,4")
    parser.add_argument("--origin-rate-mb", type=float, default=250.0)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "s3.json")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes_gib.split(",")]
    with tempfile.TemporaryDirectory(prefix="shim-bench-", dir="/var/tmp") as tmp:
        rows = run(sizes, args.origin_rate_mb * 1e6, Path(tmp))
    print(table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"origin_rate_mb_per_s": args.origin_rate_mb, "rows": [asdict(r) for r in rows]},
            indent=2,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
