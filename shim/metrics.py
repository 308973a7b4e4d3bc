"""Prometheus metrics, in a registry of shim's own so several proxies can share a process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class Metrics:
    def __init__(self) -> None:
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
            "shim_origin_bytes", "Body bytes received from origins.", registry=self.registry
        )
        self.origin_fetches = Counter(
            "shim_origin_fetches", "Fetches started towards origins.", registry=self.registry
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
        self.dfdaemon_tasks = Counter(
            "shim_dfdaemon_tasks",
            "Requests the dfdaemon answered, by the task ID it reported (one per object).",
            ["task_id"],
            registry=self.registry,
        )
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
            "1 when a bucket's credentials loaded at start-up (or when a reload brought the "
            "bucket), 0 when they could not be (the log says why), by bucket (its reverse "
            "alias) and provider.",
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
