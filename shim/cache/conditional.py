"""Conditional requests (RFC 9110 section 13): what a request's preconditions make of the
answer, given the validators (ETag, Last-Modified) of the object it names. Pure: no I/O.

The order is RFC 9110 section 13.2.2's: If-Match, else If-Unmodified-Since (412 when false);
then If-None-Match, else If-Modified-Since (304 for GET and HEAD when false); then If-Range,
which only decides whether a Range is honoured (false: the whole object, 200).
"""

from __future__ import annotations

import calendar
import datetime
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH = "(" + "|".join(_MONTHS) + ")"
_TIME = r"(\d{2}):(\d{2}):(\d{2})"
# The three forms a recipient must accept (RFC 9110 section 5.6.7), always GMT.
_IMF_FIXDATE = re.compile(rf"[A-Z][a-z]{{2}}, (\d{{2}}) {_MONTH} (\d{{4}}) {_TIME} GMT")
_RFC850_DATE = re.compile(rf"[A-Z][a-z]{{5,8}}, (\d{{2}})-{_MONTH}-(\d{{2}}) {_TIME} GMT")
_ASCTIME_DATE = re.compile(rf"[A-Z][a-z]{{2}} {_MONTH} ([ \d]\d) {_TIME} (\d{{4}})")
# One entity-tag, strong or weak; or, as S3 accepts them, a bare token without quotes.
_ENTITY_TAG = re.compile(r'\s*(W/)?("[^"]*"|[^",\s]+)\s*(?:,|$)')

# What a 304 carries of the 200 it stands for (RFC 9110 section 15.4.5); Last-Modified too,
# which caches without an ETag revalidate with.
NOT_MODIFIED_HEADERS = (
    "Cache-Control",
    "Content-Location",
    "ETag",
    "Expires",
    "Last-Modified",
    "Vary",
)


class Verdict(Enum):
    SERVE = 200
    NOT_MODIFIED = 304
    PRECONDITION_FAILED = 412


@dataclass(frozen=True, slots=True)
class EntityTag:
    opaque: str  # with its quotes
    weak: bool


@dataclass(frozen=True, slots=True)
class Validators:
    """The object's validators as its origin sent them, and when that answer was received
    (seconds since the epoch): a Last-Modified is a strong validator only when the object
    was seen at least a second after it (RFC 9110 section 8.8.2.2)."""

    etag: str | None
    last_modified: str | None
    seen_at: float


@dataclass(frozen=True, slots=True)
class Preconditions:
    """A request's conditional headers and its Range, each list field's lines joined."""

    if_match: str | None = None
    if_none_match: str | None = None
    if_modified_since: str | None = None
    if_unmodified_since: str | None = None
    if_range: str | None = None
    range: str | None = None

    @classmethod
    def of(cls, values: Callable[[str], list[str]]) -> Preconditions:
        """From ``values(name)``: every line of header ``name`` (aiohttp's getall, mitmproxy's
        get_all). Lines of a list header are one list; a date or Range sent twice is invalid."""

        def joined(name: str) -> str | None:
            lines = values(name)
            return ", ".join(lines) if lines else None

        def single(name: str) -> str | None:
            lines = values(name)
            return lines[0] if len(lines) == 1 else ("" if lines else None)

        return cls(
            if_match=joined("If-Match"),
            if_none_match=joined("If-None-Match"),
            if_modified_since=single("If-Modified-Since"),
            if_unmodified_since=single("If-Unmodified-Since"),
            if_range=single("If-Range"),
            range=single("Range"),
        )


