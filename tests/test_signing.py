"""CachedSigner: signed URLs reused while comfortably valid; the start-up credential check."""

from __future__ import annotations

import asyncio
import threading
import time
from urllib.parse import parse_qs, urlsplit

import pytest

from shim._errors import SigningError
from shim.providers.s3 import S3Bucket
from shim.recognize import ObjectRef
from shim.signing import (
    REUSE_AT_MOST,
    CachedSigner,
    credential_problem,
    credential_problem_in_background,
    signers_for,
)

BUCKET = S3Bucket(provider="s3", bucket="models")


class CountingSigner:
    """Signs with a serial number, so each fresh signature is told from a reused one."""

    def __init__(self, problem: str | None = None) -> None:
        self.signed = 0
        self.problem = problem

    def sign(self, ref: ObjectRef, method: str) -> str:
        self.signed += 1
        return f"https://store/{ref.key}?{method}&sig={self.signed}"

    def check(self) -> None:
        if self.problem:
            raise SigningError(self.problem)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _ref(
    key: str = "k", params: tuple[tuple[str, str], ...] = (), scheme: str = "https"
) -> ObjectRef:
    return ObjectRef(BUCKET, key, params, scheme)


@pytest.mark.parametrize(("lifetime", "reuse"), [(60, 30.0), (900, REUSE_AT_MOST), (604800, 300)])
def test_a_url_is_reused_for_half_its_lifetime_and_at_most_five_minutes(
    lifetime: int, reuse: float
) -> None:
    clock = Clock()
    signer = CountingSigner()
    cached = CachedSigner(signer, lifetime, clock=clock)
    first = cached.sign(_ref(), "GET")
    clock.now += reuse - 0.5
    assert cached.cached(_ref(), "GET") == first
    assert cached.sign(_ref(), "GET") == first
    assert signer.signed == 1
    clock.now += 1.0
    assert cached.cached(_ref(), "GET") is None
    assert cached.sign(_ref(), "GET") != first
    assert signer.signed == 2


@pytest.mark.parametrize(
    "other",
    [
        (_ref("k2"), "GET"),
        (_ref(), "HEAD"),
        (_ref(params=(("versionId", "v1"),)), "GET"),
        (_ref(scheme="http"), "GET"),
    ],
)
def test_each_key_method_parameters_and_scheme_has_its_own_url(
    other: tuple[ObjectRef, str],
) -> None:
    signer = CountingSigner()
    cached = CachedSigner(signer, 3600)
    first = cached.sign(_ref(), "GET")
    assert cached.cached(*other) is None
    assert cached.sign(*other) != first
    assert cached.sign(_ref(), "GET") == first
    assert signer.signed == 2


def test_the_cache_is_bounded_whatever_clients_ask_for() -> None:
    cached = CachedSigner(CountingSigner(), 3600, maxsize=8)
    for index in range(100):
        cached.sign(_ref(f"k{index}"), "GET")
    assert sum(cached.cached(_ref(f"k{index}"), "GET") is not None for index in range(100)) == 8


def test_a_signing_error_is_not_cached() -> None:
    class FailingOnce(CountingSigner):
        def sign(self, ref: ObjectRef, method: str) -> str:
            if not self.signed:
                self.signed += 1
                raise SigningError("token endpoint unreachable")
            return super().sign(ref, method)

    cached = CachedSigner(FailingOnce(), 3600)
    with pytest.raises(SigningError):
        cached.sign(_ref(), "GET")
    assert cached.sign(_ref(), "GET").endswith("sig=2")


def test_credential_problem_is_the_reason_or_none() -> None:
    assert credential_problem(CachedSigner(CountingSigner(), 60)) is None
    reason = "no credentials found for bucket 'models'"
    assert credential_problem(CachedSigner(CountingSigner(reason), 60)) == reason


STATIC = {"source": "static", "access_key_id": "AKID", "secret_access_key": "secret"}


@pytest.mark.parametrize(("lifetime", "expires"), [(None, "3600"), (120, "120")])
def test_each_bucket_signs_for_its_own_lifetime_or_the_default(
    lifetime: int | None, expires: str
) -> None:
    bucket = S3Bucket.model_validate(
        {"provider": "s3", "bucket": "b", "presign_expires": lifetime, "credentials": STATIC}
    )
    url = signers_for([bucket], 3600)[bucket].sign(ObjectRef(bucket, "k", (), "https"), "GET")
    assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == [expires]


def test_a_background_check_reports_the_reason() -> None:
    reason = "no credentials found for bucket 'models'"
    assert asyncio.run(credential_problem_in_background(CachedSigner(CountingSigner(), 60))) is None
    problem = asyncio.run(
        credential_problem_in_background(CachedSigner(CountingSigner(reason), 60))
    )
    assert problem == reason


def test_an_unforeseen_failure_of_a_check_is_a_reason_too() -> None:
    class Broken(CountingSigner):
        def check(self) -> None:
            raise KeyError("a field the SDK expected")

    problem = asyncio.run(credential_problem_in_background(CachedSigner(Broken(), 60)))
    assert problem == "the credential check failed (KeyError)"


def test_a_stuck_check_never_holds_up_the_exit() -> None:
    """Cancelled when shim stops, the check's thread is a daemon: the loop closes at once and
    the interpreter does not wait for it."""
    release = threading.Event()

    class Stuck(CountingSigner):
        def check(self) -> None:
            release.wait(60)

    async def start_and_stop() -> threading.Thread:
        task = asyncio.create_task(credential_problem_in_background(CachedSigner(Stuck(), 60)))
        await asyncio.sleep(0.05)
        task.cancel()
        (thread,) = [t for t in threading.enumerate() if t.name == "shim-credential-check"]
        return thread

    started = time.monotonic()
    thread = asyncio.run(start_and_stop())
    assert time.monotonic() - started < 5
    assert thread.daemon and thread.is_alive()
    release.set()
    thread.join(5)
