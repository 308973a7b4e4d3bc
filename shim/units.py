"""Quantities for people. Pure."""

from __future__ import annotations


def format_size(count: float | None) -> str:
    """Bytes in binary units, as config sizes are given: ``512 B``, ``1.5 GiB``; ``?`` when
    unknown."""
    if count is None:
        return "?"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
