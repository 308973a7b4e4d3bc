"""parse_range(): single byte ranges of RFC 9110 section 14 against an object of known size."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shim.ranges import ByteRange, Unsatisfiable, parse_range

# Past Python's int() limit of 4300 digits, which once turned such a Range into a 500.
HUGE = "9" * 5000


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=0-499", 10000, ByteRange(0, 499)),
        ("bytes=500-999", 10000, ByteRange(500, 999)),
        ("bytes=0-0", 10000, ByteRange(0, 0)),
        ("bytes=9999-9999", 10000, ByteRange(9999, 9999)),
        ("bytes=9500-", 10000, ByteRange(9500, 9999)),
        ("bytes=0-", 10000, ByteRange(0, 9999)),
        ("bytes=-500", 10000, ByteRange(9500, 9999)),
        ("bytes=-1", 10000, ByteRange(9999, 9999)),
        ("bytes=-10000", 10000, ByteRange(0, 9999)),
        ("bytes=-20000", 10000, ByteRange(0, 9999)),
        ("bytes=9000-20000", 10000, ByteRange(9000, 9999)),
        ("bytes=0-0", 1, ByteRange(0, 0)),
        ("Bytes=1-2", 10, ByteRange(1, 2)),
        ("BYTES=1-2", 10, ByteRange(1, 2)),
        ("  bytes=1-2  ", 10, ByteRange(1, 2)),
        ("bytes=007-008", 10, ByteRange(7, 8)),
    ],
)
def test_satisfiable_ranges(header: str, size: int, expected: ByteRange) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(
    ("header", "size"),
    [
        ("bytes=10000-", 10000),
        ("bytes=10000-10001", 10000),
        ("bytes=20000-30000", 10000),
        ("bytes=-0", 10000),
        ("bytes=0-", 0),
        ("bytes=0-0", 0),
        ("bytes=-0", 0),
    ],
)
def test_unsatisfiable_ranges_raise(header: str, size: int) -> None:
    with pytest.raises(Unsatisfiable):
        parse_range(header, size)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "bytes=0-1,5-6",
        "bytes=0-1, 5-6",
        "bytes=-5,0-1",
        "items=0-1",
        "bytes 0-1",
        "0-1",
        "bytes=",
        "bytes=-",
        "bytes=abc",
        "bytes=a-b",
        "bytes=1-a",
        "bytes=a-1",
        "bytes=1--2",
        "bytes=--2",
        "bytes=5-3",
        "bytes=1.5-2",
        "bytes=+1-2",
        "bytes=0x1-2",
        "bytes=1 -2",
    ],
)
def test_multiple_other_units_and_malformed_serve_whole_object(header: str | None) -> None:
    assert parse_range(header, 10000) is None


def test_suffix_range_of_an_empty_object_serves_the_whole_empty_object() -> None:
    assert parse_range("bytes=-5", 0) is None


# RFC 9110's DIGIT is ASCII only: str.isdigit() would accept these.
@pytest.mark.parametrize(
    "header", ["bytes=\u00b2-", "bytes=0-\u00b2", "bytes=-\u00b2", "bytes=\u0660-\u0665"]
)
def test_non_ascii_digits_are_malformed(header: str) -> None:
    assert parse_range(header, 10) is None


@pytest.mark.parametrize(
    ("byte_range", "size", "length", "content_range"),
    [
        (ByteRange(0, 499), 10000, 500, "bytes 0-499/10000"),
        (ByteRange(9999, 9999), 10000, 1, "bytes 9999-9999/10000"),
    ],
)
def test_byte_range_length_and_content_range(
    byte_range: ByteRange, size: int, length: int, content_range: str
) -> None:
    assert byte_range.length == length
    assert byte_range.content_range(size) == content_range


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (f"bytes=0-{HUGE}", ByteRange(0, 9999)),  # a huge end is the last byte
        (f"bytes=9000-{HUGE}", ByteRange(9000, 9999)),
        (f"bytes=-{HUGE}", ByteRange(0, 9999)),  # a huge suffix is the whole object
        (f"bytes={'0' * 5000}5-{'0' * 5000}7", ByteRange(5, 7)),  # long, but small numbers
        (f"bytes=-{'0' * 5000}1", ByteRange(9999, 9999)),
        (f"bytes={HUGE}-1", None),  # last < first: invalid, ignored
        (f"bytes=5-{'0' * 5000}4", None),
        (f"bytes={HUGE}9-{HUGE}", None),
    ],
)
def test_overlong_positions_are_read_without_error(header: str, expected: ByteRange | None) -> None:
    assert parse_range(header, 10000) == expected


@pytest.mark.parametrize(
    "header", [f"bytes={HUGE}-", f"bytes={HUGE}-{HUGE}", f"bytes=-{'0' * 5000}", f"bytes=1{HUGE}-"]
)
def test_overlong_positions_past_the_end_are_unsatisfiable(header: str) -> None:
    with pytest.raises(Unsatisfiable):
        parse_range(header, 10000)


# -- properties ----------------------------------------------------------------------------------


@contextmanager
def _unlimited_int_digits() -> Iterator[None]:
    previous = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        yield
    finally:
        sys.set_int_max_str_digits(previous)


def _rfc_9110(first: str, last: str, size: int) -> ByteRange | type[Unsatisfiable] | None:
    """RFC 9110 section 14.1.2 for one range, with Python's big integers; a reference for
    parse_range, which must reach the same answer without converting unbounded numbers."""
    with _unlimited_int_digits():
        if not first:
            suffix = int(last)
            if suffix == 0:
                return Unsatisfiable
            return ByteRange(max(size - suffix, 0), size - 1) if size else None
        start = int(first)
        end = int(last) if last else None
    if end is not None and end < start:
        return None
    if start >= size:
        return Unsatisfiable
    return ByteRange(start, size - 1 if end is None else min(end, size - 1))


# Positions near the object's size, and far past Python's int() digit limit.
_positions = st.one_of(
    st.integers(min_value=0, max_value=2**64).map(str),
    st.integers(min_value=0, max_value=6000).map(lambda n: "9" * n),
    st.tuples(st.integers(0, 5000), st.integers(0, 2**64)).map(lambda z: "0" * z[0] + str(z[1])),
)
_sizes = st.one_of(st.integers(0, 100), st.integers(0, 2**64))


@given(
    first=st.one_of(st.just(""), _positions),
    last=st.one_of(st.just(""), _positions),
    size=_sizes,
    unit=st.sampled_from(["bytes", "BYTES", "Bytes"]),
)
def test_single_ranges_agree_with_rfc_9110(first: str, last: str, size: int, unit: str) -> None:
    header = f"{unit}={first}-{last}"
    expected = None if first == last == "" else _rfc_9110(first, last, size)
    if expected is Unsatisfiable:
        with pytest.raises(Unsatisfiable):
            parse_range(header, size)
    else:
        assert parse_range(header, size) == expected


@given(
    header=st.one_of(
        st.text(),
        st.text(alphabet="bytes=0123456789-, \t\u00b2\u0660").map(lambda t: "bytes=" + t),
        st.lists(_positions, min_size=1, max_size=3).map(lambda p: "bytes=" + "-".join(p)),
    ),
    size=_sizes,
)
def test_any_header_gives_a_range_inside_the_object_or_unsatisfiable(
    header: str, size: int
) -> None:
    try:
        byte_range = parse_range(header, size)
    except Unsatisfiable:
        return
    if byte_range is not None:
        assert 0 <= byte_range.start <= byte_range.end < size
        assert byte_range.length == byte_range.end - byte_range.start + 1