def parse_http_date(value: str) -> int | None:
    """Seconds since the epoch of an HTTP-date, or None when ``value`` is none."""
    value = value.strip()
    if match := _IMF_FIXDATE.fullmatch(value):
        day, month, year, hour, minute, second = match.groups()
    elif match := _RFC850_DATE.fullmatch(value):
        day, month, short_year, hour, minute, second = match.groups()
        # Two digits: the latest year ending in them that is at most 50 years ahead
        # (RFC 9110 section 5.6.7).
        this_year = time.gmtime().tm_year
        year_number = this_year - (this_year - int(short_year)) % 100
        if year_number + 100 <= this_year + 50:
            year_number += 100
        year = str(year_number)
    elif match := _ASCTIME_DATE.fullmatch(value):
        month, day, hour, minute, second, year = match.groups()
    else:
        return None
    # A leap second (60) counts as the second before it.
    second = str(min(int(second), 59))
    fields = (int(year), _MONTHS.index(month) + 1, int(day), int(hour), int(minute), int(second))
    try:
        return calendar.timegm(datetime.datetime(*fields, tzinfo=datetime.UTC).timetuple())
    except ValueError:  # no such day or time: 31 Feb, 25:00
        return None


def parse_entity_tags(value: str) -> list[EntityTag] | None:
    """The entity-tags of a list header (``*`` is the caller's), None when malformed."""
    tags: list[EntityTag] = []
    position = 0
    while position < len(value):
        match = _ENTITY_TAG.match(value, position)
        if match is None:
            return None
        weak, opaque = match.groups()
        if not opaque.startswith('"'):
            opaque = f'"{opaque}"'
        tags.append(EntityTag(opaque, weak is not None))
        position = match.end()
    return tags


def _current_tag(validators: Validators) -> EntityTag | None:
    if not validators.etag:
        return None
    tags = parse_entity_tags(validators.etag)
    return tags[0] if tags and len(tags) == 1 else None


def strong_match(a: EntityTag, b: EntityTag) -> bool:
    return not a.weak and not b.weak and a.opaque == b.opaque


def weak_match(a: EntityTag, b: EntityTag) -> bool:
    return a.opaque == b.opaque


def _list_matches(
    value: str, current: EntityTag | None, match: Callable[[EntityTag, EntityTag], bool]
) -> bool:
    if value.strip() == "*":
        return True  # there is an object: shim answers for existing objects only
    tags = parse_entity_tags(value)
    return bool(current and tags and any(match(tag, current) for tag in tags))


def evaluate(method: str, conditions: Preconditions, validators: Validators) -> Verdict:
    """The answer the preconditions call for, before any Range (RFC 9110 section 13.2.2)."""
    current = _current_tag(validators)
    modified = parse_http_date(validators.last_modified) if validators.last_modified else None
    if conditions.if_match is not None:
        if not _list_matches(conditions.if_match, current, strong_match):
            return Verdict.PRECONDITION_FAILED
    elif conditions.if_unmodified_since is not None and modified is not None:
        since = parse_http_date(conditions.if_unmodified_since)
        if since is not None and modified > since:
            return Verdict.PRECONDITION_FAILED
    safe = method in ("GET", "HEAD")
    if conditions.if_none_match is not None:
        if _list_matches(conditions.if_none_match, current, weak_match):
            return Verdict.NOT_MODIFIED if safe else Verdict.PRECONDITION_FAILED
    elif conditions.if_modified_since is not None and modified is not None and safe:
        since = parse_http_date(conditions.if_modified_since)
        if since is not None and modified <= since:
            return Verdict.NOT_MODIFIED
    return Verdict.SERVE


def range_applies(conditions: Preconditions, validators: Validators) -> bool:
    """Whether the request's Range may be honoured: no If-Range, or an If-Range that names
    the object's current version (RFC 9110 section 13.1.5). False: the whole object."""
    if conditions.if_range is None or conditions.range is None:
        return True
    value = conditions.if_range.strip()
    if value.startswith(('"', 'W/"')):
        tags = parse_entity_tags(value)
        current = _current_tag(validators)
        return bool(tags and len(tags) == 1 and current and strong_match(tags[0], current))
    date = parse_http_date(value)
    modified = parse_http_date(validators.last_modified) if validators.last_modified else None
    # A date is a validator only when strong: the object seen a second or more after it.
    return date is not None and date == modified and validators.seen_at >= modified + 1


def not_modified_headers(kept: Mapping[str, str]) -> dict[str, str]:
    """The headers of a 304 standing for a 200 with ``kept`` headers."""
    wanted = {name.lower() for name in NOT_MODIFIED_HEADERS}
    return {name: value for name, value in kept.items() if name.lower() in wanted and value}
