"""What ``shim prefetch`` prints: bars on a terminal, plain lines otherwise, the summary."""

from __future__ import annotations

import io
import time

import pytest
from rich.console import Console

from shim.prefetch import report
from shim.prefetch.client import Fetched
from shim.prefetch.report import BarsReport, PlainReport, summary_table

TASK = "ab" * 32
OK = Fetched("http://h/b/model.mar", 200, 3_000_000, 1.5, "MISS", "dfdaemon", TASK)
FAILED = Fetched("http://h/b/absent.mar", 404, 0, 0.1, "MISS", "direct", None, "404 Not Found")


def _plain() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=10_000, no_color=True, highlight=False), out


def test_plain_lines_name_each_object_and_the_overall_progress(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    console, out = _plain()
    plain = PlainReport(console, [OK.url, FAILED.url])
    monkeypatch.setattr(report, "PLAIN_INTERVAL", 0.0)  # every step prints its line here
    plain.sized([3_000_000, None])
    plain.started(0, 3_000_000)
    plain.advanced(0, 1_000_000)
    plain.finished(0, OK)
    plain.finished(1, FAILED)
    lines = out.getvalue().splitlines()
    assert lines[0] == "prefetching 2 object(s), 2.9 MiB (1 of unknown size)"
    assert lines[1] == "started  http://h/b/model.mar (2.9 MiB)"
    assert lines[2].startswith("progress 0/2 objects, 976.6 KiB of 2.9 MiB, ")
    assert ", ETA " in lines[2]
    assert lines[3] == (
        "done     http://h/b/model.mar 2.9 MiB in 1.5 s (1.9 MiB/s), MISS via dfdaemon"
    )
    assert lines[4] == "FAILED   http://h/b/absent.mar: 404 Not Found"
    assert "\x1b" not in out.getvalue()


def test_the_plain_summary_holds_whole_task_ids_and_no_control_sequences() -> None:
    console, out = _plain()
    console.print(summary_table([OK, FAILED], plain=True))
    text = out.getvalue()
    assert "\x1b" not in text
    ok_row = next(line for line in text.splitlines() if "model.mar" in line)
    assert TASK in ok_row and "2.9 MiB" in ok_row and "ok" in ok_row
    failed_row = next(line for line in text.splitlines() if "absent.mar" in line)
    assert "FAILED" in failed_row and " - " in failed_row


def test_bars_on_a_terminal_show_bytes_rate_and_eta_per_object_and_overall() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=160)
    with BarsReport(console, [OK.url, "http://h/b/[red]x.mar"]) as bars:
        bars.sized([3_000_000, 1_000_000])
        bars.started(0, 3_000_000)
        for _ in range(3):  # a rate needs samples over time
            bars.advanced(0, 500_000)
            time.sleep(0.05)
        bars.finished(0, OK)
        bars.finished(1, FAILED)
    text = out.getvalue()
    assert "\x1b[" in text  # drawn, not printed
    assert "all 2 objects" in text
    assert "1.5/4.0 MB" in text or "3.0/4.0 MB" in text
    assert "MB/s" in text and "0:00:0" in text
    assert "[red]x.mar" in text  # a URL is shown as it is, never read as markup
