"""The admin port's prefetch jobs: each warms a list of objects in the background, a few at a
time across all jobs, and reports per object how far it got. A bounded number of jobs is kept;
the oldest finished one makes room for a new one.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from shim.prefetch.warm import Warmed
from shim.redact import redact_url

log = logging.getLogger("shim")

# Warm one URL, telling ``on_bytes`` of each part of its body as it arrives.
WarmUrl = Callable[[str, Callable[[int], None]], Awaitable[Warmed]]

MAX_JOBS = 32
# Objects warmed at once, across every job: a long list must not start a thousand fills.
CONCURRENCY = 4

State = Literal["queued", "running", "done", "failed"]


@dataclass
class ObjectProgress:
    url: str  # redacted: a presigned URL given to prefetch keeps no signature here
    state: State = "queued"
    received: int = 0
    outcome: Warmed | None = None

    def as_json(self) -> dict[str, Any]:
        outcome = self.outcome
        return {
            "url": self.url,
            "state": self.state,
            "bytes": self.received,
            "size": outcome.size if outcome else None,
            "status": outcome.status if outcome else None,
            "cache": outcome.cache if outcome else None,
            "route": outcome.route if outcome else None,
            "task_id": outcome.task_id if outcome else None,
            "error": outcome.error if outcome else None,
        }


@dataclass
class PrefetchJob:
    id: str
    created: float
    objects: list[ObjectProgress]
    finished: float | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def state(self) -> Literal["running", "done", "failed"]:
        if self.finished is None:
            return "running"
        return "failed" if any(o.state == "failed" for o in self.objects) else "done"

    def as_json(self) -> dict[str, Any]:
        counts = {state: 0 for state in ("queued", "running", "done", "failed")}
        for entry in self.objects:
            counts[entry.state] += 1
        return {
            "id": self.id,
            "state": self.state,
            "created": self.created,
            "finished": self.finished,
            "counts": counts,
            "objects": [entry.as_json() for entry in self.objects],
        }


class JobsFull(Exception):
    """Every kept job is still running: no room for another."""


class PrefetchJobs:
    def __init__(
        self, warm: WarmUrl, *, max_jobs: int = MAX_JOBS, concurrency: int = CONCURRENCY
    ) -> None:
        self._warm = warm
        self._max_jobs = max_jobs
        self._slots = asyncio.Semaphore(concurrency)
        self._jobs: OrderedDict[str, PrefetchJob] = OrderedDict()

    def submit(self, urls: list[str]) -> PrefetchJob:
        """Start warming ``urls`` (checked already); JobsFull when no job can make room."""
        if len(self._jobs) >= self._max_jobs:
            oldest_finished = next((j for j in self._jobs.values() if j.finished), None)
            if oldest_finished is None:
                raise JobsFull(f"{self._max_jobs} prefetch jobs are running; try again later")
            del self._jobs[oldest_finished.id]
        job = PrefetchJob(
            secrets.token_urlsafe(12), time.time(), [ObjectProgress(redact_url(u)) for u in urls]
        )
        job.task = asyncio.create_task(self._run(job, urls))
        self._jobs[job.id] = job
        return job

    def get(self, job_id: str) -> PrefetchJob | None:
        return self._jobs.get(job_id)

    async def close(self) -> None:
        tasks = [job.task for job in self._jobs.values() if job.task and not job.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, job: PrefetchJob, urls: list[str]) -> None:
        await asyncio.gather(
            *(self._one(entry, url) for entry, url in zip(job.objects, urls, strict=True))
        )
        job.finished = time.time()
        failed = sum(entry.state == "failed" for entry in job.objects)
        log.info("prefetch job %s: %d warm, %d failed", job.id, len(urls) - failed, failed)

    async def _one(self, entry: ObjectProgress, url: str) -> None:
        async with self._slots:
            entry.state = "running"

            def on_bytes(count: int) -> None:
                entry.received += count

            try:
                outcome = await self._warm(url, on_bytes)
            except Exception:
                log.exception("prefetch of %s failed", entry.url)
                outcome = Warmed(500, error="internal error; see shim's log")
        entry.outcome = outcome
        entry.state = "failed" if outcome.error else "done"
        if outcome.error:
            log.warning("prefetch of %s failed: %s", entry.url, outcome.error)
