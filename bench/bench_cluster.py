"""N nodes pull one model at the same moment through Dragonfly, in the style of Kraken's figures.

    python -m bench.bench_cluster [--size-mib 1024] [--nodes 2,4,8] [--runs 5]
        [--origin-rate-mb 50] [--settings default,one-origin] [--out FILE]

Each node is a real `shim run` forwarding to its own Rust dfdaemon (its own hostname), all
registered with one scheduler; the origin is the strict S3 server behind a relay limited to an
object-storage-like rate. Every run starts cold: a fresh scheduler and fresh dfdaemons and shims,
and a fresh key (a server-side copy of one random object), so no task, piece or cache entry
survives from an earlier run. The nodes' curls are released by one barrier; each node's time is
from that release until its curl has the whole object, and its file must hash to the object's
SHA-256: a run with a failed download or a wrong byte is reported as failed, left out of the
figures, and makes the benchmark exit 1 once the other runs are done.

Per N and Dragonfly setting (SETTINGS below; `--scheduler-config JSON` adds one), run by run in
turn: p50 and p99 of the node times over all runs, the origin's bytes in copies of the object
(ideal 1.0), how many runs fetched more than one copy, the dfdaemons that fetched from the origin
(their back-to-source traffic), why the scheduler sent each there (its log), the shims that
fetched directly (their dfdaemon failed), and the nodes' peak memory. Prints a table, writes JSON
and a chart.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig

from bench._files import write_random
from bench._proc import PeakSampler
from tests.support.dragonfly import Dfdaemon, Scheduler, start_dfdaemons, start_scheduler
from tests.support.procs import direct_opener
from tests.support.relay import Relay
from tests.support.servers import REPO_ROOT, S3Server, s3_client, start_s3rver
from tests.support.shim_process import ShimProcess, s3_bucket_config, start_shim

BUCKET = "models"
SOURCE_KEY = "source/model.bin"
# More than this many copies of the object from the origin counts as a run that fetched twice;
# headers and every peer's 1-byte probe add well under 1%.
EXTRA_COPY_THRESHOLD = 1.1


@dataclass
class Setting:
    """What is merged over tests/support/dragonfly.py's scheduler.yaml and dfdaemon.yaml."""

    scheduler: dict[str, Any]
    dfdaemon: dict[str, Any]


# The helpers' scheduler sets backToSourceCount: 1, which lets TWO peers of a task fetch from the
# origin: scheduler v2.5.1 lets a peer go while `len(back-to-source peers) <= backToSourceCount`,
# and refuses 0 at start. The second one goes when it finds no parent `retryBackToSourceLimit` (4)
# times `retryInterval` (500 ms +-25%) apart, e.g. after its only parent was blocklisted for a
# failed piece, or when it registered while the task was still pending (a check-then-act race).
# And a Rust dfdaemon fetches from the origin by itself, unknown to the scheduler, when scheduling
# fails or ends with pieces missing, unless `proxy.disableBackToSource`.
# "one-origin" closes the two paths configuration can close: the scheduler never sends a peer to
# the origin for want of a parent (retryBackToSourceLimit above retryLimit: it waits up to 40
# attempts, about 20 s, then fails) and no dfdaemon goes around it. The pending race stays.
SETTINGS: dict[str, Setting] = {
    "default": Setting(scheduler={}, dfdaemon={}),
    "one-origin": Setting(
        scheduler={"scheduler": {"retryBackToSourceLimit": 1000, "retryLimit": 40}},
        dfdaemon={"proxy": {"disableBackToSource": True}},
    ),
}


@dataclass
class NodeResult:
    seconds: float  # from the barrier's release until the whole object arrived
    first_byte_seconds: float  # curl's time to the first body byte
    route: str  # X-Shim-Route: dfdaemon, or fallback (shim fetched directly)
    sha256: str  # of the body the node received
    back_to_source_mb: float  # what this node's dfdaemon fetched from the origin


