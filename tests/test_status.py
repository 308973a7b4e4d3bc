"""The status page's snapshot and rendering: every value escaped, bounded whatever it is fed,
a sentence for each empty part, nothing loaded from elsewhere."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from html.parser import HTMLParser

from shim.cache.fill import FillProgress
from shim.requestlog import RequestRecord
from shim.status import (
    MAX_BUCKETS,
    MAX_DOWNLOADS,
    MAX_RECENT,
    MAX_TEXT,
    BucketState,
    CacheUse,
    DfdaemonHealth,
    StatusSnapshot,
    as_json,
    render_html,
    seconds,
    snapshot,
)
from tests.support.chromium import table_rows

NOW = 1_790_000_000.0
URL = "https://models.s3.amazonaws.com/m.mar"
MARKUP = '<script>alert("x")</script><img src=x onerror=alert(1)>'
CACHE = CacheUse(
    used=3 << 30,
    reserved=1 << 20,
    max_size=20 << 30,
    entries=7,
    disk_free=50 << 30,
    min_free=1 << 30,
)


def download(url: str = URL, **changes: object) -> FillProgress:
    fields: dict[str, object] = {
        "task_id": "a" * 64,
        "url": url,
        "route": "direct",
        "answered": True,
        "received": 3 << 20,
        "size": 12 << 20,
        "seconds": 2.0,
        "rate": 1.5 * (1 << 20),
        "readers": 2,
        "kept": True,
    }
    fields.update(changes)
    return FillProgress(**fields)  # type: ignore[arg-type]


def record(url: str = URL, **changes: object) -> RequestRecord:
    fields: dict[str, object] = {
        "time": NOW - 5,
        "method": "GET",
        "url": url,
        "bucket": "models",
        "status": 200,
        "cache": "HIT",
        "route": "cache",
        "task_id": "b" * 64,
        "bytes": 1 << 20,
        "duration": 0.25,
    }
    fields.update(changes)
    return RequestRecord(**fields)  # type: ignore[arg-type]


def status(
    *,
    downloads: Sequence[FillProgress] = (),
    recent: Sequence[RequestRecord] = (),
    dfdaemon: DfdaemonHealth | None = None,
    buckets: Sequence[BucketState] = (),
    ready: bool = True,
) -> StatusSnapshot:
    return snapshot(
        generated_at=NOW,
        version="0.1.0",
        ready=ready,
        downloads=downloads,
        recent=recent,
        cache=CACHE,
        dfdaemon=dfdaemon,
        buckets=buckets,
    )


class _Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def elements(page: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Elements()
    parser.feed(page)
    return parser.tags


def test_every_value_a_client_chose_is_text_not_markup() -> None:
    page = render_html(
        status(
            downloads=[download(f"https://b.example/{MARKUP}", task_id=f'"{MARKUP}')],
            recent=[record(f"http://b.example/{MARKUP}", method=MARKUP, task_id=f"'{MARKUP}")],
            buckets=[BucketState(MARKUP, "s3", "loaded")],
            dfdaemon=DfdaemonHealth(MARKUP, False, MARKUP, NOW),
        )
    )
    tags = {tag for tag, _ in elements(page)}
    assert not tags & {"script", "img"}
    # No attribute but the template's own: a quote in a value never closes one.
    assert {name for _, attrs in elements(page) for name in attrs} <= {
        "lang", "charset", "http-equiv", "content", "class", "id", "href", "title", "max", "value"
    }  # fmt: skip
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page
    (_, row) = table_rows(page, "downloads")
    assert row[0] == f"https://b.example/{MARKUP}"


def test_the_page_loads_nothing_and_runs_nothing() -> None:
    page = render_html(status(downloads=[download()], recent=[record()]))
    assert {tag for tag, _ in elements(page)} & {
        "script",
        "link",
        "img",
        "iframe",
        "object",
    } == set()
    assert not re.search(r"@import|url\(|src=", page)
    assert '<meta http-equiv="refresh" content="5">' in page


def test_the_rows_of_a_busy_shim() -> None:
    rest = ["1.5 MiB/s", "2.0 s", "2", "aaaaaaaaaaaa"]
    page = render_html(
        status(
            downloads=[download(), download(answered=False, size=None, kept=False)],
            recent=[record(), record(status=404, cache="MISS", route="direct", bytes=0)],
            buckets=[
                BucketState("models", "s3", "loaded"),
                BucketState("gone", "gcs", "not loaded"),
            ],
            dfdaemon=DfdaemonHealth("127.0.0.1:4001", True, "accepts connections (0.2 ms)", NOW),
        )
    )
    assert table_rows(page, "downloads")[1:] == [
        [URL, "direct", "25%", "3.0 MiB / 12.0 MiB", *rest],
        [URL, "connecting (not kept)", "size unknown", "3.0 MiB / ?", *rest],
    ]
    ended = "14:13:15"  # NOW - 5, in UTC
    tail = ["250 ms", "bbbbbbbbbbbb"]
    assert table_rows(page, "recent")[1:] == [
        [ended, f"GET {URL}", "models", "200", "HIT", "cache", "1.0 MiB", *tail],
        [ended, f"GET {URL}", "models", "404", "MISS", "direct", "0 B", *tail],
    ]
    assert table_rows(page, "buckets")[1:] == [
        ["models", "s3", "loaded"],
        ["gone", "gcs", "not loaded (the log says why)"],
    ]
    assert "3.0 GiB of 20.0 GiB (15%)" in page
    assert '<span class="ok">reachable</span>: accepts connections (0.2 ms)' in page


def test_an_idle_shim_says_so_for_each_part() -> None:
    page = render_html(status(ready=False))
    assert '<span class="bad" id="ready">not ready</span>' in page
    assert "No download in flight." in page
    assert "No request served yet." in page
    assert "No dfdaemon configured" in page
    assert "No bucket configured." in page
    assert "<table" not in page


def test_a_flood_of_everything_stays_a_page_of_bounded_size() -> None:
    long = "x" * 70_000  # as long as a request head may be
    flood = status(
        downloads=[download("https://b/" + long, task_id=long, route=long)] * 10_000,
        recent=[record("http://b/" + long, method=long, bucket=long, task_id=long)] * 10_000,
        buckets=[BucketState(long, long, "checking")] * 10_000,
        dfdaemon=DfdaemonHealth(long, False, long, NOW),
    )
    assert (len(flood.downloads), flood.downloads_total) == (MAX_DOWNLOADS, 10_000)
    assert (len(flood.recent), flood.recent_total) == (MAX_RECENT, 10_000)
    assert (len(flood.buckets), flood.buckets_total) == (MAX_BUCKETS, 10_000)
    assert flood.downloads[0].url == "https://b/" + "x" * (MAX_TEXT - 11) + "…"
    assert flood.dfdaemon is not None and len(flood.dfdaemon.detail) == MAX_TEXT
    page = render_html(flood)
    assert len(page.encode()) < 1_000_000
    assert len(json.dumps(as_json(flood))) < 1_000_000
    assert "… and 9950 more" in page and "… and 9900 older" in page and "… and 9900 more" in page


def test_json_holds_the_same_facts_unformatted() -> None:
    data = json.loads(json.dumps(as_json(status(downloads=[download()], recent=[record()]))))
    assert data["downloads"][0]["received"] == 3 << 20
    assert data["downloads"][0]["size"] == 12 << 20
    assert data["recent"][0]["url"] == URL
    assert data["cache"] == {
        "used": 3 << 30,
        "reserved": 1 << 20,
        "max_size": 20 << 30,
        "entries": 7,
        "disk_free": 50 << 30,
        "min_free": 1 << 30,
    }
    assert (data["dfdaemon"], data["buckets"], data["ready"]) == (None, [], True)


def test_durations_for_people() -> None:
    assert [seconds(s) for s in (None, 0.0042, 1.25, 119.9, 125, 3725)] == [
        "?", "4 ms", "1.2 s", "119.9 s", "2m05s", "1h02m"
    ]  # fmt: skip
