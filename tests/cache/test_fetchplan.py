"""The plan of a fill's origin requests: who fetches which bytes, each byte once."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shim.cache.fetchplan import (
    AHEAD_REQUESTS,
    LEAD,
    MAX_REQUESTS,
    RUN,
    Claim,
    Extents,
    FetchPlan,
)

MiB = 1 << 20


def ranges(extents: Extents) -> list[tuple[int, int]]:
    out = []
    position = extents.next_start(-1)
    while position is not None:
        end = extents.end_from(position)
        out.append((position, end))
        position = extents.next_start(end)
    return out


def test_extents_merge_what_touches_and_say_where_a_range_ends() -> None:
    extents = Extents()
    extents.add(10, 20)
    extents.add(30, 40)
    extents.add(20, 25)  # joins the first
    extents.add(25, 30)  # bridges the two
    extents.add(50, 50)  # empty: nothing
    assert ranges(extents) == [(10, 40)]
    assert extents.total == 30
    assert (extents.end_from(10), extents.end_from(39), extents.end_from(40)) == (40, 40, 40)
    assert (extents.end_from(9), extents.next_start(0), extents.next_start(10)) == (9, 10, None)


@given(st.permutations(range(16)))
def test_extents_of_pieces_added_in_any_order_are_one_range(order: list[int]) -> None:
    extents = Extents()
    for piece in order:
        extents.add(piece * 10, piece * 10 + 10)
    assert ranges(extents) == [(0, 160)]
    assert extents.total == 160


def write_all(plan: FetchPlan, claim: Claim) -> None:
    plan.wrote(claim, claim.end - claim.pos)


def test_a_reader_close_ahead_of_the_request_waits_for_it() -> None:
    plan = FetchPlan(100 * MiB, split=True)
    first = plan.first()
    plan.wrote(first, MiB)
    assert plan.for_reader(2 * MiB, None) is None  # one MiB ahead: it comes soon
    assert plan.for_reader(MiB // 2, None) is None  # had already
    assert plan.claims == [first]


def test_a_reader_far_ahead_gets_its_range_and_the_request_stops_there() -> None:
    plan = FetchPlan(100 * MiB, split=True)
    first = plan.first()
    claim = plan.for_reader(50 * MiB, 58 * MiB)
    assert claim is not None
    assert (claim.pos, claim.end, claim.ranged) == (
        50 * MiB,
        58 * MiB,
        f"bytes={50 * MiB}-{58 * MiB - 1}",
    )
    assert (first.end, first.asked) == (50 * MiB, 100 * MiB)  # stops short of what it asked
    # Past the range, the bytes are nobody's: a reader there gets a request up to the next one.
    later = plan.for_reader(80 * MiB, None)
    assert later is not None and (later.pos, later.end) == (80 * MiB, 100 * MiB)
    between = plan.for_reader(60 * MiB, None)
    assert between is not None and (between.pos, between.end) == (60 * MiB, 80 * MiB)


def test_no_more_requests_than_the_bound() -> None:
    plan = FetchPlan(1 << 50, split=True)
    plan.first()
    for index in range(1, MAX_REQUESTS):
        assert plan.for_reader(index * 2 * LEAD + 2 * LEAD, None) is not None
    assert len(plan.claims) == MAX_REQUESTS
    assert plan.for_reader((MAX_REQUESTS + 5) * 2 * LEAD, None) is None


def test_an_object_that_may_not_be_split_has_one_request() -> None:
    plan = FetchPlan(100 * MiB, split=False)
    plan.first()
    assert plan.for_reader(50 * MiB, None) is None


def test_a_request_that_ends_goes_on_after_itself_then_from_the_start() -> None:
    plan = FetchPlan(300 * MiB, split=True)
    first = plan.first()
    middle = plan.for_reader(100 * MiB, 110 * MiB)
    assert middle is not None
    write_all(plan, middle)
    after = plan.next_after(middle)
    assert after is not None and (after.pos, after.end) == (110 * MiB, 110 * MiB + RUN)
    assert not after.for_reader
    # The first request stopped where the middle one started; the bytes after `after` and
    # those the first one left are fetched by whoever ends next.
    write_all(plan, first)
    following = plan.next_after(first)
    assert following is not None and following.pos == 110 * MiB + RUN


def test_requests_no_reader_waits_for_are_few() -> None:
    plan = FetchPlan(10_000 * MiB, split=True)
    plan.first()
    readers = [plan.for_reader(index * 100 * MiB, index * 100 * MiB + MiB) for index in (1, 2, 3)]
    readers += [plan.for_reader(index * 100 * MiB, index * 100 * MiB + MiB) for index in (4, 5, 6)]
    successors = []
    for claim in readers:
        assert claim is not None
        write_all(plan, claim)
        successors.append(plan.next_after(claim))
    assert sum(claim is not None for claim in successors) == AHEAD_REQUESTS - 1  # and `first`


@pytest.mark.parametrize("seed", range(20))
def test_any_readers_and_endings_fetch_each_byte_exactly_once(seed: int) -> None:
    """Readers arrive anywhere, requests write in any order and pieces: the object is whole
    at the end and no byte was claimed twice."""
    rng = random.Random(seed)
    size = rng.randrange(1, 400) * MiB + rng.randrange(MiB)
    plan = FetchPlan(size, split=True)
    active = [plan.first()]
    written = bytearray(size // 4096 + 1)
    while active:
        if rng.random() < 0.3:
            start = rng.randrange(size)
            stop = rng.choice([None, min(size, start + rng.randrange(1, 20 * MiB))])
            claim = plan.for_reader(start, stop)
            if claim is not None:
                active.append(claim)
            continue
        claim = rng.choice(active)
        count = min(claim.end - claim.pos, rng.randrange(1, 4 * MiB))
        for page in range(claim.pos // 4096, (claim.pos + count - 1) // 4096 + 1):
            written[page] = 1
        assert plan.have.end_from(claim.pos) == claim.pos, "a byte claimed twice"
        plan.wrote(claim, count)
        if claim.pos == claim.end:
            active.remove(claim)
            successor = plan.next_after(claim)
            if successor is not None:
                active.append(successor)
    assert plan.complete and plan.have.total == size
    assert ranges(plan.have) == [(0, size)]
