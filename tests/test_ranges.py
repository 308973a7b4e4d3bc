"""parse_range(): single byte ranges of RFC 9110 section 14 against an object of known size."""

from __future__ import annotations

import pytest

from shim.ranges import ByteRange, Unsatisfiable, parse_range


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
