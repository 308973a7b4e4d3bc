"""Load: many concurrent small-object clients and two looped large downloads through one shim.

    python -m bench.bench_load [--seconds 60] [--clients 200] [--quick] [--out FILE]

A strict s3rver holds --small-objects objects of 4-64 KiB and two of --large-mib MiB; a fresh
`shim run` (embedded cache, cold at the start) proxies them. For --seconds, --clients clients
(one keep-alive connection each, aiohttp in this process's event loop) loop GETs of random small
objects through the proxy and check every body byte for byte, while two curl processes loop
downloads of one large object each. The cache starts cold, so the first GETs of each object are
misses (concurrent ones share one origin fetch) and the rest hits: the table counts both.

Reported: small GETs per second, their p50/p99 latency, errors of any kind (a failed request, a
status other than 200, a wrong body; target 0), the large downloads' MB/s, shim's peak memory
(VmHWM) and its RSS sampled every --sample-interval s: flat when the mean of the first 10 s and of
the last 10 s differ by little. The CPU share of shim and of this client is printed too: a
client near 100 % of a core is the bottleneck, and the request rate is then a lower bound.
--quick is a smoke test: 10 s, 50 clients, 64 MiB large objects. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp

from bench._files import write_random
from bench._proc import proc_status
from tests.support.servers import REPO_ROOT, S3Server, s3_client, start_s3rver
from tests.support.shim_process import ShimProcess, s3_bucket_config, start_shim

BUCKET = "load"
KIB, MIB = 1024, 1024**2
SMALL_SIZES = (4 * KIB, 64 * KIB)
LARGE_STREAMS = 2
# Seconds at the start and at the end of the run whose mean RSS are compared.
FLAT_WINDOW = 10.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class SmallStats:
    latencies: list[float] = field(default_factory=list)  # seconds, successful GETs only
    cache: Counter[str] = field(default_factory=Counter)  # X-Shim-Cache of successful GETs
    errors: Counter[str] = field(default_factory=Counter)


@dataclass
class Download:
    stream: int
    seconds: float
    mb_per_s: float
    cache: str  # X-Shim-Cache


@dataclass
class MemorySample:
    t: float  # seconds since the load started
    rss_mb: float
    anon_mb: float
    file_mb: float


@dataclass
class Result:
    seconds: float
    clients: int
    small_objects: int
    large_mib: int
    requests: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    hits: int
    misses: int
    errors: dict[str, int]
    large_downloads: int
    large_mb_per_s: float  # both streams together: their bytes over the run's wall time
    large_errors: dict[str, int]
    peak_rss_mb: float  # VmHWM at the end
    rss_first_mb: float  # mean VmRSS of the first FLAT_WINDOW s
    rss_last_mb: float  # ... and of the last
    anon_first_mb: float
    anon_last_mb: float
    shim_cpu_percent: float  # of one core
    client_cpu_percent: float  # this process: the small-GET clients and the sampler
    curl_cpu_percent: float
    origin_fetches: float  # shim_origin_fetches_total
    load_average: tuple[float, float]  # 1-minute, before and after: the machine is shared
    downloads: list[Download]
    samples: list[MemorySample]


def percentile(sorted_values: list[float], fraction: float) -> float:
    """The value below which ``fraction`` of ``sorted_values`` lie (nearest rank); 0 if empty."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, round(fraction * len(sorted_values)) - 1))
    return sorted_values[rank]


def window_mean(samples: list[MemorySample], start: float, end: float, attr: str) -> float:
    values = [getattr(s, attr) for s in samples if start <= s.t <= end]
    return statistics.fmean(values) if values else 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    # After the command name: state is field 3, utime 14 and stime 15 (proc(5)).
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


async def small_client(
    session: aiohttp.ClientSession,
    proxy: str,
    objects: list[tuple[str, bytes]],
    deadline: float,
    rng: random.Random,
    stats: SmallStats,
) -> None:
    while time.monotonic() < deadline:
        url, body = rng.choice(objects)
        started = time.perf_counter()
        try:
            async with session.get(url, proxy=proxy) as response:
                data = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            stats.errors[type(exc).__name__] += 1
            await asyncio.sleep(0.1)  # no busy loop against a proxy that is down
            continue
        elapsed = time.perf_counter() - started
        if response.status != 200:
            stats.errors[f"status {response.status}"] += 1
        elif data != body:
            stats.errors["wrong body"] += 1
        else:
            stats.latencies.append(elapsed)
            stats.cache[response.headers.get("X-Shim-Cache", "none")] += 1


