"""What verifying costs a miss: throughput of hit-free misses through a real `shim run`, with no
checksum offered (nothing to verify) and with each checksum kind, side by side in one run.

The origin is a local HTTP server (in a thread) that serves one random body under any key,
with the headers a store sends for the kind the key names (`/bench/KIND-N.bin`: S3's
x-amz-checksum-*, the MD5 ETag, OSS's x-oss-hash-crc64ecma); every key is new, so every
download is a miss and a fill. shim signs towards it as an S3 bucket; the origin checks no
signature (the signing path is not what is measured here). The client is curl, writing to
/dev/null; rounds interleave the kinds and the median is reported. Prints a table and writes
JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import statistics
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from aiohttp import web

from bench.bench_s3 import curl
from shim.cache.integrity import Kind, crc
from tests.support.servers import REPO_ROOT
from tests.support.shim_process import s3_bucket_config, start_shim

BUCKET = "bench"
NONE = "none"
KINDS = (NONE, *(kind.value for kind in Kind))


@dataclass
class Row:
    kind: str
    mb_per_s: float
    ratio: float  # against no checksum
    samples: list[float]


def checksum_headers(kind: str, body: bytes) -> dict[str, str]:
    """The response headers of a store offering ``kind`` (and nothing stronger) for ``body``."""
    if kind == NONE:
        return {}
    if kind == Kind.MD5:
        return {"ETag": f'"{hashlib.md5(body).hexdigest()}"'}
    if kind == Kind.CRC64ECMA:
        return {"x-oss-hash-crc64ecma": str(crc(Kind.CRC64ECMA, body))}
    if kind in (Kind.SHA256, Kind.SHA1):
        raw = hashlib.new(kind, body).digest()
    else:
        width = 8 if kind == Kind.CRC64NVME else 4
        raw = crc(Kind(kind), body).to_bytes(width, "big")
    return {f"x-amz-checksum-{kind}": base64.b64encode(raw).decode()}


class Origin:
    """Serves ``body`` for every GET, with the headers of the kind its key names."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.headers = {kind: checksum_headers(kind, body) for kind in KINDS}
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None

    async def _get(self, request: web.Request) -> web.StreamResponse:
        kind = request.match_info["key"].split("-", 1)[0]
        response = web.StreamResponse(headers=self.headers[kind])
        response.content_length = len(self.body)
        await response.prepare(request)
        view = memoryview(self.body)
        for offset in range(0, len(view), 1 << 20):
            await response.write(view[offset : offset + (1 << 20)])
        await response.write_eof()
        return response

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get(f"/{BUCKET}/{{key}}", self._get)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def __enter__(self) -> Origin:
        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)


def run(size: int, rounds: int, workdir: Path) -> tuple[float, list[Row]]:
    body = bytes(size // 4) + hashlib.sha256(b"bench").digest() * (size // 4 // 32)
    body += bytes(size - len(body))
    samples: dict[str, list[float]] = {kind: [] for kind in KINDS}
    with Origin(body) as origin:
        endpoint = f"http://127.0.0.1:{origin.port}"
        direct = [size / 1e6 / curl(f"{endpoint}/{BUCKET}/none-direct", expect_size=size)]
        config = {
            "buckets": [s3_bucket_config(BUCKET, endpoint)],
            # Room for two objects: every miss is kept, older ones evicted.
            "cache": {"max_size": 2 * size + (64 << 20)},
        }
        with start_shim(workdir / "shim", config) as shim:
            for number in range(rounds):
                for kind in KINDS:
                    url = f"{endpoint}/{BUCKET}/{kind}-{number}.bin"
                    samples[kind].append(size / 1e6 / curl(url, proxy=shim.proxy, expect_size=size))
            metrics = shim.metrics()
    for kind in KINDS[1:]:
        verified = metrics.get(f'shim_integrity_total{{kind="{kind}",result="verified"}}')
        if verified != rounds:
            raise RuntimeError(f"{kind}: {verified} of {rounds} downloads were verified")
    baseline = statistics.median(samples[NONE])
    rows = [
        Row(kind, statistics.median(values), statistics.median(values) / baseline, values)
        for kind, values in samples.items()
    ]
    return statistics.median(direct), rows


def table(direct: float, rows: list[Row]) -> str:
    lines = [
        "| checksum | MB/s (median) | ratio to none |",
        "|---|---|---|",
        f"| origin direct, no shim | {direct:.0f} | - |",
    ]
    lines += [f"| {row.kind} | {row.mb_per_s:.0f} | {row.ratio:.2f} |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT / "bench" / "results" / "integrity.json"
    )
    args = parser.parse_args()
    size = args.size_mib << 20
    with tempfile.TemporaryDirectory(prefix="shim-bench-", dir="/var/tmp") as tmp:
        direct, rows = run(size, args.rounds, Path(tmp))
    print(table(direct, rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "size_mib": args.size_mib,
        "rounds": args.rounds,
        "origin_direct_mb_per_s": direct,
        "rows": [asdict(row) for row in rows],
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
