"""Quantities for people: the one byte formatter of logs, the status page and the CLIs."""

from __future__ import annotations

from shim.units import format_size


def test_sizes_for_people() -> None:
    sizes = (None, 0, 1023, 1024, 1_000_000, 1536 << 20, 3 << 40, 5000 << 40)
    assert [format_size(n) for n in sizes] == [
        "?", "0 B", "1023 B", "1.0 KiB", "976.6 KiB", "1.5 GiB", "3.0 TiB", "5000.0 TiB"
    ]  # fmt: skip
    assert format_size(2e6) == "1.9 MiB"  # a rate: bytes per second
