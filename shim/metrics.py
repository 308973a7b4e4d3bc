"""Prometheus metrics, in a registry of shim's own so several proxies can share a process.

Every label's values are bounded: routes, kinds and results are shim's own words, buckets are
the configured ones, and objects and dfdaemon tasks are only the hottest few (``HotSeries``),
long object keys clipped (``label_value``).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from shim.topk import HotKeys

# Keys tracked for each one shown: the hottest few are then nearly exact (see shim.topk).
TRACKED_PER_SHOWN = 4
# How quickly an object's past requests stop making it hot.
HOT_HALF_LIFE = 3600.0
DEFAULT_TOP_OBJECTS = 20
# Fills last from milliseconds (a small object nearby) to many minutes (a large model).
FILL_SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
# A label value longer than this (bytes) is clipped: object keys may be up to a MiB, and a
# scrape shows every tracked one in several families.
MAX_LABEL_BYTES = 1024
_CLIPPED_TO = 1000


def label_value(value: str) -> str:
    """``value`` as a label may show it: whole up to MAX_LABEL_BYTES, else its first bytes,
    "…" and a short hash of the whole, so that distinct long values stay distinct."""
    if len(value) * 4 <= MAX_LABEL_BYTES:  # no UTF-8 character is longer than 4 bytes
        return value
    encoded = value.encode("utf-8", "surrogatepass")
    if len(encoded) <= MAX_LABEL_BYTES:
        return value
    head = encoded[:_CLIPPED_TO].decode("utf-8", "ignore")  # not half a character
    return f"{head}…{hashlib.sha256(encoded).hexdigest()[:16]}"


@dataclass(slots=True)
class Counts:
    """What one hot key has seen since it became one of the tracked keys."""

    requests: int = 0
    hits: int = 0
    misses: int = 0
    bytes: int = 0


# A family a HotSeries exposes: its name (without _total), help, and which count it shows.
Family = tuple[str, str, Callable[[Counts], int]]


class HotSeries(Collector):
    """Counters of the ``shown`` hottest keys (tuples of label values), one series per key
    and family. A key that falls out of the tracked ones loses its series (and starts again
    at zero if it comes back: a counter reset, which rate() takes in its stride)."""

    def __init__(
        self,
        labels: Sequence[str],
        families: Sequence[Family],
        shown: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._labels = list(labels)
        self._families = families
        self._shown = shown
        self._clock = clock
        self._hot: HotKeys[tuple[str, ...], Counts] = HotKeys(
            shown * TRACKED_PER_SHOWN, Counts, half_life=HOT_HALF_LIFE
        )

    def resize(self, shown: int) -> None:
        self._shown = shown
        self._hot.resize(shown * TRACKED_PER_SHOWN)

    def add(self, key: tuple[str, ...]) -> Counts | None:
        """One request for ``key``: it becomes hotter. Its counts, None when none are kept."""
        counts = self._hot.add(_labels_of(key), self._clock())
        if counts is not None:
            counts.requests += 1
        return counts

    def get(self, key: tuple[str, ...]) -> Counts | None:
        return self._hot.get(_labels_of(key))

    def describe(self) -> Iterator[CounterMetricFamily]:
        for name, documentation, _ in self._families:
            yield CounterMetricFamily(name, documentation, labels=self._labels)

    def collect(self) -> Iterator[CounterMetricFamily]:
        top = self._hot.top(self._shown)
        for name, documentation, count in self._families:
            family = CounterMetricFamily(name, documentation, labels=self._labels)
            for key, counts in top:
                family.add_metric(list(key), count(counts))
            yield family


def _labels_of(key: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(label_value(value) for value in key)


class Metrics:
    def __init__(self, top_objects: int = DEFAULT_TOP_OBJECTS) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "shim_requests",
            "Requests by how they were routed (hit, miss, signed, pass).",
            ["route"],
            registry=self.registry,
        )
        self.response_bytes = Counter(
            "shim_response_bytes",
            "Body bytes sent to clients for signed objects.",
            registry=self.registry,
        )
        self.cache_hits = Counter(
            "shim_cache_hits", "Requests served from the embedded cache.", registry=self.registry
        )
        self.cache_misses = Counter(
            "shim_cache_misses",
            "Requests not in the embedded cache (joined or started a fill).",
            registry=self.registry,
        )
        self.origin_bytes = Counter(
            "shim_origin_bytes",
            "Body bytes received from origins directly (route direct or fallback).",
            registry=self.registry,
        )
        self.dfdaemon_bytes = Counter(
            "shim_dfdaemon_bytes",
            "Body bytes received through the dfdaemon (P2P: from peers, its own cache, or its "
            "own fetch from the origin).",
            registry=self.registry,
        )
        self.origin_fetches = Counter(
            "shim_origin_fetches", "Fetches started towards origins.", registry=self.registry
        )
        self.origin_range_requests = Counter(
            "shim_origin_range_requests",
            "Ranged requests fills sent beside their first one: for readers far ahead of the "
            "body, and to go on after them (shim.cache.fetchplan).",
            registry=self.registry,
        )
        self.errors = Counter(
            "shim_errors",
            "Failures by kind (request, signing, origin, origin_status, truncated, transfer, "
            "client, internal, disk: the cache's disk full even after evicting).",
            ["kind"],
            registry=self.registry,
        )
        self.integrity = Counter(
            "shim_integrity",
            "Objects fetched, by how their body compared with the origin's checksum (verified, "
            "mismatch, unchecked) and kind (the checksum, or why none could be checked).",
            ["result", "kind"],
            registry=self.registry,
        )
        self.origin_retries = Counter(
            "shim_origin_retries",
            "Requests sent again after the connection failed before any response byte, by "
            "upstream (origin, dfdaemon).",
            ["upstream"],
            registry=self.registry,
        )
        self.dfdaemon_requests = Counter(
            "shim_dfdaemon_requests",
            "GETs offered to the dfdaemon, by result (ok, fallback to the origin, failed).",
            ["result"],
            registry=self.registry,
        )
        self.dfdaemon_tasks = HotSeries(
            ["task_id"],
            [
                (
                    "shim_dfdaemon_tasks",
                    "Requests the dfdaemon answered, by the task ID it reported, for the "
                    "hottest tasks (metrics.top_objects).",
                    lambda counts: counts.requests,
                )
            ],
            top_objects,
        )
        self.registry.register(self.dfdaemon_tasks)
        self.revalidations = Counter(
            "shim_revalidations",
            "Checks of a cached object (or of the version a dfdaemon task names) with its "
            "origin, by result (fresh, changed, gone, error: served stale or the origin's "
            "answer passed on).",
            ["result"],
            registry=self.registry,
        )
        self.cache_bytes = Gauge(
            "shim_cache_bytes", "Bytes held by the embedded cache.", registry=self.registry
        )
        self.cache_entries = Gauge(
            "shim_cache_entries", "Complete entries in the embedded cache.", registry=self.registry
        )
        self.bucket_credentials = Gauge(
            "shim_bucket_credentials",
            "1 when a bucket's credentials loaded at start-up or when a reload brought new "
            "credentials, 0 when they could not be (the log says why), by bucket (its reverse "
            "alias) and provider; absent while being checked.",
            ["bucket", "provider"],
            registry=self.registry,
        )
        self.config_reloads = Counter(
            "shim_config_reloads",
            "Config reloads (SIGHUP or a change of the config file), by result (applied, "
            "unchanged, refused: the previous config keeps running; the log says why).",
            ["result"],
            registry=self.registry,
        )
        self.bucket_hits = Counter(
            "shim_bucket_hits",
            "Requests answered from the cache, by bucket (its reverse alias).",
            ["bucket"],
            registry=self.registry,
        )
        self.bucket_misses = Counter(
            "shim_bucket_misses",
            "Requests not in the cache (joined or started a fetch), by bucket.",
            ["bucket"],
            registry=self.registry,
        )
        self.bucket_response_bytes = Counter(
            "shim_bucket_response_bytes",
            "Body bytes sent to clients (objects and error pages), by bucket.",
            ["bucket"],
            registry=self.registry,
        )
        self.fill_duration = Histogram(
            "shim_fill_duration_seconds",
            "Seconds from the start of an object's fetch to its last byte verified, for fetches "
            "that completed, by route (direct, dfdaemon, fallback).",
            ["route"],
            buckets=FILL_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.hot_objects = HotSeries(
            ["bucket", "object"],
            [
                (
                    "shim_object_requests",
                    "Requests for each of the hottest objects (metrics.top_objects), by bucket "
                    "and object key, since it became one of the tracked objects.",
                    lambda counts: counts.requests,
                ),
                ("shim_object_hits", "Cache hits of the hottest objects.", lambda c: c.hits),
                ("shim_object_misses", "Cache misses of the hottest objects.", lambda c: c.misses),
                (
                    "shim_object_response_bytes",
                    "Body bytes sent to clients for the hottest objects.",
                    lambda counts: counts.bytes,
                ),
            ],
            top_objects,
        )
        self.registry.register(self.hot_objects)

    def show_top(self, top_objects: int) -> None:
        """Show the ``top_objects`` hottest objects and dfdaemon tasks from now on."""
        self.hot_objects.resize(top_objects)
        self.dfdaemon_tasks.resize(top_objects)

    def received(self, route: str) -> Counter:
        """The counter of body bytes received by ``route`` (direct, fallback, dfdaemon)."""
        return self.dfdaemon_bytes if route == "dfdaemon" else self.origin_bytes

    def requested(self, bucket: str, key: str) -> None:
        """A request for object ``key`` of ``bucket`` (its reverse alias) begins."""
        self.hot_objects.add((bucket, key))

    def answered(self, bucket: str, key: str, cache: str) -> None:
        """Its answer's cache state is known: HIT, MISS, or "-" (none: a failure)."""
        counts = self.hot_objects.get((bucket, key))
        if cache == "HIT":
            self.bucket_hits.labels(bucket=bucket).inc()
            if counts is not None:
                counts.hits += 1
        elif cache == "MISS":
            self.bucket_misses.labels(bucket=bucket).inc()
            if counts is not None:
                counts.misses += 1

    def sent(self, bucket: str, key: str, count: int) -> None:
        """``count`` more body bytes of its answer went to the client."""
        self.bucket_response_bytes.labels(bucket=bucket).inc(count)
        counts = self.hot_objects.get((bucket, key))
        if counts is not None:
            counts.bytes += count

    def dfdaemon_task(self, task_id: str) -> None:
        """The dfdaemon answered a request with task ``task_id``."""
        self.dfdaemon_tasks.add((task_id,))
