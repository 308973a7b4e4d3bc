"""Single-flight fills: one origin fetch per object, however many clients ask at once.

A fill streams the origin's body into a temporary file and tells its readers as bytes
arrive, so each client streams at the origin's pace. It belongs to no client: a client that
goes away does not cancel it. It becomes a cache entry only when every byte promised by
Content-Length arrived and, where the ETag is a plain MD5, the digest matches.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import time
import weakref
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from shim._errors import ShimError, UpstreamError
from shim.cache.store import CacheStore, EntryMeta
from shim.metrics import Metrics
from shim.redact import redact_error_body, redact_url
from shim.upstream import Upstream, UpstreamReply

log = logging.getLogger("shim.cache")

_MD5_ETAG = re.compile(r'"?([0-9a-fA-F]{32})"?')
# Origin headers that describe the object itself and are kept with the entry.
KEPT_HEADERS = ("Content-Type", "Content-Encoding", "ETag", "Last-Modified")


class OriginStatus(ShimError):
    """The origin answered with a status that is no object (an error, a redirect): passed
    through, never cached, and never followed. What it repeats of the signed request (a
    redirect's Location, the key ID and string-to-sign of an S3 error) is redacted here, so
    that it reaches no client."""

    def __init__(
        self, status: int, headers: Mapping[str, str], body: bytes, signed_url: str
    ) -> None:
        super().__init__(f"origin answered {status}")
        self.status = status
        self.headers = kept_headers(headers)
        if "Location" in headers:
            self.headers["Location"] = redact_url(headers["Location"])
        self.body = redact_error_body(body, signed_url)


class Fill:
    """One object being fetched. Readers wait on it; the fetch task writes to it."""

    def __init__(self, key: str, identity_url: str, temp: Path) -> None:
        self.key = key
        self.identity_url = identity_url
        self.path = temp  # where the body is written; moved into the store on commit
        # Readers pread one descriptor, so a commit (rename) or a drop (unlink) of the file
        # never gets in their way; it closes when the last holder of the Fill lets go.
        self.fd: int | None = None
        self.reserved = 0  # store space held for this body until commit or failure
        self.headers_ready = asyncio.Event()
        self.size: int | None = None
        self.headers: dict[str, str] = {}
        self.headers_published = False
        self.status = 200  # or 206: one part of the object (partNumber), never kept
        self.route = "direct"
        self.task_id = key  # replaced by the dfdaemon's own, when it reports one
        self.written = 0
        self.finished = False
        self.error: ShimError | None = None
        self._changed = asyncio.Event()

    @classmethod
    def complete(cls, key: str, path: Path, size: int) -> Fill:
        """A fill that already ended: how a cache entry is read through the same code."""
        fill = cls(key, "", path)
        fill.open_for_readers()
        fill.size = fill.written = size
        fill.finished = True
        fill.headers_ready.set()
        return fill

    def open_for_readers(self) -> None:
        self.fd = os.open(self.path, os.O_RDONLY)
        weakref.finalize(self, os.close, self.fd)

    def _notify(self) -> None:
        # Swap in a fresh event so a reader's cancellation never touches the others.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def publish(self, size: int | None, headers: dict[str, str], reply: UpstreamReply) -> None:
        self.size, self.headers, self.status = size, headers, reply.status
        self.route, self.task_id = reply.route, reply.task_id or self.key
        self.headers_published = True
        self.headers_ready.set()

    def advance(self, count: int) -> None:
        self.written += count
        self._notify()

    def finish(self) -> None:
        self.finished = True
        self._notify()

    def fail(self, error: ShimError) -> None:
        self.error = error
        self.headers_ready.set()
        self._notify()

    @property
    def readable(self) -> int:
        """Bytes readers may send. The last byte waits until the whole body is verified, so no
        client holds a complete-looking response that the fill then rejects."""
        return self.written if self.finished else max(self.written - 1, 0)

    async def wait_past(self, offset: int) -> None:
        """Return once more than ``offset`` bytes are readable, or the fill ended."""
        while self.readable <= offset and not self.finished and self.error is None:
            await self._changed.wait()


class FillRunner:
    """Starts at most one fill per key and runs it to the end."""

    def __init__(
        self,
        store: CacheStore,
        metrics: Metrics,
        upstream: Upstream,
        *,
        keep: bool,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._upstream = upstream
        self._keep = keep  # False: fills feed their readers, then go (a dfdaemon caches)
        self._fills: dict[str, Fill] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # One worker keeps digest updates in order, off the event loop (hashlib drops the GIL).
        self._hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shim-md5")

    def get_or_start(
        self, key: str, identity_url: str, signed_url: str, filtered: Sequence[str]
    ) -> Fill:
        fill = self._fills.get(key)
        if fill is None:
            fill = Fill(key, identity_url, self._store.temp_path(key))
            self._fills[key] = fill
            task = asyncio.create_task(
                self._run(fill, signed_url, filtered), name=f"fill {key[:12]}"
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return fill

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._hasher.shutdown(wait=True)

    async def _run(self, fill: Fill, signed_url: str, filtered: Sequence[str]) -> None:
        self._metrics.origin_fetches.inc()
        try:
            await self._fetch(fill, signed_url, filtered)
        except ShimError as error:
            fill.fail(error)
        except asyncio.CancelledError:
            fill.fail(UpstreamError("shim is shutting down"))
            raise
        except Exception as error:
            log.exception("fill of %s failed unexpectedly", fill.identity_url)
            fill.fail(UpstreamError(f"internal error: {type(error).__name__}"))
        finally:
            del self._fills[fill.key]
            self._store.release(fill.reserved)
            if not fill.finished:
                fill.path.unlink(missing_ok=True)
            if fill.error is not None:
                kind = "origin_status" if isinstance(fill.error, OriginStatus) else "origin"
                self._metrics.errors.labels(kind=kind).inc()
                log.warning("fetch of %s failed: %s", fill.identity_url, fill.error)

    async def _fetch(self, fill: Fill, signed_url: str, filtered: Sequence[str]) -> None:
        """Fetch into ``fill``; keep it in the store when there is room and keeping is on."""
        reply = await self._upstream.open("GET", signed_url, filtered)
        try:
            if reply.status not in (200, 206):
                body = await reply.head_of_body()
                raise OriginStatus(reply.status, reply.headers, body, signed_url)
            # A 206 to a GET without Range is one part of the object (partNumber): streamed to
            # its readers as such, never kept as the object.
            whole = reply.status == 200
            kept = kept_headers(reply.headers) if whole else part_headers(reply.headers)
            size = reply.content_length
            if self._keep and whole and size is not None and self._store.reserve(size):
                fill.reserved = size
            fill.publish(size, kept, reply)
            digest = await self._copy_body(fill, reply)
        finally:
            reply.close()
        if size is not None and fill.written != size:
            raise UpstreamError(f"{reply.route} sent {fill.written} of {size} bytes")
        # A part's ETag is the whole object's: nothing to check the part against.
        expected = _MD5_ETAG.fullmatch(kept.get("ETag", "")) if whole else None
        if digest is not None and expected and digest != expected.group(1).lower():
            raise UpstreamError("body does not match the origin's ETag (MD5)")
        if fill.reserved:
            meta = EntryMeta(
                key=fill.key,
                url=fill.identity_url,
                size=fill.written,
                etag=kept.get("ETag"),
                content_type=kept.get("Content-Type"),
                content_encoding=kept.get("Content-Encoding"),
                last_modified=kept.get("Last-Modified"),
                stored_at=time.time(),
            )
            self._store.commit(meta, fill.path, fill.reserved)
            fill.reserved = 0  # the store counts it as used now
        else:
            fill.path.unlink()  # not kept: its readers go on through their descriptor
        fill.finish()

    async def _copy_body(self, fill: Fill, reply: UpstreamReply) -> str | None:
        loop = asyncio.get_running_loop()
        md5 = hashlib.md5(usedforsecurity=False) if "ETag" in reply.headers else None
        pending: asyncio.Future[None] | None = None
        try:
            with fill.path.open("wb") as out:
                fill.open_for_readers()
                async for chunk in reply.chunks():
                    out.write(chunk)
                    out.flush()
                    fill.advance(len(chunk))
                    self._metrics.origin_bytes.inc(len(chunk))
                    if md5 is not None:
                        if pending is not None:
                            await pending
                        pending = loop.run_in_executor(self._hasher, md5.update, chunk)
                if pending is not None:
                    await pending
                if fill.reserved:  # durable before it becomes an entry
                    await asyncio.to_thread(os.fsync, out.fileno())
        except UpstreamError as error:
            raise UpstreamError(f"{error} after {fill.written} bytes") from None
        finally:
            if pending is not None and not pending.done():
                with contextlib.suppress(Exception):
                    await pending
        return md5.hexdigest() if md5 is not None else None


def kept_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The origin headers that describe the object, to keep with it and pass on."""
    return {name: headers[name] for name in KEPT_HEADERS if name in headers}


def part_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers of a 206 to a request without Range: the object's, and which part it is."""
    content_range = headers.get("Content-Range")
    if content_range is None:
        raise UpstreamError("origin answered 206 without Content-Range")
    return {**kept_headers(headers), "Content-Range": content_range}
