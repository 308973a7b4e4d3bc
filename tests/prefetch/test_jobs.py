"""Prefetch jobs: their progress, the shared limit on objects warmed at once, and the bound on
jobs kept. The warm function is scripted here: what it does in shim is in
tests/integration/test_prefetch.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from shim.prefetch.jobs import JobsFull, PrefetchJobs
from shim.prefetch.warm import Warmed


class ScriptedWarm:
    """Warms a URL when the test releases it; counts how many run at once."""

    def __init__(self) -> None:
        self.release: dict[str, asyncio.Event] = {}
        self.running = 0
        self.most_at_once = 0

    def gate(self, url: str) -> asyncio.Event:
        return self.release.setdefault(url, asyncio.Event())

    async def __call__(self, url: str, on_bytes: Callable[[int], None]) -> Warmed:
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            on_bytes(10)
            await self.gate(url).wait()
            if "boom" in url:
                raise RuntimeError("secret detail")
            if "absent" in url:
                return Warmed(404, "MISS", "direct", "t" * 64, error="answered 404")
            on_bytes(90)
            return Warmed(200, "MISS", "direct", "t" * 64, size=100)
        finally:
            self.running -= 1


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_job_reports_each_object_as_it_goes() -> None:
    async def main() -> None:
        warm = ScriptedWarm()
        jobs = PrefetchJobs(warm)
        job = jobs.submit(["http://h/a", "http://h/absent"])
        await _settle()
        running = job.as_json()
        assert running["state"] == "running"
        assert [o["bytes"] for o in running["objects"]] == [10, 10]
        assert [o["state"] for o in running["objects"]] == ["running", "running"]
        warm.gate("http://h/a").set()
        warm.gate("http://h/absent").set()
        assert job.task is not None
        await job.task
        done = job.as_json()
        assert (done["state"], done["counts"]["done"], done["counts"]["failed"]) == ("failed", 1, 1)
        first, second = done["objects"]
        assert (first["state"], first["bytes"], first["size"], first["cache"]) == (
            "done",
            100,
            100,
            "MISS",
        )
        assert (second["state"], second["status"], second["error"]) == (
            "failed",
            404,
            "answered 404",
        )
        assert jobs.get(job.id) is job and jobs.get("other") is None

    asyncio.run(main())


def test_objects_are_warmed_a_few_at_a_time_across_jobs() -> None:
    async def main() -> None:
        warm = ScriptedWarm()
        jobs = PrefetchJobs(warm, concurrency=3)
        submitted = [jobs.submit([f"http://h/{j}-{i}" for i in range(4)]) for j in range(3)]
        await _settle()
        assert warm.running == 3
        for gate_url in [f"http://h/{j}-{i}" for j in range(3) for i in range(4)]:
            warm.gate(gate_url).set()
        await asyncio.gather(*(job.task for job in submitted if job.task))
        assert warm.most_at_once == 3
        assert all(job.state == "done" for job in submitted)

    asyncio.run(main())


def test_no_more_jobs_than_the_bound_and_the_oldest_finished_makes_room() -> None:
    async def main() -> None:
        warm = ScriptedWarm()
        jobs = PrefetchJobs(warm, max_jobs=2)
        first = jobs.submit(["http://h/first"])
        second = jobs.submit(["http://h/second"])
        with pytest.raises(JobsFull, match="2 prefetch jobs are running"):
            jobs.submit(["http://h/third"])
        warm.gate("http://h/second").set()
        assert second.task is not None
        await second.task
        third = jobs.submit(["http://h/third"])
        assert jobs.get(second.id) is None  # finished: dropped for the new one
        assert jobs.get(first.id) is first and jobs.get(third.id) is third
        await jobs.close()
        assert first.task is not None and first.task.cancelled()

    asyncio.run(main())


def test_an_unexpected_failure_is_reported_without_its_details() -> None:
    async def main() -> None:
        warm = ScriptedWarm()
        jobs = PrefetchJobs(warm)
        warm.gate("http://h/boom").set()
        job = jobs.submit(["http://h/boom"])
        assert job.task is not None
        await job.task
        (entry,) = job.as_json()["objects"]
        assert (entry["state"], entry["error"]) == ("failed", "internal error; see shim's log")

    asyncio.run(main())


def test_a_presigned_url_is_kept_without_its_signature() -> None:
    async def main() -> None:
        warm = ScriptedWarm()
        jobs = PrefetchJobs(warm)
        url = "https://b.s3.amazonaws.com/k?X-Amz-Signature=abcdef&X-Amz-Credential=AKID"
        job = jobs.submit([url])
        (entry,) = job.as_json()["objects"]
        assert "abcdef" not in entry["url"] and "AKID" not in entry["url"]
        await jobs.close()

    asyncio.run(main())
