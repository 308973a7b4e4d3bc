"""The status page of the admin listener: what shim is doing now, as one snapshot rendered to a
self-contained HTML page (no script, no external asset) or to JSON. Pure: no I/O.

Bounded whatever the traffic: a snapshot holds at most so many rows of each kind (it counts the
rest) and clips every client-chosen string, so the page cannot grow without bound. Every value
is HTML-escaped (Jinja2's autoescaping); URLs are redacted before they get here.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.resources
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import jinja2

from shim.cache.fill import FillProgress
from shim.requestlog import RECENT_REQUESTS, RequestRecord
from shim.units import format_size

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

MAX_DOWNLOADS = 50
MAX_RECENT = RECENT_REQUESTS
MAX_BUCKETS = 100
# Characters kept of a string a client chose (a URL, a method, a task ID a dfdaemon reported).
MAX_TEXT = 300
# Seconds between reloads of the HTML page.
REFRESH_SECONDS = 5

Credentials = Literal["loaded", "not loaded", "checking"]


@dataclass(frozen=True, slots=True)
class CacheUse:
    used: int  # bytes of complete entries
    reserved: int  # bytes held for fills in flight that will become entries
    max_size: int
    entries: int
    disk_free: int  # bytes free on the cache's filesystem
    min_free: int  # bytes the cache always leaves free


@dataclass(frozen=True, slots=True)
class DfdaemonHealth:
    address: str  # host:port of its proxy
    reachable: bool
    detail: str  # how it answered the probe, or why it did not
    checked_at: float  # seconds since the epoch


@dataclass(frozen=True, slots=True)
class BucketState:
    alias: str
    provider: str
    credentials: Credentials


@dataclass(frozen=True, slots=True)
class StatusSnapshot:
    generated_at: float  # seconds since the epoch
    version: str
    ready: bool
    downloads: tuple[FillProgress, ...]  # oldest first, at most MAX_DOWNLOADS
    downloads_total: int
    recent: tuple[RequestRecord, ...]  # newest first, at most MAX_RECENT
    recent_total: int
    cache: CacheUse
    dfdaemon: DfdaemonHealth | None  # None: no dfdaemon configured
    buckets: tuple[BucketState, ...]  # at most MAX_BUCKETS
    buckets_total: int


def clip(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def _clipped[T: DataclassInstance](record: T) -> T:
    """``record`` with each of its strings clipped."""
    changes = {
        field.name: clip(value)
        for field in dataclasses.fields(record)
        if isinstance(value := getattr(record, field.name), str)
    }
    return dataclasses.replace(record, **changes)


def snapshot(
    *,
    generated_at: float,
    version: str,
    ready: bool,
    downloads: Sequence[FillProgress],
    recent: Sequence[RequestRecord],
    cache: CacheUse,
    dfdaemon: DfdaemonHealth | None,
    buckets: Sequence[BucketState],
) -> StatusSnapshot:
    """The snapshot of these facts, within the page's bounds."""
    return StatusSnapshot(
        generated_at=generated_at,
        version=version,
        ready=ready,
        downloads=tuple(_clipped(row) for row in downloads[:MAX_DOWNLOADS]),
        downloads_total=len(downloads),
        recent=tuple(_clipped(row) for row in recent[:MAX_RECENT]),
        recent_total=len(recent),
        cache=cache,
        dfdaemon=None if dfdaemon is None else _clipped(dfdaemon),
        buckets=tuple(_clipped(row) for row in buckets[:MAX_BUCKETS]),
        buckets_total=len(buckets),
    )


def as_json(status: StatusSnapshot) -> dict[str, Any]:
    """The snapshot as JSON-ready data: the page's facts, unformatted (bytes, seconds)."""
    return dataclasses.asdict(status)


def seconds(value: float | None) -> str:
    if value is None:
        return "?"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    minutes, secs = divmod(int(value), 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{secs:02d}s"


def clock(epoch: float) -> str:
    """An instant as UTC wall-clock time."""
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def percent(part: float, whole: float | None) -> str:
    return "?" if not whole else f"{100 * part / whole:.0f}%"


_ENVIRONMENT = jinja2.Environment(
    autoescape=True,  # every value escaped, whoever chose it
    undefined=jinja2.StrictUndefined,  # a misspelt name is an error, not an empty cell
    trim_blocks=True,
    lstrip_blocks=True,
)
_ENVIRONMENT.filters.update(size=format_size, seconds=seconds, clock=clock, clip=clip)
_ENVIRONMENT.globals.update(percent=percent, refresh=REFRESH_SECONDS)
_TEMPLATE = _ENVIRONMENT.from_string(
    importlib.resources.files("shim").joinpath("status.html").read_text(encoding="utf-8")
)


def render_html(status: StatusSnapshot) -> str:
    return _TEMPLATE.render(status=status)
