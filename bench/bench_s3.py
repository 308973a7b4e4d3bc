"""Throughput and peak memory of the shim against direct downloads, side by side in one run.

    python -m bench.bench_s3 [--sizes-gib 1,8] [--cpu-load 2] [--origin-rate-mb 250] [--out FILE]

Scenarios per object size (``--sizes-gib`` takes fractions, e.g. 0.125, for a quick look):
  origin direct    a presigned GET straight to the strict S3 server behind a relay that limits
                   it to --origin-rate-mb (the origin's own throughput)
  shim miss        the same object through the shim, cold cache, origin behind the same relay:
                   the body is sent on the client's connection from the fill's file
  shim miss https  the same over HTTPS (CONNECT, intercepted with the shim's CA), cold cache:
                   read from the fill's file 1 MiB at a time, encrypted in 256 KiB slices
  file direct      the same bytes (the S3 server's own file) from a plain local file server
                   (aiohttp, sendfile)
  shim hit         through the shim, from its cache, plain HTTP (4 MiB reads and writes)
  shim hit https   through the shim, from its cache, over HTTPS (reads and encryption as above)
  shim hit relay   through the shim, from its cache, with cache.zero_copy_hits off: relayed by
                   mitmproxy from the loopback cache server (what an HTTP/1.0 client gets)
Misses are compared with origin direct, hits with file direct. Each shim scenario runs in a
fresh shim process, so its peak RSS (VmHWM) is its own, and is judged against a target of
150 MB (1e6 bytes) that must hold at every object size: memory flat in the object's size. While
every transfer runs, --cpu-load busy-loop processes keep the cores contended. The client is
curl, writing to /dev/null. Prints a table, writes JSON and a chart of peak RSS (same name,
.png). Disk, in /var/tmp: twice the largest object (the S3 server's copy and the shim's cache).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench._proc import PeakSampler, proc_status
from tests.support.procs import free_port, terminate
from tests.support.relay import Relay
from tests.support.servers import REPO_ROOT, S3Server, s3_client, start_s3rver
from tests.support.shim_process import ShimProcess, s3_bucket_config, start_shim

GIB = 1024**3
MB = 1e6
BUCKET = "bench"
PEAK_TARGET_MB = 150.0


@dataclass
class Row:
    size_gib: float
    scenario: str
    seconds: float
    mb_per_s: float
    ratio: float | None = None  # against this scenario's baseline
    baseline: str | None = None
    idle_rss_mb: float | None = None  # VmHWM once started and idle, before the transfer
    peak_rss_mb: float | None = None  # VmHWM: everything resident, file-backed pages included
    peak_anon_mb: float | None = None  # sampled RssAnon peak: what the process itself holds
    peak_file_mb: float | None = None  # sampled RssFile peak: mapped files (code, libraries)
    verdict: str | None = None  # "ok" or "OVER": peak RSS against PEAK_TARGET_MB


def _mb(kib: int) -> float:
    return kib * 1024 / MB


@contextlib.contextmanager
def cpu_load(processes: int) -> Iterator[None]:
    """``processes`` busy loops for the length of the block, so a transfer competes for the
    cores as it would on a loaded node; each is stopped by its PID."""
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)]
    try:
        yield
    finally:
        for loop in loops:
            terminate(loop, timeout=5)


def curl(
    url: str, *, proxy: str | None = None, cacert: Path | None = None, expect_size: int
) -> float:
    """Download ``url`` to /dev/null; return the seconds it took. Fails on a short body."""
    args = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}"]
    if proxy:
        args += ["-x", proxy]
    if cacert:
        args += ["--cacert", str(cacert)]
    out = subprocess.run([*args, url], check=True, capture_output=True, text=True).stdout
    status, size, seconds = out.split()
    if status != "200" or int(size) != expect_size:
        raise RuntimeError(f"download of {url} gave {status} with {size} of {expect_size} bytes")
    return float(seconds)


def upload_random(s3: S3Server, key: str, size: int) -> None:
    """PUT ``size`` random bytes as ``key`` in one request, streamed: no copy of the object on
    disk but the server's (an 8 GiB object needs its own 8 GiB and the shim's cache copy)."""
    url = urlsplit(
        s3_client(s3).generate_presigned_url("put_object", Params={"Bucket": BUCKET, "Key": key})
    )
    block = memoryview(os.urandom(64 * 1024 * 1024))

    def body() -> Iterator[memoryview]:
        for offset in range(0, size, len(block)):
            yield block[: min(len(block), size - offset)]

    connection = http.client.HTTPConnection(s3.host, s3.port, timeout=600)
    try:
        connection.request(
            "PUT", f"{url.path}?{url.query}", body=body(), headers={"Content-Length": str(size)}
        )
        response = connection.getresponse()
        if response.status != 200:
            raise RuntimeError(f"upload of {key} failed: {response.status} {response.read()!r}")
    finally:
        connection.close()


def stored_file(key: str) -> str:
    """Where s3rver's filesystem store keeps ``key``'s bytes, relative to the bucket's
    directory: the file the file-server baseline sends."""
    return f"{key}._S3rver_object"


def size_label(size_gib: float) -> str:
    return f"{size_gib:g}Gi" if size_gib >= 1 else f"{size_gib * 1024:g}Mi"


@dataclass
class Setup:
    """What every scenario of one run shares."""

    s3: S3Server
    relay: Relay
    file_port: int
    workdir: Path
    cpu_load: int


def run(sizes_gib: list[float], origin_rate: float, cpu: int, workdir: Path) -> list[Row]:
    rows: list[Row] = []
    with start_s3rver(workdir / "s3rver") as s3:
        client = s3_client(s3)
        client.create_bucket(Bucket=BUCKET)
        relay = Relay(s3.host, s3.port, rate_limit_bytes_per_s=origin_rate)
        relay.start()
        file_port = free_port()
        file_server = subprocess.Popen(
            [
                sys.executable,
                str(REPO_ROOT / "bench" / "fileserver.py"),
                str(s3.data_dir / BUCKET),
                str(file_port),
            ]
        )
        try:
            time.sleep(1.5)
            setup = Setup(s3, relay, file_port, workdir, cpu)
            for size_gib in sizes_gib:
                rows += _one_size(size_gib, setup)
        finally:
            terminate(file_server, timeout=5)
            relay.stop()
    return rows


def _one_size(size_gib: float, setup: Setup) -> list[Row]:
    size = round(size_gib * GIB)
    key = f"model-{size_label(size_gib)}.bin"
    print(f"[{size_label(size_gib)}] uploading the object...", flush=True)
    upload_random(setup.s3, key, size)
    rows: list[Row] = []

    # s3rver checks the signature against the Host it receives: sign for the relay.
    signed = s3_client(setup.s3, endpoint_url=setup.relay.endpoint).generate_presigned_url(
        "get_object", Params={"Bucket": BUCKET, "Key": key}
    )
    with cpu_load(setup.cpu_load):
        seconds = curl(signed, expect_size=size)
    origin = Row(size_gib, "origin direct", seconds, size / seconds / MB)
    rows.append(origin)
    with cpu_load(setup.cpu_load):
        seconds = curl(f"http://127.0.0.1:{setup.file_port}/{stored_file(key)}", expect_size=size)
    local = Row(size_gib, "file direct", seconds, size / seconds / MB)
    rows.append(local)

    url = f"{setup.relay.endpoint}/{BUCKET}/{key}"
    config: dict[str, Any] = {"buckets": [s3_bucket_config(BUCKET, setup.relay.endpoint)]}
    relayed: dict[str, Any] = {**config, "cache": {"zero_copy_hits": False}}
    # One cache per scheme, so each scheme's miss is cold; removed once its hits are measured.
    for scheme, scenarios in (
        (
            "http",
            [
                ("shim miss", config, origin),
                ("shim hit", config, local),
                ("shim hit relay", relayed, local),
            ],
        ),
        ("https", [("shim miss https", config, origin), ("shim hit https", config, local)]),
    ):
        shim_dir = setup.workdir / f"shim-{scheme}-{key}"
        scheme_url = url.replace("http://", f"{scheme}://")
        for scenario, shim_config, baseline in scenarios:
            rows.append(
                _through_shim(
                    size_gib, scenario, shim_dir, shim_config, scheme_url, setup, baseline
                )
            )
        shutil.rmtree(shim_dir)
    s3_client(setup.s3).delete_object(Bucket=BUCKET, Key=key)
    return rows


def _through_shim(
    size_gib: float,
    scenario: str,
    shim_dir: Path,
    config: dict[str, object],
    url: str,
    setup: Setup,
    baseline: Row,
) -> Row:
    size = round(size_gib * GIB)
    with start_shim(shim_dir, config) as shim:
        _wait_idle(shim)
        idle_kb = proc_status(shim.pid).get("VmHWM", 0)
        cacert = shim.ca_cert if url.startswith("https://") else None
        sampler = PeakSampler([shim.pid], ("RssAnon", "RssFile"), interval=0.01)
        with cpu_load(setup.cpu_load), sampler as memory:
            seconds = curl(url, proxy=shim.proxy, cacert=cacert, expect_size=size)
        peak_kb = proc_status(shim.pid).get("VmHWM", 0)
    speed = size / seconds / MB
    peak = _mb(peak_kb)
    return Row(
        size_gib,
        scenario,
        seconds,
        speed,
        ratio=speed / baseline.mb_per_s,
        baseline=baseline.scenario,
        idle_rss_mb=_mb(idle_kb),
        peak_rss_mb=peak,
        peak_anon_mb=_mb(memory.peak_kb["RssAnon"]),
        peak_file_mb=_mb(memory.peak_kb["RssFile"]),
        verdict="ok" if peak < PEAK_TARGET_MB else "OVER",
    )


def _wait_idle(shim: ShimProcess, timeout: float = 30.0) -> None:
    """Until the shim has done what it does after start-up (the credentials check, which builds
    each bucket's SDK client), so the idle figure is its resting size."""
    deadline = time.monotonic() + timeout
    while not any(name.startswith("shim_bucket_credentials{") for name in shim.metrics()):
        if time.monotonic() > deadline:
            raise RuntimeError("the shim did not report its credentials check")
        time.sleep(0.1)


def table(rows: list[Row]) -> str:
    head = (
        f"{'size':>6} {'scenario':<16} {'MB/s':>6} {'ratio':>5} {'vs':<13} "
        f"{'idle MB':>7} {'VmHWM MB':>8} {'anon MB':>7} {'file MB':>7} {'<150MB':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:

        def fmt(value: float | None, spec: str) -> str:
            return format(value, spec) if value is not None else "-"

        lines.append(
            f"{size_label(r.size_gib):>6} {r.scenario:<16} {r.mb_per_s:>6.0f} "
            f"{fmt(r.ratio, '.2f'):>5} {r.baseline or '':<13} {fmt(r.idle_rss_mb, '.0f'):>7} "
            f"{fmt(r.peak_rss_mb, '.0f'):>8} {fmt(r.peak_anon_mb, '.0f'):>7} "
            f"{fmt(r.peak_file_mb, '.0f'):>7} {r.verdict or '-':>6}"
        )
    return "\n".join(lines)


def chart(rows: list[Row], cpu_load: int, path: Path) -> None:
    """Peak RSS per shim scenario, a bar per object size: the idle shim, and what the transfer
    added on top, against the target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shim_rows = [r for r in rows if r.peak_rss_mb is not None]
    scenarios = list(dict.fromkeys(r.scenario for r in shim_rows))
    sizes = list(dict.fromkeys(r.size_gib for r in shim_rows))
    width = 0.8 / len(sizes)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for i, size_gib in enumerate(sizes):
        by_scenario = {r.scenario: r for r in shim_rows if r.size_gib == size_gib}
        xs = [s + (i - (len(sizes) - 1) / 2) * width for s in range(len(scenarios))]
        idle = [by_scenario[name].idle_rss_mb or 0.0 for name in scenarios]
        peak = [by_scenario[name].peak_rss_mb or 0.0 for name in scenarios]
        added = [p - i for p, i in zip(peak, idle, strict=True)]
        ax.bar(xs, idle, width, color="#8da0cb", label="idle shim" if i == 0 else None)
        ax.bar(xs, added, width, bottom=idle, color="#4c72b0" if i % 2 == 0 else "#55a868",
               label=f"added by the {size_label(size_gib)} transfer")  # fmt: skip
    ax.axhline(PEAK_TARGET_MB, color="#c44e52", linestyle="--", label="target")
    ax.set_xticks(range(len(scenarios)), scenarios)
    ax.set_ylabel("peak RSS (VmHWM), MB")
    ax.set_title(f"Peak memory of one shim process per transfer, {cpu_load} busy loops running")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes-gib", default="1,8", help="object sizes, e.g. 1,8 or 0.125")
    parser.add_argument(
        "--cpu-load", type=int, default=2, help="busy-loop processes during every transfer"
    )
    parser.add_argument("--origin-rate-mb", type=float, default=250.0)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "s3.json")
    args = parser.parse_args()
    sizes = [float(s) for s in args.sizes_gib.split(",")]
    with tempfile.TemporaryDirectory(prefix="shim-bench-", dir="/var/tmp") as tmp:
        rows = run(sizes, args.origin_rate_mb * MB, args.cpu_load, Path(tmp))
    print(table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "origin_rate_mb_per_s": args.origin_rate_mb,
                "cpu_load_processes": args.cpu_load,
                "cpus": os.cpu_count(),
                "peak_target_mb": PEAK_TARGET_MB,
                "rows": [asdict(r) for r in rows],
            },
            indent=2,
        )
    )
    chart(rows, args.cpu_load, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and its chart")


if __name__ == "__main__":
    main()
