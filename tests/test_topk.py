"""HotKeys: bounded whatever the keys, the hot ones kept, recent heat above old heat."""

from __future__ import annotations

import itertools
import tracemalloc
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shim.topk import HotKeys

HOUR = 3600.0


def counting(capacity: int) -> HotKeys[str, list[int]]:
    """Keys with a count of their occurrences since they took a slot."""
    return HotKeys(capacity, lambda: [0], half_life=HOUR)


def add(hot: HotKeys[str, list[int]], key: str, now: float = 0.0) -> None:
    value = hot.add(key, now)
    assert value is not None
    value[0] += 1


def test_memory_stays_bounded_under_100000_distinct_keys_and_the_hot_ones_are_kept() -> None:
    hot = counting(80)
    hot_keys = [f"models/hot-{n}.mar" for n in range(5)]
    tracemalloc.start()
    try:
        for n in range(100_000):
            add(hot, f"models/cold-{n}-{'x' * 200}.mar")  # each one new, long
            if n % 10 == 0:
                add(hot, hot_keys[(n // 10) % 5])  # each 2% of the stream
            if n == 10_000:
                after_10k = tracemalloc.get_traced_memory()[0]
        after_100k, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(hot) == 80
    # Ten times the keys, no more memory (a little slack for the allocator's own state).
    assert after_100k < after_10k + 64 * 1024 and peak < 1024 * 1024
    top = hot.top(5)
    assert sorted(key for key, _ in top) == hot_keys
    # Their own counts since they entered: exact, as they never left.
    assert [value[0] for _, value in top] == [2000] * 5


@given(st.lists(st.sampled_from("abcdefghijklmnopqrstuvwxyz"), max_size=300), st.integers(1, 8))
def test_every_key_above_one_over_capacity_of_the_stream_is_tracked(
    stream: list[str], capacity: int
) -> None:
    """Space-Saving's guarantee, in any order of arrival (all at one time: no decay)."""
    hot = counting(capacity)
    for key in stream:
        add(hot, key)
    tracked = {key for key, _ in hot.top(capacity)}
    frequent = {key for key, n in Counter(stream).items() if n > len(stream) / capacity}
    assert frequent <= tracked
    assert len(hot) <= capacity


def test_recent_heat_outranks_heat_long_ago() -> None:
    hot = counting(4)
    for _ in range(100):
        add(hot, "old.mar", now=0.0)
    for _ in range(10):
        add(hot, "new.mar", now=10 * HOUR)  # 100 occurrences ten half-lives ago weigh ~0.1
    assert [key for key, _ in hot.top(2)] == ["new.mar", "old.mar"]


def test_scores_are_rescaled_without_losing_the_order() -> None:
    hot = counting(3)
    add(hot, "a", now=0.0)
    for now in range(0, 200 * int(HOUR), int(HOUR)):  # 200 half-lives: weights past 2**64
        add(hot, "b", now=float(now))
        add(hot, "b", now=float(now))
        add(hot, "c", now=float(now))
    assert [key for key, _ in hot.top(3)] == ["b", "c", "a"]


def test_a_new_key_takes_the_coldest_slot_with_fresh_counts() -> None:
    hot = counting(2)
    for key in ("a", "a", "a", "b"):
        add(hot, key)
    add(hot, "c")
    assert hot.get("b") is None and hot.get("c") == [1] and hot.get("a") == [3]


def test_resize_keeps_the_hottest_and_zero_tracks_nothing() -> None:
    hot = counting(4)
    for key, times in (("a", 4), ("b", 3), ("c", 2), ("d", 1)):
        for _ in range(times):
            add(hot, key)
    hot.resize(2)
    assert [key for key, _ in hot.top(4)] == ["a", "b"]
    hot.resize(0)
    assert len(hot) == 0 and hot.add("e", 0.0) is None


def test_top_is_hottest_first_and_at_most_count() -> None:
    hot = counting(10)
    for key, times in zip("abc", (1, 3, 2), strict=True):
        for _ in itertools.repeat(None, times):
            add(hot, key)
    assert [key for key, _ in hot.top(2)] == ["b", "c"]


@pytest.mark.parametrize(("capacity", "half_life"), [(-1, HOUR), (1, 0.0)])
def test_nonsense_bounds_are_refused(capacity: int, half_life: float) -> None:
    with pytest.raises(ValueError, match="capacity"):
        HotKeys(capacity, list, half_life=half_life)
