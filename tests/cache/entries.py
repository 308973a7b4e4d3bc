"""Cache entries made the way a fill makes them (reserve, write a temporary file, commit), for
the tests of the store and of what reads its directory."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import blake3

from shim.cache.store import CacheStore, EntryMeta


def commit_entry(
    store: CacheStore,
    key: str,
    body: bytes,
    *,
    url: str | None = None,
    digest: bool = True,
    **fields: Any,
) -> EntryMeta:
    """Commit ``body`` as entry ``key`` (with its BLAKE3, as a fill keeps it, unless
    ``digest`` is False: an entry of an older shim); ``fields`` of its EntryMeta on top."""
    reservation = store.reserve(len(body))
    assert reservation is not None, "no room for the entry"
    temp = store.temp_path(key)
    fd = store.create_temp(temp)
    try:
        os.write(fd, body)
    finally:
        os.close(fd)
    reservation.written = len(body)
    meta = dataclasses.replace(
        EntryMeta(
            key=key,
            url=url or f"https://h/{key[:4]}",
            size=len(body),
            stored_at=1_700_000_000.0,
            blake3=blake3.blake3(body).hexdigest() if digest else None,
        ),
        **fields,
    )
    store.commit(meta, temp, reservation)
    return meta