async def large_stream(
    stream: int,
    url: str,
    proxy: str,
    size: int,
    deadline: float,
    downloads: list[Download],
    errors: Counter[str],
) -> None:
    """Download ``url`` with curl, again and again until ``deadline``."""
    # curl honours NO_PROXY even with -x: keep the environment from sending it around shim.
    env = {k: v for k, v in os.environ.items() if k.lower() != "no_proxy"}
    write_out = "%{http_code} %{size_download} %{time_total} %header{x-shim-cache}"
    while time.monotonic() < deadline:
        curl = await asyncio.create_subprocess_exec(
            *("curl", "-sS", "-x", proxy, "-o", "/dev/null", "-w", write_out, url),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        out, _ = await curl.communicate()
        status, got, seconds, *cache = out.decode().split() or ["000", "0", "0"]
        if curl.returncode != 0 or status != "200" or int(got) != size:
            errors[f"curl {curl.returncode}, status {status}, {got} of {size} bytes"] += 1
            await asyncio.sleep(0.1)
            continue
        elapsed = float(seconds)
        downloads.append(Download(stream, elapsed, size / elapsed / 1e6, "".join(cache)))


async def sample_memory(
    pid: int, started: float, interval: float, stop: asyncio.Event, samples: list[MemorySample]
) -> None:
    while not stop.is_set():
        fields = proc_status(pid)
        samples.append(
            MemorySample(
                time.monotonic() - started,
                fields.get("VmRSS", 0) / 1024,
                fields.get("RssAnon", 0) / 1024,
                fields.get("RssFile", 0) / 1024,
            )
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


@dataclass
class Load:
    """What the load phase measured; CPU in seconds used during it."""

    small: SmallStats = field(default_factory=SmallStats)
    downloads: list[Download] = field(default_factory=list)
    large_errors: Counter[str] = field(default_factory=Counter)
    samples: list[MemorySample] = field(default_factory=list)
    wall: float = 0.0
    shim_cpu: float = 0.0
    client_cpu: float = 0.0
    curl_cpu: float = 0.0


async def load(
    shim: ShimProcess,
    small: list[tuple[str, bytes]],
    large_urls: list[str],
    large_size: int,
    seconds: float,
    clients: int,
    sample_interval: float,
) -> Load:
    out = Load()
    stop_sampling = asyncio.Event()
    # No pool limit: each client keeps its own keep-alive connection and never waits for another.
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, trust_env=False, auto_decompress=False
    ) as session:
        shim_cpu, client_cpu, curl_cpu = cpu_seconds(shim.pid), time.process_time(), curl_cpus()
        started = time.monotonic()
        deadline = started + seconds
        sampler = asyncio.create_task(
            sample_memory(shim.pid, started, sample_interval, stop_sampling, out.samples)
        )
        await asyncio.gather(
            *(
                small_client(session, shim.proxy, small, deadline, random.Random(i), out.small)
                for i in range(clients)
            ),
            *(
                large_stream(
                    i, url, shim.proxy, large_size, deadline, out.downloads, out.large_errors
                )
                for i, url in enumerate(large_urls)
            ),
        )
        out.wall = time.monotonic() - started
        stop_sampling.set()
        await sampler
        out.shim_cpu = cpu_seconds(shim.pid) - shim_cpu
        out.client_cpu = time.process_time() - client_cpu
        out.curl_cpu = curl_cpus() - curl_cpu
    return out


def curl_cpus() -> float:
    """CPU seconds of this process's finished children: the curl downloads (s3rver and shim
    still run)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def upload(s3: S3Server, workdir: Path, count: int, large_size: int) -> list[tuple[str, bytes]]:
    """Store ``count`` small objects and LARGE_STREAMS large ones; returns the small (key, body)."""
    client = s3_client(s3)
    client.create_bucket(Bucket=BUCKET)
    rng = random.Random(7)
    small = []
    for i in range(count):
        key = f"small/{i:03d}.bin"
        body = rng.randbytes(rng.randint(*SMALL_SIZES))
        client.put_object(Bucket=BUCKET, Key=key, Body=body)
        small.append((key, body))
    source = workdir / "large.bin"
    for i in range(LARGE_STREAMS):
        write_random(source, large_size)
        with source.open("rb") as body_file:
            # One PUT, not multipart: the ETag is the MD5, which shim checks on its fill.
            client.put_object(Bucket=BUCKET, Key=f"large/{i}.bin", Body=body_file)
    source.unlink()
    return small


def run(
    workdir: Path,
    *,
    seconds: float,
    clients: int,
    small_objects: int,
    large_mib: int,
    sample_interval: float,
) -> Result:
    large_size = large_mib * MIB
    load_before = os.getloadavg()[0]
    with start_s3rver(workdir / "s3rver") as s3:
        print(f"uploading {small_objects} small and {LARGE_STREAMS} large objects...", flush=True)
        small = upload(s3, workdir, small_objects, large_size)
        base = f"{s3.endpoint}/{BUCKET}"
        config = {"buckets": [s3_bucket_config(BUCKET, s3.endpoint)]}
        with start_shim(workdir / "shim", config) as shim:
            print(
                f"load: {clients} clients and {LARGE_STREAMS} large downloads for {seconds:.0f} s"
            )
            out = asyncio.run(
                load(
                    shim,
                    [(f"{base}/{key}", body) for key, body in small],
                    [f"{base}/large/{i}.bin" for i in range(LARGE_STREAMS)],
                    large_size,
                    seconds,
                    clients,
                    sample_interval,
                )
            )
            peak_kb = proc_status(shim.pid).get("VmHWM", 0)
            origin_fetches = shim.metrics().get("shim_origin_fetches_total", float("nan"))
    latencies = sorted(out.small.latencies)
    window = min(FLAT_WINDOW, seconds / 4)
    last = out.samples[-1].t if out.samples else 0.0
    wall = out.wall
    return Result(
        seconds=wall,
        clients=clients,
        small_objects=small_objects,
        large_mib=large_mib,
        requests=len(latencies),
        requests_per_s=len(latencies) / wall,
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        max_ms=latencies[-1] * 1000 if latencies else 0.0,
        hits=out.small.cache["HIT"],
        misses=out.small.cache["MISS"],
        errors=dict(out.small.errors),
        large_downloads=len(out.downloads),
        large_mb_per_s=len(out.downloads) * large_size / wall / 1e6,
        large_errors=dict(out.large_errors),
        peak_rss_mb=peak_kb / 1024,
        rss_first_mb=window_mean(out.samples, 0, window, "rss_mb"),
        rss_last_mb=window_mean(out.samples, last - window, last, "rss_mb"),
        anon_first_mb=window_mean(out.samples, 0, window, "anon_mb"),
        anon_last_mb=window_mean(out.samples, last - window, last, "anon_mb"),
        shim_cpu_percent=100 * out.shim_cpu / wall,
        client_cpu_percent=100 * out.client_cpu / wall,
        curl_cpu_percent=100 * out.curl_cpu / wall,
        origin_fetches=origin_fetches,
        load_average=(load_before, os.getloadavg()[0]),
        downloads=out.downloads,
        samples=out.samples,
    )


def table(r: Result) -> str:
    errors = sum(r.errors.values()) + sum(r.large_errors.values())
    window = min(FLAT_WINDOW, r.seconds / 4)
    large_misses = sum(d.cache == "MISS" for d in r.downloads)
    rows = [
        ("run", f"{r.seconds:.1f} s, {r.clients} clients, {r.small_objects} objects of 4-64 KiB"),
        ("small GETs", f"{r.requests} ({r.hits} hits, {r.misses} misses)"),
        ("requests/s", f"{r.requests_per_s:.0f}"),
        ("latency p50/p99/max", f"{r.p50_ms:.1f} / {r.p99_ms:.1f} / {r.max_ms:.0f} ms"),
        ("errors", f"{errors} {r.errors or ''}{r.large_errors or ''}".strip()),
        (
            "large downloads",
            f"{r.large_downloads} x {r.large_mib} MiB ({large_misses} misses), "
            f"{r.large_mb_per_s:.0f} MB/s together",
        ),
        ("origin fetches", f"{r.origin_fetches:.0f}"),
        ("peak RSS (VmHWM)", f"{r.peak_rss_mb:.0f} MB"),
        (
            f"RSS first / last {window:.0f} s",
            f"{r.rss_first_mb:.0f} / {r.rss_last_mb:.0f} MB "
            f"(anon {r.anon_first_mb:.0f} / {r.anon_last_mb:.0f} MB)",
        ),
        (
            "CPU (% of a core)",
            f"shim {r.shim_cpu_percent:.0f}, client {r.client_cpu_percent:.0f}, "
            f"curl {r.curl_cpu_percent:.0f}",
        ),
        ("load average", f"{r.load_average[0]:.1f} before, {r.load_average[1]:.1f} after"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    if r.client_cpu_percent > 85:
        lines.append("note: the client used most of a core: it may be the bottleneck")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="10 s, 50 clients, 64 MiB objects")
    parser.add_argument("--seconds", type=float, default=None, help="default 60")
    parser.add_argument("--clients", type=int, default=None, help="default 200")
    parser.add_argument("--small-objects", type=int, default=50)
    parser.add_argument("--large-mib", type=int, default=None, help="default 256")
    parser.add_argument("--sample-interval", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=None, help="default bench/results/load.json")
    args = parser.parse_args()
    quick = args.quick
    seconds = args.seconds or (10.0 if quick else 60.0)
    clients = args.clients or (50 if quick else 200)
    large_mib = args.large_mib or (64 if quick else 256)
    name = "load-quick.json" if quick else "load.json"
    out_path: Path = args.out or REPO_ROOT / "bench" / "results" / name
    with tempfile.TemporaryDirectory(prefix="shim-bench-load-", dir="/var/tmp") as tmp:
        result = run(
            Path(tmp),
            seconds=seconds,
            clients=clients,
            small_objects=args.small_objects,
            large_mib=large_mib,
            sample_interval=args.sample_interval,
        )
    print(table(result))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(asdict(result), indent=2))
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
