"""The hottest keys of a stream, in memory bounded whatever the number of distinct keys.

Space-Saving (Metwally, Agrawal and El Abbadi, 2005): at most ``capacity`` keys are tracked; a
new key takes the place of the coldest one and inherits its score, so every key whose share of
the stream exceeds 1/capacity is tracked, whatever the order. Scores decay exponentially with
``half_life`` (forward decay, Cormode et al., 2009: a later occurrence weighs more, instead of
every score shrinking), so "hottest" means recently asked for, not once popular. Pure: the
caller passes the time.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Hashable
from dataclasses import dataclass

# Scores are rescaled to a new landmark once weights reach 2**this: far from a float's limits.
_REBASE_EXPONENT = 64.0


@dataclass(slots=True)
class _Slot[V]:
    score: float  # decayed occurrences, the evicted key's included: an overestimate
    value: V  # the caller's own counts, since this key took the slot


class HotKeys[K: Hashable, V]:
    """At most ``capacity`` keys, each with a value made by ``new_value`` when it enters."""

    def __init__(self, capacity: int, new_value: Callable[[], V], *, half_life: float) -> None:
        if capacity < 0 or half_life <= 0:
            raise ValueError("capacity must be >= 0 and half_life > 0")
        self._capacity = capacity
        self._new_value = new_value
        self._half_life = half_life
        self._slots: dict[K, _Slot[V]] = {}
        # Scores as they were pushed, the coldest first: an entry whose score is no longer its
        # key's is stale, skipped when met, and all of them dropped when they outnumber the
        # slots. So finding the coldest key costs log(capacity), not a scan of every slot.
        self._heap: list[tuple[float, int, K]] = []
        self._order = itertools.count()  # ties broken without comparing keys
        self._landmark: float | None = None

    def __len__(self) -> int:
        return len(self._slots)

    @property
    def capacity(self) -> int:
        return self._capacity

    def resize(self, capacity: int) -> None:
        """Track at most ``capacity`` keys from now on; the coldest go first."""
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self._capacity = capacity
        while len(self._slots) > capacity:
            self._evict()

    def add(self, key: K, now: float) -> V | None:
        """Count one occurrence of ``key`` at ``now`` (seconds, any monotonic clock). Returns
        its value, new when the key just entered; None when nothing is tracked (capacity 0)."""
        if self._capacity == 0:
            return None
        weight = self._weight(now)
        slot = self._slots.get(key)
        if slot is None:
            floor = self._evict() if len(self._slots) >= self._capacity else 0.0
            slot = self._slots[key] = _Slot(floor, self._new_value())
        slot.score += weight
        heapq.heappush(self._heap, (slot.score, next(self._order), key))
        if len(self._heap) > 2 * len(self._slots) + 16:
            self._rebuild_heap()
        return slot.value

    def get(self, key: K) -> V | None:
        """The value of ``key`` if it is tracked, without counting an occurrence."""
        slot = self._slots.get(key)
        return None if slot is None else slot.value

    def top(self, count: int) -> list[tuple[K, V]]:
        """The ``count`` hottest keys and their values, hottest first."""
        hottest = heapq.nlargest(count, self._slots.items(), key=lambda item: item[1].score)
        return [(key, slot.value) for key, slot in hottest]

    def _weight(self, now: float) -> float:
        if self._landmark is None:
            self._landmark = now
        exponent = (now - self._landmark) / self._half_life
        if exponent > _REBASE_EXPONENT:
            scale = 2.0**-exponent
            for slot in self._slots.values():
                slot.score *= scale
            self._rebuild_heap()
            self._landmark, exponent = now, 0.0
        return float(2.0**exponent)

    def _evict(self) -> float:
        """Drop the coldest key; returns its score."""
        while True:
            score, _, key = heapq.heappop(self._heap)
            slot = self._slots.get(key)
            if slot is not None and slot.score == score:  # scores only grow: the latest push
                del self._slots[key]
                return score

    def _rebuild_heap(self) -> None:
        self._heap = [(slot.score, next(self._order), key) for key, slot in self._slots.items()]
        heapq.heapify(self._heap)
