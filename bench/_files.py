"""Files the benchmarks serve: random bytes, so that nothing on the way can compress them."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def write_random(path: Path, size: int) -> str:
    """Write ``size`` random bytes to ``path``; their SHA-256, in hex."""
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for offset in range(0, size, 1 << 20):
            chunk = os.urandom(min(1 << 20, size - offset))
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()
