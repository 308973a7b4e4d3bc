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


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """Return the single byte range ``header`` asks for, or None to serve the whole object.

    Several ranges, other units and malformed headers are ignored (a server may always answer
    200 with the whole object); a range past the end raises Unsatisfiable.
    """
    match = _SINGLE_RANGE.fullmatch(header.strip()) if header else None
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.groups()
    if not first:  # suffix range: the last N bytes
        suffix = int(last)
        if suffix == 0:
            raise Unsatisfiable
        return ByteRange(max(size - suffix, 0), size - 1) if size else None
    start = int(first)
    if last and int(last) < start:
        return None  # invalid: ignore it and serve the whole object
    if start >= size:
        raise Unsatisfiable
    return ByteRange(start, min(int(last), size - 1) if last else size - 1)
