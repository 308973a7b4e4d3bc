"""What shim records of each request it served: one record, logged as a line and kept among the
most recent ones for the status page. Pure: no I/O."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

# Enough for an operator to see what just happened, small enough to never matter in memory.
RECENT_REQUESTS = 100


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request served for a configured bucket, once its answer is complete (or failed)."""

    time: float  # when it ended, seconds since the epoch
    method: str
    url: str  # redacted (shim.redact): never a signature or credential
    bucket: str  # the bucket's reverse alias
    status: int
    cache: str  # HIT, MISS, or "-" (no cache state: refused, failed before an answer)
    route: str  # cache, direct, dfdaemon, fallback (X-Shim-Route), or "-"
    task_id: str
    bytes: int  # body bytes sent to the client
    duration: float  # seconds from the request's first byte to the answer's last
    error: str = ""  # why it was refused or failed (redacted), else empty


class RecentRequests:
    """The last ``size`` records, newest first; bounded whatever the traffic."""

    def __init__(self, size: int = RECENT_REQUESTS) -> None:
        self._records: deque[RequestRecord] = deque(maxlen=size)

    def add(self, record: RequestRecord) -> None:
        self._records.appendleft(record)

    def snapshot(self) -> list[RequestRecord]:
        return list(self._records)


def text_line(record: RequestRecord) -> str:
    """The record as one readable log line."""
    line = (
        f"{record.method} {record.url} -> {record.status} {record.cache} via {record.route} "
        f"task={record.task_id} bucket={record.bucket} bytes={record.bytes} "
        f"duration={record.duration:.3f}s"
    )
    return f"{line} error: {record.error}" if record.error else line
