"""What ``shim prefetch`` shows: on a terminal a bar per object and one overall (bytes, rate,
ETA, drawn by rich); otherwise plain lines (a line per object, and the overall progress every
few seconds); then a summary table, and each failure named.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from shim.prefetch.client import Fetched
from shim.units import format_size

# Plain output: the overall progress at most this often, in seconds.
PLAIN_INTERVAL = 5.0


def rate_text(count: int, seconds: float) -> str:
    return f"{format_size(count / seconds)}/s" if seconds > 0 else "-"


class BarsReport:
    """Live bars on a terminal."""

    def __init__(self, console: Console, labels: Sequence[str]) -> None:
        self._labels = labels
        self._bars = Progress(
            TextColumn("{task.description}", justify="left"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._overall = self._bars.add_task(f"all {len(labels)} objects", total=None)
        self._tasks: dict[int, TaskID] = {}

    def __enter__(self) -> BarsReport:
        self._bars.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._bars.stop()

    def sized(self, sizes: Sequence[int | None]) -> None:
        known = [size for size in sizes if size is not None]
        self._bars.update(self._overall, total=sum(known) if known else None)

    def started(self, index: int, size: int | None) -> None:
        self._tasks[index] = self._bars.add_task(_short(self._labels[index]), total=size)

    def advanced(self, index: int, count: int) -> None:
        self._bars.advance(self._tasks[index], count)
        self._bars.advance(self._overall, count)

    def finished(self, index: int, fetched: Fetched) -> None:
        task = self._tasks.get(index)
        if task is None:
            task = self._tasks[index] = self._bars.add_task(_short(self._labels[index]), total=0)
        mark = "[red]failed[/]" if fetched.error else "[green]done[/]"
        label = _short(self._labels[index])
        self._bars.update(task, description=f"{label} {mark}", total=fetched.received or None)


class PlainReport:
    """Lines for a log or a pipe: no control sequences."""

    def __init__(self, console: Console, labels: Sequence[str]) -> None:
        self._console = console
        self._labels = labels
        self._total: int | None = None
        self._received = 0
        self._done = 0
        self._started = time.monotonic()
        self._last_line = self._started

    def __enter__(self) -> PlainReport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def sized(self, sizes: Sequence[int | None]) -> None:
        known = [size for size in sizes if size is not None]
        self._total = sum(known)
        unknown = len(sizes) - len(known)
        self._print(
            f"prefetching {len(sizes)} object(s), {format_size(self._total)}"
            + (f" ({unknown} of unknown size)" if unknown else "")
        )

    def started(self, index: int, size: int | None) -> None:
        self._print(f"started  {self._labels[index]} ({format_size(size)})")

    def advanced(self, index: int, count: int) -> None:
        self._received += count
        now = time.monotonic()
        if now - self._last_line >= PLAIN_INTERVAL:
            self._last_line = now
            self._print(self._overall_line(now))

    def finished(self, index: int, fetched: Fetched) -> None:
        self._done += 1
        if fetched.error:
            self._print(f"FAILED   {self._labels[index]}: {fetched.error}")
        else:
            self._print(
                f"done     {self._labels[index]} {format_size(fetched.received)} in "
                f"{fetched.seconds:.1f} s ({rate_text(fetched.received, fetched.seconds)}), "
                f"{fetched.cache} via {fetched.route}"
            )

    def _overall_line(self, now: float) -> str:
        elapsed = now - self._started
        line = (
            f"progress {self._done}/{len(self._labels)} objects, {format_size(self._received)} "
            f"of {format_size(self._total)}, {rate_text(self._received, elapsed)}"
        )
        if self._total and self._received and elapsed > 0:
            remaining = (self._total - self._received) / (self._received / elapsed)
            line += f", ETA {max(remaining, 0):.0f} s"
        return line

    def _print(self, line: str) -> None:
        self._console.print(line, markup=False, highlight=False, soft_wrap=True)


def summary_table(results: Sequence[Fetched], *, plain: bool) -> Table:
    table = Table(
        title="prefetch summary",
        box=box.ASCII if plain else box.SIMPLE_HEAD,
        title_justify="left",
    )
    for name, justify in (
        ("result", "left"),
        ("url", "left"),
        ("size", "right"),
        ("time", "right"),
        ("rate", "right"),
        ("cache", "left"),
        ("route", "left"),
        ("task id", "left"),
    ):
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for fetched in results:
        failed = fetched.error is not None
        task_id = fetched.task_id or "-"
        table.add_row(
            "FAILED" if failed else "ok",
            fetched.url,
            "-" if failed else format_size(fetched.received),
            f"{fetched.seconds:.1f} s",
            "-" if failed else rate_text(fetched.received, fetched.seconds),
            fetched.cache,
            fetched.route,
            # Whole in a log, to compare with the dfdaemon's; its start fits a terminal.
            task_id if plain else task_id[:16],
        )
    return table


def _short(label: str, width: int = 48) -> str:
    """The end of ``label`` (a key's name is at the end), as literal text for a bar."""
    return escape(label if len(label) <= width else "…" + label[-(width - 1) :])
