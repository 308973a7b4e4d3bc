"""A small filesystem of a test's own, to fill up: a tmpfs (mounting needs root)."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path


class DiskStillInUse(AssertionError):
    """The tmpfs could only be unmounted lazily: something left a file open on it."""


@contextlib.contextmanager
def tmpfs(mount_point: Path, size: int) -> Iterator[Path]:
    """An empty, owner-only tmpfs of ``size`` bytes at ``mount_point`` (created), unmounted
    afterwards; raises DiskStillInUse if a file on it was still open."""
    mount_point.mkdir(parents=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mount_point)],
        check=True,
    )
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], check=False).returncode != 0:
            subprocess.run(["umount", "--lazy", str(mount_point)], check=True)
            raise DiskStillInUse(f"{mount_point} was still in use: a file left open on it")
