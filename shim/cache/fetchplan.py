"""Which bytes of an object a fill has, and which of its origin requests writes which.

A fill starts with one request for the whole object. A reader waiting for bytes far ahead of
every request in flight gets a ranged request of its own, from where it reads to the end of
what it asked for, and the request that held those bytes stops where they begin: many readers of
one cold object, each at its own place (as model streamers and parallel downloaders read), are
each served at once, and the origin still sends each byte once. A request that ends goes on
with the next bytes nobody has or fetches, until the object is whole: a fill belongs to no
client.

Pure: no I/O. The fill (``shim.cache.fill``) sends the requests and writes what they bring.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

# A reader this close ahead of a request in flight waits for it rather than start its own.
LEAD = 1 << 20
# Bytes asked for by a request that no reader is waiting for (a later reader in there, far
# ahead, cuts it short; what it already had in flight is lost, so it is asked for in runs).
RUN = 64 << 20
# Origin requests in flight for one object, whatever its readers ask.
MAX_REQUESTS = 256
# Of those, requests for bytes no reader waits for (the fill going on to the end).
AHEAD_REQUESTS = 4


class Extents:
    """Disjoint byte ranges [start, end), sorted, adjacent ones merged."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        self.total = 0

    def add(self, start: int, end: int) -> None:
        """Add [start, end), which overlaps nothing already there."""
        if start >= end:
            return
        index = bisect.bisect_right(self._starts, start)
        # Merge with the range ending where this one starts, and the one starting where it ends.
        if index > 0 and self._ends[index - 1] == start:
            index -= 1
            self._ends[index] = end
        else:
            self._starts.insert(index, start)
            self._ends.insert(index, end)
        if index + 1 < len(self._starts) and self._starts[index + 1] == end:
            self._ends[index] = self._ends.pop(index + 1)
            del self._starts[index + 1]
        self.total += end - start

    def end_from(self, position: int) -> int:
        """The end of the range holding ``position``; ``position`` when none does."""
        index = bisect.bisect_right(self._starts, position) - 1
        if index >= 0 and position < self._ends[index]:
            return self._ends[index]
        return position

    def next_start(self, position: int) -> int | None:
        """The start of the first range after ``position``."""
        index = bisect.bisect_right(self._starts, position)
        return self._starts[index] if index < len(self._starts) else None


@dataclass(eq=False)
class Claim:
    """Bytes [pos, end) one origin request is to write, ``pos`` moving on as it writes. Its
    request asked for [pos, asked) when it was sent: ``end`` comes before ``asked`` once a
    later request took the bytes after it (the fill then stops reading there)."""

    pos: int
    end: int
    asked: int
    for_reader: bool = False  # sent for a reader waiting there (else the fill's own)

    @property
    def ranged(self) -> str:
        """The Range header of the request that fetches this claim, as it was made (a later
        one may have taken the end of it since)."""
        return f"bytes={self.pos}-{self.asked - 1}"


class FetchPlan:
    """The claims of one fill, over an object of ``size`` bytes; ``split``: whether readers
    may get ranged requests (else the first request brings it all)."""

    def __init__(self, size: int, *, split: bool) -> None:
        self.size = size
        self.have = Extents()
        self.claims: list[Claim] = []
        self._split = split

    def first(self) -> Claim:
        """The claim of the request for the whole object."""
        claim = Claim(0, self.size, self.size)
        self.claims.append(claim)
        return claim

    def wrote(self, claim: Claim, count: int) -> None:
        self.have.add(claim.pos, claim.pos + count)
        claim.pos += count

    def for_reader(self, position: int, stop: int | None) -> Claim | None:
        """A new claim for a reader waiting at ``position`` (reading up to ``stop``, None: the
        end), or None when the bytes are had, come soon, or no more requests may be sent."""
        if not self._split or position >= self.size or self.have.end_from(position) > position:
            return None
        stop = self.size if stop is None else min(stop, self.size)
        owner = self._owner(position)
        if owner is not None and position - owner.pos <= LEAD:
            return None
        if len(self.claims) >= MAX_REQUESTS:
            return None
        end = self._free_until(position) if owner is None else owner.end
        if owner is not None:
            owner.end = position  # it stops where the new one starts
        return self._add(position, min(end, stop), for_reader=True)

    def next_after(self, claim: Claim) -> Claim | None:
        """``claim``'s request ended: its successor, on the next bytes nobody has or fetches
        (after it first: where a reader reading on goes next), or None when there are none or
        enough requests already fetch ahead of the readers."""
        self.claims.remove(claim)
        if sum(not other.for_reader for other in self.claims) >= AHEAD_REQUESTS:
            return None
        start = self._first_free(claim.end)
        if start is None:
            start = self._first_free(0)
        if start is None:
            return None
        return self._add(start, min(self._free_until(start), start + RUN))

    @property
    def complete(self) -> bool:
        return self.have.total == self.size

    def _add(self, pos: int, end: int, *, for_reader: bool = False) -> Claim:
        claim = Claim(pos, end, end, for_reader)
        self.claims.append(claim)
        return claim

    def _owner(self, position: int) -> Claim | None:
        for claim in self.claims:
            if claim.pos <= position < claim.end:
                return claim
        return None

    def _free_until(self, position: int) -> int:
        """Where the bytes from free ``position`` stop being free: the next had or claimed."""
        claimed = [claim.pos for claim in self.claims if position < claim.pos < claim.end]
        had = self.have.next_start(position)
        return min([self.size, *claimed, *([] if had is None else [had])])

    def _first_free(self, position: int) -> int | None:
        """The first byte at or after ``position`` that nobody has or fetches."""
        while position < self.size:
            position = self.have.end_from(position)
            owner = self._owner(position)
            if owner is None:
                return position if position < self.size else None
            position = owner.end
        return None
