"""Signing overhead per request, per provider: a URL signed afresh (cold) and one reused from
shim's cache of signed URLs (cached), as the addon does them.

    python -m bench.bench_signing [--rounds 2000] [--out FILE]

Every provider signs with a static credential of its own kind (keys, an account key, a
service-account key), so the numbers are the signer's own work, with no network. "first" is the
first signature of a bucket after its start-up check (which builds the SDK client); "cold" a
new key each time; "cached" the same key again within the reuse window. Targets (issue 8):
cached p50 < 1 ms, cold p50 < 20 ms. Prints a Markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from shim.providers import PROVIDERS
from shim.recognize import ObjectRef
from shim.signing import CachedSigner, signers_for
from tests.support.offline_buckets import OFFLINE_BUCKETS, offline_bucket


def _ms(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[int(len(ordered) * 0.99) - 1] * 1000,
    }


def _time(signer: CachedSigner, refs: list[ObjectRef]) -> list[float]:
    took = []
    for ref in refs:
        started = time.perf_counter()
        if signer.cached(ref, "GET") is None:
            signer.sign(ref, "GET")
        took.append(time.perf_counter() - started)
    return took


def measure(provider: str, rounds: int) -> dict[str, Any]:
    bucket = offline_bucket(provider)
    signer = signers_for([bucket], 3600)[bucket]
    signer.check()  # as shim does at start-up
    first = _time(signer, [ObjectRef(bucket, "first/model.bin", (), "https")])[0]
    cold = _time(signer, [ObjectRef(bucket, f"models/{i}.bin", (), "https") for i in range(rounds)])
    again = [ObjectRef(bucket, f"models/{i % 100}.bin", (), "https") for i in range(rounds)]
    cached = _time(signer, again)
    return {
        "provider": provider,
        "first_ms": first * 1000,
        "cold": _ms(cold),
        "cached": _ms(cached),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path("bench/results/signing.json"))
    args = parser.parse_args()
    missing = sorted(set(PROVIDERS) - set(OFFLINE_BUCKETS))
    if missing:
        raise SystemExit(f"no sample bucket for provider(s) {', '.join(missing)}")
    rows = [measure(name, args.rounds) for name in PROVIDERS]
    print("| provider | first ms | cold p50 ms | cold p99 ms | cached p50 ms | cached p99 ms |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['provider']} | {row['first_ms']:.1f} | {row['cold']['p50_ms']:.3f} | "
            f"{row['cold']['p99_ms']:.3f} | {row['cached']['p50_ms']:.4f} | "
            f"{row['cached']['p99_ms']:.4f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rounds": args.rounds, "providers": rows}, indent=2))


if __name__ == "__main__":
    main()
