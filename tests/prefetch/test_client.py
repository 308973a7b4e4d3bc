"""The prefetch client's reports of a URL it cannot fetch never carry the URL's signature."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from shim.prefetch.client import Fetched, ProxyTarget, prefetch_all


class Finished:
    """Progress that keeps what finished."""

    def __init__(self) -> None:
        self.fetched: list[Fetched] = []

    def sized(self, sizes: Sequence[int | None]) -> None:
        pass

    def started(self, index: int, size: int | None) -> None:
        pass

    def advanced(self, index: int, count: int) -> None:
        pass

    def finished(self, index: int, fetched: Fetched) -> None:
        self.fetched.append(fetched)


def test_an_invalid_presigned_url_is_reported_without_its_signature() -> None:
    progress = Finished()
    # aiohttp refuses it before connecting (no host), quoting the URL in its error.
    url = "http://:80/model.mar?X-Amz-Signature=5ecre7519&X-Amz-Credential=AKIDPRESIGNED%2Fx"
    (fetched,) = asyncio.run(prefetch_all([url], ProxyTarget("http://127.0.0.1:9"), progress))
    assert progress.fetched == [fetched]
    assert fetched.error is not None and fetched.error.startswith("InvalidUrlClientError: ")
    assert "X-Amz-Signature=REDACTED" in fetched.error
    for text in (fetched.error, fetched.url):
        assert "5ecre7519" not in text and "AKIDPRESIGNED" not in text