@dataclass
class RunResult:
    setting: str
    nodes: int
    run: int
    origin_bytes: int
    copies: float  # origin bytes / object size
    nodes_to_origin: int  # dfdaemons that fetched from the origin
    fallbacks: int  # shims that fetched directly, their dfdaemon having failed
    scheduler_reasons: list[str]  # why the scheduler sent each peer to the origin
    peak_rss_mb: float  # all dfdaemons and shims together
    node_results: list[NodeResult]


@dataclass
class Row:
    setting: str
    nodes: int
    runs: int
    p50_seconds: float
    p99_seconds: float
    p50_mb_per_s: float  # object size / p50 time, per node
    mean_copies: float
    max_copies: float
    runs_over_one_copy: int
    mean_nodes_to_origin: float
    fallbacks: int  # node downloads, over all runs, that shim fetched directly
    peak_rss_mb: float


def percentile(values: Sequence[float], fraction: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def back_to_source_bytes(daemon: Dfdaemon) -> int:
    """The dfdaemon's `download_traffic{type="BACK_TO_SOURCE"}` counter."""
    for attempt in range(3):
        try:
            with direct_opener.open(daemon.metrics_url, timeout=5) as response:
                text = response.read().decode()
            break
        except OSError:  # its metrics server reset a connection once under load
            if attempt == 2:
                raise
            time.sleep(1)
    match = re.search(
        r'^dragonfly_client_download_traffic\{type="BACK_TO_SOURCE"\} (\S+)$', text, re.MULTILINE
    )
    return int(float(match.group(1))) if match else 0


def scheduler_reasons(scheduler: Scheduler) -> list[str]:
    """Why the scheduler sent peers to the origin, one entry per peer sent."""
    return re.findall(r"send NeedBackToSourceResponse, because of ([^\t\n]*)", scheduler.output())


@contextmanager
def cluster(
    work: Path, nodes: int, relay: Relay, setting: Setting
) -> Iterator[tuple[Scheduler, list[Dfdaemon], list[ShimProcess]]]:
    """A scheduler, `nodes` dfdaemons and a shim in front of each, all started afresh."""
    with ExitStack() as stack:
        scheduler = stack.enter_context(
            start_scheduler(work / "scheduler", config=setting.scheduler)
        )
        daemons = [
            stack.enter_context(daemon)
            for daemon in start_dfdaemons(
                work,
                [f"node-{i}" for i in range(nodes)],
                scheduler=scheduler,
                proxy_rules=[],
                config=setting.dfdaemon,
            )
        ]
        bucket = s3_bucket_config(BUCKET, relay.endpoint)
        # shim's defaults, fallback included: a dfdaemon failing before its first byte makes
        # that shim fetch directly, an origin copy the run counts (and reports by route).
        # Started side by side: each shim's start-up is mostly imports.
        with concurrent.futures.ThreadPoolExecutor(nodes) as pool:
            futures = [
                pool.submit(
                    start_shim,
                    work / f"shim-{i}",
                    {"dfdaemon": d.proxy_url, "buckets": [bucket]},
                    # Eight start-ups side by side on a loaded 2-core machine take a while.
                    timeout=120,
                )
                for i, d in enumerate(daemons)
            ]
            # Every shim that did start is stopped, even when another failed to.
            failures = []
            shims = []
            for future in futures:
                try:
                    shims.append(stack.enter_context(future.result()))
                except Exception as exc:  # re-raised below, once the others are in the stack
                    failures.append(exc)
            if failures:
                raise failures[0]
        yield scheduler, daemons, shims


def download_together(
    shims: Sequence[ShimProcess], url: str, headers_dir: Path
) -> list[NodeResult]:
    """Each shim's curl of `url`, all released at once by a barrier; each body is hashed as it
    streams (no copy on disk: eight 1 GiB files would not fit beside the dfdaemons' own).

    Raises if a curl fails. The results' back_to_source_mb is left at 0 for the caller.
    """
    barrier = threading.Barrier(len(shims) + 1)
    released = [0.0]

    def fetch(index: int, shim: ShimProcess) -> NodeResult:
        headers = headers_dir / f"node-{index}.headers"
        command = [
            "curl", "-sS", "-f", "--noproxy", "", "-x", shim.proxy, "-o", "-", "-D", str(headers),
            "-w", "%{stderr}%{time_starttransfer}", url,
        ]  # fmt: skip
        digest = hashlib.sha256()
        barrier.wait()
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as curl:
            assert curl.stdout is not None and curl.stderr is not None
            while chunk := curl.stdout.read(1 << 20):
                digest.update(chunk)
            stderr = curl.stderr.read().decode(errors="replace")
        finished = time.monotonic()
        if curl.returncode != 0:
            raise RuntimeError(f"curl through {shim.proxy} failed: {stderr.strip()}")
        route = re.search(r"^x-shim-route: (\S+)", headers.read_text(), re.M | re.I)
        return NodeResult(
            seconds=finished - released[0],
            first_byte_seconds=float(stderr),
            route=route.group(1) if route else "none",
            sha256=digest.hexdigest(),
            back_to_source_mb=0.0,
        )

    with concurrent.futures.ThreadPoolExecutor(len(shims)) as pool:
        futures = [pool.submit(fetch, i, shim) for i, shim in enumerate(shims)]
        released[0] = time.monotonic()
        barrier.wait()
        return [future.result() for future in futures]


def one_run(
    work: Path,
    origin: S3Server,
    relay: Relay,
    *,
    setting: str,
    nodes: int,
    run: int,
    size: int,
    digest: str,
) -> RunResult:
    key = f"runs/{setting}/n{nodes}/r{run}/model.bin"
    client = s3_client(origin)
    client.copy_object(Bucket=BUCKET, Key=key, CopySource={"Bucket": BUCKET, "Key": SOURCE_KEY})
    run_dir = work / f"{setting}-n{nodes}-r{run}"
    try:
        with cluster(run_dir, nodes, relay, SETTINGS[setting]) as (scheduler, daemons, shims):
            pids = [d.pid for d in daemons] + [s.pid for s in shims]
            before = relay.bytes_down
            with PeakSampler(pids, ("VmRSS",), interval=0.5) as rss:
                fetched = download_together(shims, f"{relay.endpoint}/{BUCKET}/{key}", run_dir)
            origin_bytes = relay.bytes_down - before
            for index, node in enumerate(fetched):
                if node.sha256 != digest:
                    raise RuntimeError(f"node-{index}: sha256 {node.sha256}, the object's {digest}")
            for node, daemon in zip(fetched, daemons, strict=True):
                node.back_to_source_mb = back_to_source_bytes(daemon) / 1e6
            reasons = scheduler_reasons(scheduler)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
        client.delete_object(Bucket=BUCKET, Key=key)
    return RunResult(
        setting=setting,
        nodes=nodes,
        run=run,
        origin_bytes=origin_bytes,
        copies=origin_bytes / size,
        nodes_to_origin=sum(1 for node in fetched if node.back_to_source_mb > 0),
        fallbacks=sum(1 for node in fetched if node.route != "dfdaemon"),
        scheduler_reasons=reasons,
        peak_rss_mb=rss.peak_kb["VmRSS"] * 1024 / 1e6,
        node_results=fetched,
    )


def summarize(runs: Sequence[RunResult], size: int) -> Row:
    times = [n.seconds for r in runs for n in r.node_results]
    p50 = statistics.median(times)
    return Row(
        setting=runs[0].setting,
        nodes=runs[0].nodes,
        runs=len(runs),
        p50_seconds=p50,
        p99_seconds=percentile(times, 0.99),
        p50_mb_per_s=size / p50 / 1e6,
        mean_copies=statistics.mean(r.copies for r in runs),
        max_copies=max(r.copies for r in runs),
        runs_over_one_copy=sum(1 for r in runs if r.copies > EXTRA_COPY_THRESHOLD),
        mean_nodes_to_origin=statistics.mean(r.nodes_to_origin for r in runs),
        fallbacks=sum(r.fallbacks for r in runs),
        peak_rss_mb=max(r.peak_rss_mb for r in runs),
    )


def progress(result: RunResult) -> str:
    times = sorted(n.seconds for n in result.node_results)
    return (
        f"{result.setting} N={result.nodes} run {result.run}: {times[0]:.1f}-{times[-1]:.1f} s, "
        f"{result.copies:.2f} copies, {result.nodes_to_origin} dfdaemons to the origin, "
        f"{result.fallbacks} fallbacks, RSS {result.peak_rss_mb:.0f} MB; "
        f"scheduler: {result.scheduler_reasons}"
    )


def table(rows: Sequence[Row]) -> str:
    lines = [
        f"{'setting':<11} {'N':>2} {'p50 s':>6} {'p99 s':>6} {'MB/s':>5} {'copies':>6} "
        f"{'worst':>6} {'>1 copy':>7} {'to origin':>9} {'fallback':>8} {'RSS MB':>7}"
    ]
    for r in rows:
        lines.append(
            f"{r.setting:<11} {r.nodes:>2} {r.p50_seconds:>6.1f} {r.p99_seconds:>6.1f} "
            f"{r.p50_mb_per_s:>5.0f} {r.mean_copies:>6.2f} {r.max_copies:>6.2f} "
            f"{r.runs_over_one_copy:>3}/{r.runs:<3} {r.mean_nodes_to_origin:>9.1f} "
            f"{r.fallbacks:>8} {r.peak_rss_mb:>7.0f}"
        )
    return "\n".join(lines)


def chart(rows: Sequence[Row], origin_rate: float, size: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    settings = list(dict.fromkeys(r.setting for r in rows))
    all_nodes = sorted({r.nodes for r in rows})
    width = 0.8 / len(settings)
    colors = ["#4c72b0", "#55a868", "#c44e52", "#8172b2"]
    for i, setting in enumerate(settings):
        mine = {r.nodes: r for r in rows if r.setting == setting}
        xs = [all_nodes.index(n) + (i - (len(settings) - 1) / 2) * width for n in mine]
        color = colors[i % len(colors)]
        left.bar(xs, [r.p50_seconds for r in mine.values()], width, color=color,
                 label=f"{setting}: p50")  # fmt: skip
        left.scatter(xs, [r.p99_seconds for r in mine.values()], color="black", marker="_",
                     s=400, zorder=3, label="p99" if i == 0 else None)  # fmt: skip
        right.bar(xs, [r.mean_copies for r in mine.values()], width, color=color,
                  label=f"{setting}: mean")  # fmt: skip
        right.scatter(xs, [r.max_copies for r in mine.values()], color="black", marker="_",
                      s=400, zorder=3, label="worst run" if i == 0 else None)  # fmt: skip
    left.axhline(size / origin_rate, color="#c44e52", linestyle="--",
                 label="one copy at the origin's rate")  # fmt: skip
    left.set_xticks(range(len(all_nodes)), [str(n) for n in all_nodes])
    left.set_xlabel("nodes downloading at once")
    left.set_ylabel("seconds to the whole object, per node")
    left.set_title(
        f"Time to complete ({size / 2**20:.0f} MiB, origin {origin_rate / 1e6:.0f} MB/s)"
    )
    left.legend(fontsize=8)
    right.axhline(1.0, color="#c44e52", linestyle="--", label="ideal: one copy")
    right.set_xticks(range(len(all_nodes)), [str(n) for n in all_nodes])
    right.set_xlabel("nodes downloading at once")
    right.set_ylabel("origin bytes / object size")
    right.set_title("Origin traffic")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def report(
    runs: Sequence[RunResult],
    failures: Sequence[str],
    settings: Sequence[str],
    node_counts: Sequence[int],
    out: Path,
    size: int,
    origin_rate: float,
) -> None:
    """Print the table and write the JSON and the chart of the runs so far."""
    rows = [
        summarize(mine, size)
        for setting in settings
        for nodes in sorted(node_counts)
        if (mine := [r for r in runs if r.setting == setting and r.nodes == nodes])
    ]
    print()
    print(table(rows))
    for failure in failures:
        print(f"FAILED {failure}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(
        {"size_bytes": size, "origin_rate_mb_per_s": origin_rate / 1e6, "cpus": os.cpu_count(),
         "settings": {s: asdict(SETTINGS[s]) for s in settings},
         "rows": [asdict(r) for r in rows], "runs": [asdict(r) for r in runs],
         "failures": list(failures)},
        indent=2))  # fmt: skip
    chart(rows, origin_rate, size, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}\n", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size-mib", type=int, default=1024, help="the model's size")
    parser.add_argument("--nodes", default="2,4,8", help="comma-separated node counts")
    parser.add_argument("--runs", type=int, default=5, help="runs per node count and setting")
    parser.add_argument("--origin-rate-mb", type=float, default=50.0, help="MB/s")
    parser.add_argument(
        "--settings", default=",".join(SETTINGS), help=f"Dragonfly settings of {sorted(SETTINGS)}"
    )
    parser.add_argument(
        "--scheduler-config",
        type=json.loads,
        default=None,
        help='another setting, "custom": JSON merged over scheduler.yaml, e.g. '
        '\'{"scheduler": {"retryInterval": "200ms"}}\'',
    )
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT / "bench" / "results" / "cluster.json"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("/var/tmp"),
        help="where the origin's and the dfdaemons' copies go: 2 + N GiB at 1 GiB (/dev/shm: RAM)",
    )
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C: every process started is stopped, every copy removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    node_counts = [int(n) for n in args.nodes.split(",")]
    settings = args.settings.split(",")
    if args.scheduler_config is not None:
        SETTINGS["custom"] = Setting(scheduler=args.scheduler_config, dfdaemon={})
        settings.append("custom")
    if unknown := [s for s in settings if s not in SETTINGS]:
        parser.error(f"unknown settings {unknown}; known: {sorted(SETTINGS)}")
    size = args.size_mib << 20
    origin_rate = args.origin_rate_mb * 1e6

    runs: list[RunResult] = []
    failures: list[str] = []
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="shim-bench-cluster-",
                                                                    dir=args.workdir)))  # fmt: skip
        source = work / "model.bin"
        digest = write_random(source, args.size_mib << 20)
        origin = stack.enter_context(start_s3rver(work / "origin"))
        client = s3_client(origin)
        client.create_bucket(Bucket=BUCKET)
        # One PUT: the object's ETag is its MD5, which every shim checks the bytes against.
        client.upload_file(str(source), BUCKET, SOURCE_KEY,
                           Config=TransferConfig(multipart_threshold=size + 1))  # fmt: skip
        source.unlink()
        relay = stack.enter_context(Relay(origin.host, origin.port))
        relay.rate_limit_bytes_per_s = origin_rate
        print(f"{args.size_mib} MiB model, origin limited to {args.origin_rate_mb:.0f} MB/s; "
              f"{args.runs} runs per node count and setting", flush=True)  # fmt: skip
        # Settings alternate run by run, so both see the same machine.
        for nodes in node_counts:
            for run in range(args.runs):
                for setting in settings:
                    try:
                        result = one_run(work, origin, relay, setting=setting, nodes=nodes,
                                         run=run, size=size, digest=digest)  # fmt: skip
                    # A failed download, wrong bytes, a slow start, a reset connection.
                    except (RuntimeError, OSError) as exc:
                        failures.append(f"{setting} N={nodes} run {run}: {exc}")
                        print(f"  FAILED {failures[-1]}", flush=True)
                        continue
                    print(f"  {progress(result)}", flush=True)
                    runs.append(result)
            # After each N, so a run cut short still leaves the figures of the Ns it finished.
            report(runs, failures, settings, node_counts, args.out, size, origin_rate)

    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
