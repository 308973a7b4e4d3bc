"""Bodies shim has verified: a BLAKE3 digest per object version whose body matched the
checksum its origin offered, so that a later copy of that version (the dfdaemon's, from its
own disk or from a peer) is checked at BLAKE3's speed (3.4 GB/s on one core here) instead of
the origin's algorithm's (MD5, the ETag of most uploads, runs at 0.58 GB/s and would cap
every dfdaemon hit at that).

As strong as checking the origin's checksum again: BLAKE3 is a cryptographic hash, so a body
that matches the digest is the very body that matched the origin's checksum. A version is
named by its identity URL, its ETag and its size; a record is only ever offered in place of
a checksum the origin offers, never where there is none. In memory and bounded: after a
restart, the first copy of each version is checked with the origin's algorithm again.
"""

from __future__ import annotations

from cachetools import LRUCache

from shim.cache.integrity import Checksum, Kind

# Versions remembered (a digest is 32 bytes; with its key, well under 1 KiB each).
MAX_VERSIONS = 65536
RECORD_HEADER = "shim's record of this version's verified body"

Version = tuple[str, str, int]  # identity URL, ETag, size


class VerifiedBodies:
    def __init__(self, maxsize: int = MAX_VERSIONS) -> None:
        self._digests: LRUCache[Version, bytes] = LRUCache(maxsize=maxsize)

    def offer(self, version: Version) -> Checksum | None:
        """The digest to check a new copy of ``version`` against, if it was verified before."""
        digest = self._digests.get(version)
        return None if digest is None else Checksum(Kind.BLAKE3, digest, RECORD_HEADER)

    def record(self, version: Version, digest: bytes) -> None:
        self._digests[version] = digest

    def __len__(self) -> int:
        return len(self._digests)
