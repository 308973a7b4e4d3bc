"""HTTP Range requests against a complete object of known size (RFC 9110 section 14). Pure."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ByteRange:
    start: int
    end: int  # inclusive

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end}/{size}"


class Unsatisfiable(Exception):
    """The range lies wholly past the end of the object: answer 416."""


# One range; RFC 9110's DIGIT is ASCII only, so no str.isdigit() (it accepts '²' and '٣').
_SINGLE_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)", re.IGNORECASE)


def _at_most(digits: str, limit: int) -> int:
    """The number ``digits`` spells, or ``limit`` if it is larger.

    RFC 9110 puts no bound on a position's digits, but int() refuses more than 4300 of them
    (and takes quadratic time below that): numbers longer than ``limit`` are never converted.
    """
    digits = digits.lstrip("0")
    if len(digits) > len(str(limit)):
        return limit
    return min(int(digits or "0"), limit)


def _magnitude(digits: str) -> tuple[int, str]:
    """A sort key ordering digit strings of any length as the numbers they spell."""
    digits = digits.lstrip("0")
    return len(digits), digits


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """Return the single byte range ``header`` asks for, or None to serve the whole object.

    Several ranges, other units and malformed headers are ignored (a server may always answer
    200 with the whole object); a range past the end raises Unsatisfiable. Positions of any
    length are read: a last position past the end means the last byte, a suffix longer than
    the object means all of it.
    """
    match = _SINGLE_RANGE.fullmatch(header.strip()) if header else None
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.groups()
    if not first:  # suffix range: the last N bytes
        if not last.lstrip("0"):
            raise Unsatisfiable  # the last zero bytes
        return ByteRange(size - _at_most(last, size), size - 1) if size else None
    if last and _magnitude(last) < _magnitude(first):
        return None  # invalid: ignore it and serve the whole object
    start = _at_most(first, size)
    if start >= size:
        raise Unsatisfiable
    return ByteRange(start, _at_most(last, size - 1) if last else size - 1)
