"""What revalidation costs: latency added to a cache hit, and origin requests for hot objects.

    python -m bench.bench_revalidate [--hits 400] [--objects 20] [--seconds 60] [--out FILE]

A strict s3rver behind a counting relay holds the objects; one `shim run` per policy proxies
it (embedded cache): `always`, `after 10s`, `after 60s` and `never`. Everything runs side by
side in one run, the requests interleaved across the shims, so every policy meets the same
machine load.

1. Latency per hit: each shim's copy of one 64 KiB object is fetched once (the miss), then
   --hits times per shim, round robin, over one keep-alive connection each. `never` and a fresh
   `after` are zero-copy hits; `always` is a conditional GET to the origin (304) before each.
2. Origin requests for N hot objects: --objects objects per shim, each fetched once, then
   looped over for --seconds, round robin across the shims. Origin requests per minute are
   the shim's revalidations plus its fills in that time (from its /metrics), next to the hits
   it served; the ideal for `after T` is N objects every T seconds.

Prints a table and writes JSON (bench/results/revalidate.json).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tests.support.relay import Relay
from tests.support.servers import REPO_ROOT, put_object, s3_client, start_s3rver
from tests.support.shim_process import ShimProcess, s3_bucket_config, start_shim

BUCKET = "revalidate"
SIZE = 64 * 1024
# The policies compared: a name for the table, and the bucket's ``revalidate`` value.
POLICIES = (("always", "always"), ("after 10s", "10s"), ("after 60s", "60s"), ("never", "never"))


@dataclass
class LatencyRow:
    policy: str
    hits: int
    p50_ms: float
    p99_ms: float
    added_p50_ms: float  # against ``never``


@dataclass
class LoadRow:
    policy: str
    objects: int
    seconds: float
    hits_per_min: float
    origin_requests_per_min: float
    ideal_per_min: float


class Client:
    """One keep-alive connection to a shim's proxy port; GETs by absolute URL."""

    def __init__(self, shim: ShimProcess) -> None:
        self._conn = http.client.HTTPConnection("127.0.0.1", shim.proxy_port, timeout=60)

    def get(self, url: str) -> tuple[float, bytes]:
        start = time.perf_counter()
        self._conn.request("GET", url)
        response = self._conn.getresponse()
        body = response.read()
        elapsed = time.perf_counter() - start
        if response.status != 200:
            raise RuntimeError(f"GET {url}: {response.status}")
        return elapsed, body

    def close(self) -> None:
        self._conn.close()


def origin_requests(shim: ShimProcess) -> float:
    samples = shim.metrics()
    checks = sum(v for k, v in samples.items() if k.startswith("shim_revalidations_total{"))
    return checks + samples.get("shim_origin_fetches_total", 0.0)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(fraction * len(ordered)), len(ordered) - 1)]


def measure_latency(
    shims: dict[str, ShimProcess], url: str, body: bytes, hits: int
) -> list[LatencyRow]:
    clients = {name: Client(shim) for name, shim in shims.items()}
    try:
        for client in clients.values():
            client.get(url)  # the miss
        times: dict[str, list[float]] = {name: [] for name in shims}
        for _ in range(hits):
            for name, client in clients.items():
                elapsed, got = client.get(url)
                if got != body:
                    raise RuntimeError(f"{name}: wrong body")
                times[name].append(elapsed)
    finally:
        for client in clients.values():
            client.close()
    baseline = statistics.median(times["never"])
    return [
        LatencyRow(
            policy=name,
            hits=hits,
            p50_ms=round(statistics.median(values) * 1000, 3),
            p99_ms=round(percentile(values, 0.99) * 1000, 3),
            added_p50_ms=round((statistics.median(values) - baseline) * 1000, 3),
        )
        for name, values in times.items()
    ]


def measure_load(
    shims: dict[str, ShimProcess], urls: list[str], seconds: float, periods: dict[str, float]
) -> list[LoadRow]:
    clients = {name: Client(shim) for name, shim in shims.items()}
    served = dict.fromkeys(shims, 0)
    try:
        for client in clients.values():
            for url in urls:
                client.get(url)  # the misses
        before = {name: origin_requests(shim) for name, shim in shims.items()}
        start = time.monotonic()
        index = 0
        while time.monotonic() - start < seconds:
            url = urls[index % len(urls)]
            for name, client in clients.items():
                client.get(url)
                served[name] += 1
            index += 1
        elapsed = time.monotonic() - start
        after = {name: origin_requests(shim) for name, shim in shims.items()}
    finally:
        for client in clients.values():
            client.close()
    per_min = 60.0 / elapsed
    rows = []
    for name in shims:
        hits_per_min = served[name] * per_min
        period = periods[name]
        # Every hit checks (always); each object once per period; none (never).
        ideal = hits_per_min if period == 0 else len(urls) * 60.0 / period
        rows.append(
            LoadRow(
                policy=name,
                objects=len(urls),
                seconds=round(elapsed, 1),
                hits_per_min=round(hits_per_min),
                origin_requests_per_min=round((after[name] - before[name]) * per_min, 1),
                ideal_per_min=round(ideal, 1),
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hits", type=int, default=400)
    parser.add_argument("--objects", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench/results/revalidate.json")
    args = parser.parse_args()
    periods = {"always": 0.0, "after 10s": 10.0, "after 60s": 60.0, "never": float("inf")}
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-reval-")))
        origin = stack.enter_context(start_s3rver(tmp / "s3rver"))
        relay = stack.enter_context(Relay(origin.host, origin.port))
        client = s3_client(origin)
        body = os.urandom(SIZE)
        put_object(client, BUCKET, "hit.bin", body)
        urls = [f"{relay.endpoint}/{BUCKET}/hot-{i}.bin" for i in range(args.objects)]
        for i in range(args.objects):
            put_object(client, BUCKET, f"hot-{i}.bin", os.urandom(SIZE))
        shims = {}
        for index, (name, value) in enumerate(POLICIES):
            bucket = {**s3_bucket_config(BUCKET, relay.endpoint), "revalidate": value}
            shims[name] = stack.enter_context(
                start_shim(tmp / f"shim-{index}", {"buckets": [bucket]})
            )
        latency = measure_latency(shims, f"{relay.endpoint}/{BUCKET}/hit.bin", body, args.hits)
        load = measure_load(shims, urls, args.seconds, periods)

    print(f"\nLatency per {SIZE // 1024} KiB hit ({args.hits} hits per policy, interleaved):")
    print("| policy | p50 ms | p99 ms | added p50 ms |\n|---|---|---|---|")
    for row in latency:
        print(f"| {row.policy} | {row.p50_ms} | {row.p99_ms} | {row.added_p50_ms} |")
    print(f"\nOrigin requests for {args.objects} hot objects ({load[0].seconds} s, interleaved):")
    print("| policy | hits/min | origin requests/min | ideal |\n|---|---|---|---|")
    for load_row in load:
        print(
            f"| {load_row.policy} | {load_row.hits_per_min} | "
            f"{load_row.origin_requests_per_min} | {load_row.ideal_per_min} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "size": SIZE,
        "latency": [asdict(row) for row in latency],
        "load": [asdict(row) for row in load],
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
