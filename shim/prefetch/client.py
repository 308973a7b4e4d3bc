"""``shim prefetch``: download objects through the running shim proxy, exactly as a model
server would (so through its cache and its dfdaemon), and throw the bytes away.

A HEAD of each first gives the sizes for the overall progress; then GETs, a few at a time, each
read in bounded chunks. Whatever happens to one object is recorded and the others go on.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiohttp

from shim.cache.server import CACHE_STATUS_HEADER, ERROR_HEADER, ROUTE_HEADER, TASK_ID_HEADER
from shim.redact import redact_url, redact_urls

_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class ProxyTarget:
    url: str  # http://HOST:PORT
    auth: tuple[str, str] | None = None  # proxy_auth: username, password
    ca_cert: Path | None = None  # shim's interception CA, for https URLs


@dataclass(frozen=True, slots=True)
class Fetched:
    """One object's download through the proxy; ``error`` None: it arrived whole."""

    url: str  # redacted
    status: int | None
    received: int
    seconds: float
    cache: str = "-"
    route: str = "-"
    task_id: str | None = None
    error: str | None = None


class Progress(Protocol):
    """Told of every step, from the event loop: bars on a terminal, lines otherwise."""

    def sized(self, sizes: Sequence[int | None]) -> None: ...
    def started(self, index: int, size: int | None) -> None: ...
    def advanced(self, index: int, count: int) -> None: ...
    def finished(self, index: int, fetched: Fetched) -> None: ...


def ssl_context(ca_cert: Path | None) -> ssl.SSLContext:
    """The system's CAs plus shim's own, which signs the certificates it intercepts with."""
    context = ssl.create_default_context()
    if ca_cert is not None:
        context.load_verify_locations(cafile=str(ca_cert))
    return context


async def prefetch_all(
    urls: Sequence[str],
    target: ProxyTarget,
    progress: Progress,
    *,
    parallel: int = 4,
    read_timeout: float = 300.0,
) -> list[Fetched]:
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=read_timeout)
    slots = asyncio.Semaphore(parallel)
    context = ssl_context(target.ca_cert)
    # No other proxy from the environment, and the bytes as sent (nothing decompressed).
    async with aiohttp.ClientSession(
        timeout=timeout, trust_env=False, auto_decompress=False
    ) as session:
        auth = aiohttp.BasicAuth(*target.auth) if target.auth else None
        fetcher = _Fetcher(session, target.url, auth, context, slots)
        sizes = await asyncio.gather(*(fetcher.size(url) for url in urls))
        progress.sized(sizes)
        return list(
            await asyncio.gather(*(fetcher.get(i, url, progress) for i, url in enumerate(urls)))
        )


@dataclass
class _Fetcher:
    session: aiohttp.ClientSession
    proxy: str
    auth: aiohttp.BasicAuth | None
    context: ssl.SSLContext
    slots: asyncio.Semaphore

    async def size(self, url: str) -> int | None:
        """The object's size as the proxy reports it to a HEAD; None when it cannot say."""
        async with self.slots:
            try:
                async with self.session.head(
                    url, proxy=self.proxy, proxy_auth=self.auth, ssl=self.context
                ) as response:
                    return response.content_length if response.status == 200 else None
            except (aiohttp.ClientError, TimeoutError):
                return None  # the GET says what is wrong

    async def get(self, index: int, url: str, progress: Progress) -> Fetched:
        async with self.slots:
            started = time.monotonic()
            received = 0
            status: int | None = None
            headers: dict[str, str] = {}
            try:
                async with self.session.get(
                    url,
                    proxy=self.proxy,
                    proxy_auth=self.auth,
                    ssl=self.context,
                    headers={"Accept-Encoding": "identity"},
                ) as response:
                    status, headers = response.status, dict(response.headers)
                    if status != 200:
                        error = await _failure(response)
                    else:
                        progress.started(index, response.content_length)
                        async for chunk in response.content.iter_chunked(_CHUNK):
                            received += len(chunk)
                            progress.advanced(index, len(chunk))
                        error = None
            except aiohttp.ClientPayloadError:
                error = f"cut short after {received} bytes"
            except aiohttp.ClientProxyConnectionError:
                error = f"cannot connect to the proxy at {self.proxy}"
            except aiohttp.ClientHttpProxyError as problem:
                error = f"the proxy refused the tunnel: {problem.status} {problem.message}"
            except aiohttp.ClientConnectorCertificateError:
                error = "TLS: the certificate is not shim's (is --proxy a shim with this confdir?)"
            except (aiohttp.ClientError, TimeoutError) as problem:
                # Its message may quote the URL (InvalidURL): never with its signature.
                text = redact_urls(str(problem))
                error = f"{type(problem).__name__}: {text}" if text else "timed out"
        fetched = Fetched(
            redact_url(url),
            status,
            received,
            time.monotonic() - started,
            headers.get(CACHE_STATUS_HEADER, "-"),
            headers.get(ROUTE_HEADER, "-"),
            headers.get(TASK_ID_HEADER),
            error,
        )
        progress.finished(index, fetched)
        return fetched


async def _failure(response: aiohttp.ClientResponse) -> str:
    """``STATUS REASON``, with the first line of shim's own explanation when it gave one."""
    what = f"{response.status} {response.reason or ''}".strip()
    kind = response.headers.get(ERROR_HEADER)
    if kind is None:
        return what
    if kind == "origin_status":
        return f"{what} from the origin"  # its body is the store's own document
    first = (await response.content.read(1024)).decode(errors="replace").partition("\n")[0]
    return f"{what} ({kind}): {first.removeprefix('shim: ')}"
