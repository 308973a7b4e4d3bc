"""Signing for every configured bucket: each provider's signer behind a cache of signed URLs,
and the start-up check of every bucket's credentials.

A signed URL is reused while comfortably valid: for half its lifetime, and never more than
five minutes, so a URL handed out last still has minutes to run, and temporary credentials
(which the SDKs renew well before they expire) are never used by a URL after they lapse.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterable

from cachetools import TTLCache

from shim._errors import SigningError
from shim.providers import BucketConfig, Signer, provider_of
from shim.recognize import ObjectRef

REUSE_AT_MOST = 300.0  # seconds
CACHED_URLS = 4096  # per bucket: bounded memory, whatever clients ask for


class CachedSigner:
    """One bucket's signer, with signed URLs reused per (key, parameters, scheme, method)."""

    def __init__(
        self,
        signer: Signer,
        lifetime: int,
        *,
        maxsize: int = CACHED_URLS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._signer = signer
        self._urls: TTLCache[tuple[object, ...], str] = TTLCache(
            maxsize, min(lifetime / 2, REUSE_AT_MOST), timer=clock
        )
        self._lock = threading.Lock()

    @staticmethod
    def _key(ref: ObjectRef, method: str) -> tuple[object, ...]:
        return (ref.key, ref.params, ref.client_scheme, method)

    def cached(self, ref: ObjectRef, method: str) -> str | None:
        """A signed URL still fit to hand out, without blocking; None when one must be signed."""
        with self._lock:
            return self._urls.get(self._key(ref, method))

    def sign(self, ref: ObjectRef, method: str) -> str:
        """A signed URL, from the cache or freshly signed (may block). Raises SigningError."""
        url = self.cached(ref, method)
        if url is None:
            url = self._signer.sign(ref, method)
            with self._lock:
                self._urls[self._key(ref, method)] = url
        return url

    def check(self) -> None:
        self._signer.check()

    @property
    def signer(self) -> Signer:
        """The provider's signer itself (for requests other than object reads: listings)."""
        return self._signer


def signers_for(
    buckets: Iterable[BucketConfig], default_lifetime: int
) -> dict[BucketConfig, CachedSigner]:
    """A cached signer per bucket, with the bucket's URL lifetime (or the default one)."""
    signers = {}
    for bucket in buckets:
        lifetime = bucket.presign_expires or default_lifetime
        signers[bucket] = CachedSigner(provider_of(bucket).signer(bucket, lifetime), lifetime)
    return signers


def credential_problem(signer: CachedSigner) -> str | None:
    """Why the bucket's credentials cannot be loaded now, or None when they can (blocking)."""
    try:
        signer.check()
    except SigningError as error:
        return str(error)
    return None


async def credential_problem_in_background(signer: CachedSigner) -> str | None:
    """``credential_problem`` in a daemon thread of its own: a check stuck on an unreachable
    metadata service (up to tens of seconds outside its cloud) never delays the process's exit,
    as a thread of asyncio's pool would (the loop waits for those when it closes)."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[str | None] = loop.create_future()

    def settle(reason: str | None) -> None:
        if not answer.done():
            answer.set_result(reason)

    def run() -> None:
        try:
            reason = credential_problem(signer)
        except Exception as error:  # an SDK failing in a way its signer did not foresee
            reason = f"the credential check failed ({type(error).__name__})"
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(settle, reason)

    threading.Thread(target=run, name="shim-credential-check", daemon=True).start()
    return await answer
