"""Dragonfly's published TorchServe comparison, reproduced with real parts, side by side.

    python -m bench.bench_dragonfly [--size-mib 1100] [--origin-rate-mb 50] [--out FILE]

Dragonfly's TorchServe integration article times TorchServe downloading a model directly from
object storage with a signed URL, through Dragonfly on a cold cache, from a remote peer's cache
and from the local peer's cache. Here a real TorchServe registers a model archive of at least
1 GiB, the origin is the strict S3 server behind a relay limited to an object-storage-like rate,
the dfdaemons are real (Rust, with a real scheduler), and a fifth row adds the shim's embedded
cache. Each time is TorchServe's own `POST /models?url=...` (download plus unpacking), and the
result is the ratio to the direct download. Registering the same archive from nginx on
loopback just before each scenario, minus the time curl takes to fetch it from there, times
everything but the download (unzip, bookkeeping) on the same code path; subtracting it gives the
download alone, which is what the article compares. (A `file://` registration is no such
baseline: TorchServe copies a local archive first, which took longer than a whole registration
through a local hit.)
Published ratios to beat: cold 1.02, remote-peer hit 0.40-0.46, local-peer hit 0.08.

Then the cluster figure: bytes the origin served while N nodes (N = 1, 2, 3) download one model
at the same time, against the ideal of one copy. Prints a table, writes JSON and a bar chart.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import shlex
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

from bench._files import write_random
from tests.support.dragonfly import Dfdaemon, start_dfdaemon, start_scheduler
from tests.support.nginx import start_nginx
from tests.support.relay import Relay
from tests.support.servers import REPO_ROOT, s3_client, start_s3rver
from tests.support.shim_process import ShimProcess, s3_bucket_config, start_shim
from tests.support.torchserve import build_echo_archive, start_torchserve

BUCKET = "models"
PUBLISHED = {"dragonfly cold": "1.02", "remote peer hit": "0.40-0.46", "local peer hit": "0.08"}


@dataclass
class Row:
    scenario: str
    seconds: float  # TorchServe's registration
    ratio: float  # of registrations, to the direct one
    download_ratio: float  # of registrations minus the local-file one: the download alone
    published: str | None
    origin_mb: float  # what the origin served during this registration


@dataclass
class ClusterRow:
    nodes: int
    origin_mb: float
    copies: float  # origin bytes / object size; ideal 1


def java_options(shim: ShimProcess) -> str:
    printed = subprocess.run(
        [sys.executable, "-m", "shim", "env", "--proxy", f"127.0.0.1:{shim.proxy_port}",
         "--non-proxy-hosts", ""],
        check=True, capture_output=True, text=True, cwd=REPO_ROOT,
    ).stdout  # fmt: skip
    (line,) = [ln for ln in printed.splitlines() if ln.startswith("export JAVA_TOOL_OPTIONS=")]
    return shlex.split(line.removeprefix("export JAVA_TOOL_OPTIONS="))[0]


def timed_registration(
    workdir: Path, url: str, options: str | None, relay: Relay
) -> tuple[float, float]:
    """Seconds TorchServe's registration took, and the origin MB served meanwhile."""
    with start_torchserve(workdir, java_tool_options=options) as ts:
        before = relay.bytes_down
        started = time.monotonic()
        status, body = ts.register(url, timeout=900)
        seconds = time.monotonic() - started
        if status != 200:
            raise RuntimeError(
                f"registration of {url} failed: {status} {body}\n{ts.logs()[-3000:]}"
            )
        return seconds, (relay.bytes_down - before) / 1e6


