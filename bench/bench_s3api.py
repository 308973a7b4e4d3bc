"""Streamer-shaped reads of one object through shim's S3 API, against the origin directly.

    python -m bench.bench_s3api [--size-mib 2048] [--readers 4,16] [--chunk-mib 32]
                                [--origin-rate-mb 50] [--out FILE]

How model streamers load weights: many workers share one object, each reading the next range
with a ranged GET (``Range: bytes=A-B``) until the whole object is read once. Two kinds of
readers of one safetensors file of SIZE:
  N boto3 readers   threads with a boto3 client each, taking the next CHUNK-sized range in
                    order; every range checked against its SHA-256
  Run:ai streamer   the real Run:ai model streamer (its C++ S3 backend, default concurrency),
                    loading the file as vLLM does; every tensor checked against a local load

The origin is the strict S3 server (s3rver) behind a relay limited to an object-storage-like rate,
as in the other benchmarks; the relay counts what the origin sends. Each kind of reader runs
  direct      against the origin (through the rate-limited relay), signing with the store's key
  shim cold   against shim's S3 API, unsigned, a new shim with an empty cache: every range is
              served from one fill of the object as it progresses
  shim warm   the same again, the object in shim's cache
Each row: seconds, MB/s, and what the origin sent (MB, and copies of the object).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from boto3.s3.transfer import TransferConfig

from tests.support.relay import Relay
from tests.support.s3_clients import (
    Endpoint,
    boto3_client,
    local_tensor_digests,
    runai_stream,
    start_shim_s3_api,
    write_safetensors,
)
from tests.support.servers import REPO_ROOT, s3_client, start_s3rver
from tests.support.shim_process import ShimProcess, s3_bucket_config

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

BUCKET = "weights"
MODEL = "llm/"
KEY = MODEL + "model-00001-of-00001.safetensors"
STREAMER = "Run:ai streamer"


class Mismatch(RuntimeError):
    """A reader got other bytes than the object holds."""


@dataclass
class Row:
    readers: str  # N boto3 readers, or the Run:ai streamer
    path: str  # direct, shim cold, shim warm
    seconds: float
    size: int
    origin_bytes: int

    @property
    def mb_s(self) -> float:
        return self.size / self.seconds / 1e6

    @property
    def copies(self) -> float:
        return self.origin_bytes / self.size


def chunk_digests(path: Path, chunk: int) -> list[str]:
    """The SHA-256 of each ``chunk``-sized piece of the file, in order."""
    digests = []
    with path.open("rb") as file:
        while piece := file.read(chunk):
            digests.append(hashlib.sha256(piece).hexdigest())
    return digests


def read_concurrently(
    client: S3Client, size: int, chunk: int, readers: int, digests: list[str]
) -> float:
    """``readers`` threads read the object once in ``chunk``-sized ranges, taking the next one in
    order; every chunk checked. Returns the seconds from the first request to the last byte."""
    ranges = [(start, min(start + chunk, size) - 1) for start in range(0, size, chunk)]
    taken = iter(range(len(ranges)))
    lock = threading.Lock()

    def read() -> None:
        while True:
            with lock:
                index = next(taken, None)
            if index is None:
                return
            first, last = ranges[index]
            body = client.get_object(Bucket=BUCKET, Key=KEY, Range=f"bytes={first}-{last}")["Body"]
            digest = hashlib.sha256()
            while piece := body.read(1 << 20):
                digest.update(piece)
            if digest.hexdigest() != digests[index]:
                raise Mismatch(f"bytes {first}-{last} differ from the object's")

    start = time.monotonic()
    with ThreadPoolExecutor(readers) as pool:
        for done in [pool.submit(read) for _ in range(readers)]:
            done.result()
    return time.monotonic() - start


def run(
    size_mib: int, readers_list: list[int], chunk_mib: int, origin_rate: float, work: Path
) -> list[Row]:
    chunk = chunk_mib << 20
    rows: list[Row] = []
    with ExitStack() as stack:
        blob = work / "model.safetensors"
        print(f"writing a safetensors file of {size_mib} MiB of random tensors...", flush=True)
        write_safetensors(blob, size_mib << 20)
        size = blob.stat().st_size
        digests = chunk_digests(blob, chunk)
        tensors = local_tensor_digests(blob)
        origin = stack.enter_context(start_s3rver(work / "origin"))
        store = s3_client(origin)
        store.create_bucket(Bucket=BUCKET)
        # One part: its ETag is its MD5, which shim verifies the body against.
        whole = TransferConfig(multipart_threshold=1 << 40)
        store.upload_file(str(blob), BUCKET, KEY, Config=whole)
        # What the streamer's model directory holds besides weights (vLLM pulls it first).
        store.put_object(Bucket=BUCKET, Key=MODEL + "config.json", Body=b'{"model_type": "llama"}')
        blob.unlink()
        relay = stack.enter_context(Relay(origin.host, origin.port))
        relay.rate_limit_bytes_per_s = origin_rate
        print(f"origin limited to {origin_rate / 1e6:.0f} MB/s", flush=True)
        signed = Endpoint(relay.endpoint, (origin.access_key, origin.secret_key))

        def measure(readers: str, path: str, read: Callable[[], float]) -> None:
            relay.reset_counters()
            seconds = read()
            row = Row(readers, path, seconds, size, relay.bytes_down)
            print(f"  {readers:<16} {path:<9}: {seconds:6.1f} s, {row.mb_s:6.0f} MB/s, "
                  f"origin {row.copies:.3f} copies", flush=True)  # fmt: skip
            rows.append(row)

        def shim_s3_api(name: str) -> tuple[ShimProcess, str]:
            config = {"buckets": [s3_bucket_config(BUCKET, relay.endpoint)]}
            return start_shim_s3_api(work / name, config)

        for n in readers_list:
            readers = f"{n} boto3 readers"

            def ranges(endpoint: Endpoint, n: int = n) -> float:
                client = boto3_client(endpoint, connections=n)
                return read_concurrently(client, size, chunk, n, digests)

            measure(readers, "direct", partial(ranges, signed))
            shim, url = shim_s3_api(f"shim-{n}")
            with shim:
                measure(readers, "shim cold", partial(ranges, Endpoint(url)))
                measure(readers, "shim warm", partial(ranges, Endpoint(url)))

        def streamed(endpoint: Endpoint, pulled: str) -> float:
            model = runai_stream(endpoint, f"s3://{BUCKET}/{MODEL}", work / pulled)
            if model.tensors != tensors:
                raise Mismatch(f"the {STREAMER}'s tensors differ from a local load's")
            return model.seconds

        measure(STREAMER, "direct", partial(streamed, signed, "direct"))
        shim, url = shim_s3_api("shim-runai")
        with shim:
            measure(STREAMER, "shim cold", partial(streamed, Endpoint(url), "cold"))
            measure(STREAMER, "shim warm", partial(streamed, Endpoint(url), "warm"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size-mib", type=int, default=2048)
    parser.add_argument("--readers", default="4,16", help="comma-separated reader counts")
    parser.add_argument("--chunk-mib", type=int, default=32)
    parser.add_argument("--origin-rate-mb", type=float, default=50.0)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench/results/s3api.json")
    args = parser.parse_args()
    readers = [int(n) for n in args.readers.split(",")]
    with tempfile.TemporaryDirectory(prefix="shim-bench-s3api-", dir="/var/tmp") as tmp:
        rows = run(args.size_mib, readers, args.chunk_mib, args.origin_rate_mb * 1e6, Path(tmp))
    print(f"\n{args.size_mib} MiB object, {args.chunk_mib} MiB ranges, origin limited to "
          f"{args.origin_rate_mb:.0f} MB/s")  # fmt: skip
    print(
        f"{'readers':<16} {'path':<10} {'seconds':>8} {'MB/s':>7} {'origin MB':>10} {'copies':>7}"
    )
    for r in rows:
        print(f"{r.readers:<16} {r.path:<10} {r.seconds:>8.1f} {r.mb_s:>7.0f} "
              f"{r.origin_bytes / 1e6:>10.0f} {r.copies:>7.3f}")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(
        {"size_mib": args.size_mib, "chunk_mib": args.chunk_mib,
         "origin_rate_mb_per_s": args.origin_rate_mb,
         "rows": [{**asdict(r), "mb_s": r.mb_s, "copies": r.copies} for r in rows]},
        indent=2))  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