def run(
    size_mib: int, origin_rate: float, work: Path
) -> tuple[list[float], list[Row], list[ClusterRow]]:
    with ExitStack() as stack:
        weights = work / "weights.bin"
        write_random(weights, size_mib << 20)
        archive = build_echo_archive(work / "archives", name="big", extra_files=[weights])
        weights.unlink()
        size = archive.stat().st_size
        print(f"archive {size / 2**20:.0f} MiB; origin limited to {origin_rate / 1e6:.0f} MB/s")
        site = stack.enter_context(start_nginx(archive.parent, work / "nginx"))
        local_url = f"{site.endpoint}/{archive.name}"

        origin = stack.enter_context(start_s3rver(work / "origin"))
        s3_client(origin).create_bucket(Bucket=BUCKET)
        for key in ("big.mar", "n1/big.mar", "n2/big.mar", "n3/big.mar"):
            s3_client(origin).upload_file(str(archive), BUCKET, key)
        relay = stack.enter_context(Relay(origin.host, origin.port))
        relay.rate_limit_bytes_per_s = origin_rate
        bucket = s3_bucket_config(BUCKET, relay.endpoint)
        scheduler = stack.enter_context(start_scheduler(work / "scheduler"))
        daemons: list[Dfdaemon] = [
            stack.enter_context(
                start_dfdaemon(
                    work / f"df{i}", name=f"node-{i}", scheduler=scheduler, proxy_rules=[]
                )
            )
            for i in range(3)
        ]
        # As deployed beside a Rust dfdaemon: its local hits sent from its own file.
        routes = [{"url": d.proxy_url, "link_dir": str(work / f"links{i}")} for i, d in
                  enumerate(daemons)]  # fmt: skip
        shims = [
            stack.enter_context(
                start_shim(work / f"shim{i}", {"dfdaemon": route, "buckets": [bucket]})
            )
            for i, route in enumerate(routes)
        ]
        embedded = stack.enter_context(start_shim(work / "embedded", {"buckets": [bucket]}))
        url = f"{relay.endpoint}/{BUCKET}/big.mar"
        signed = s3_client(origin, endpoint_url=relay.endpoint).generate_presigned_url(
            "get_object", Params={"Bucket": BUCKET, "Key": "big.mar"}, ExpiresIn=3600
        )

        rows: list[Row] = []
        # Unpacking takes what the machine gives it: timed before each scenario, and each
        # download is the registration minus the loopback one measured just before it.
        unpacks: list[float] = []

        def measure(name: str, target: str, options: str | None) -> None:
            print(f"  loopback nginx, then {name}...", flush=True)
            started = time.monotonic()
            subprocess.run(["curl", "-sS", "-f", "-o", "/dev/null", local_url], check=True)
            fetch = time.monotonic() - started
            loopback, _ = timed_registration(work / f"ts-nginx-{len(rows)}", local_url, None, relay)
            unpack = max(loopback - fetch, 0.0)
            unpacks.append(unpack)
            seconds, origin_mb = timed_registration(
                work / f"ts-{len(rows)}", target, options, relay
            )
            direct_row = rows[0] if rows else None
            direct = direct_row.seconds if direct_row else seconds
            direct_download = direct - unpacks[0]
            download = max(seconds - unpack, 0.0) / max(direct_download, 1e-9)
            rows.append(
                Row(name, seconds, seconds / direct, download, PUBLISHED.get(name), origin_mb)
            )

        measure("direct (signed URL)", signed, None)
        measure("dragonfly cold", url, java_options(shims[0]))
        measure("remote peer hit", url, java_options(shims[1]))
        measure("local peer hit", url, java_options(shims[0]))
        # Warm the embedded cache outside the timing: the hit is what is compared.
        subprocess.run(["curl", "-sS", "-o", "/dev/null", "-x", embedded.proxy, url], check=True)
        measure("shim embedded cache hit", url, java_options(embedded))

        cluster: list[ClusterRow] = []
        for nodes in (1, 2, 3):
            key_url = f"{relay.endpoint}/{BUCKET}/n{nodes}/big.mar"
            before = relay.bytes_down
            commands = [
                ["curl", "-sS", "-f", "-o", "/dev/null", "-x", shim.proxy, key_url]
                for shim in shims[:nodes]
            ]
            with concurrent.futures.ThreadPoolExecutor(nodes) as pool:
                for done in pool.map(subprocess.run, commands):
                    done.check_returncode()
            served = relay.bytes_down - before
            cluster.append(ClusterRow(nodes, served / 1e6, served / size))
        return unpacks, rows, cluster


def chart(rows: list[Row], cluster: list[ClusterRow], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = [r.scenario.replace(" (signed URL)", "") for r in rows]
    width = 0.4
    xs = range(len(rows))
    left.bar([x - width / 2 for x in xs], [r.ratio for r in rows], width, color="#8da0cb",
             label="registration")  # fmt: skip
    left.bar([x + width / 2 for x in xs], [r.download_ratio for r in rows], width,
             color="#4c72b0", label="download alone")  # fmt: skip
    left.set_xticks(list(xs), names)
    published = [float(r.published.split("-")[-1]) if r.published else None for r in rows]
    for i, value in enumerate(published):
        if value is not None:
            left.plot([i - 0.4, i + 0.4], [value, value], color="#c44e52", linewidth=2,
                      label="published" if i == 1 else None)  # fmt: skip
    left.set_ylabel("time / direct")
    left.set_title("TorchServe model download, ratio to direct")
    left.tick_params(axis="x", labelrotation=20)
    left.legend()
    right.bar([str(c.nodes) for c in cluster], [c.copies for c in cluster], color="#55a868")
    right.axhline(1.0, color="#c44e52", linestyle="--", label="ideal: one copy")
    right.set_xlabel("nodes downloading at once")
    right.set_ylabel("origin bytes / object size")
    right.set_title("Origin traffic through Dragonfly")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size-mib", type=int, default=1100, help="weights in the archive")
    parser.add_argument("--origin-rate-mb", type=float, default=50.0)
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT / "bench" / "results" / "dragonfly.json"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="shim-bench-df-", dir="/var/tmp") as tmp:
        unpacks, rows, cluster = run(args.size_mib, args.origin_rate_mb * 1e6, Path(tmp))
    spread = ", ".join(f"{u:.1f}" for u in unpacks)
    print(
        f"\nregistering from loopback nginx, minus curl's fetch, took {spread} s, before each row"
    )
    print(f"{'scenario':<26} {'seconds':>8} {'ratio':>6} {'download':>9} {'published':>10} "
          f"{'origin MB':>10}")  # fmt: skip
    for r in rows:
        print(f"{r.scenario:<26} {r.seconds:>8.1f} {r.ratio:>6.2f} {r.download_ratio:>9.2f} "
              f"{r.published or '-':>10} {r.origin_mb:>10.0f}")  # fmt: skip
    print(f"\n{'nodes':>5} {'origin MB':>10} {'copies':>7}  (ideal 1)")
    for c in cluster:
        print(f"{c.nodes:>5} {c.origin_mb:>10.0f} {c.copies:>7.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(
        {"origin_rate_mb_per_s": args.origin_rate_mb, "unpack_seconds": unpacks,
         "rows": [asdict(r) for r in rows],
         "cluster": [asdict(c) for c in cluster]}, indent=2))  # fmt: skip
    chart(rows, cluster, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
