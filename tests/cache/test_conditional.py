"""Conditional requests and the answer plan, as tables (RFC 9110 sections 13 and 15.4.5): the
pure functions that decide every answer for an object, on a hit and on a miss alike; and what
an entry keeps of its origin's headers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import aiohttp
import pytest
from multidict import CIMultiDict

from shim.cache.conditional import (
    EntityTag,
    Preconditions,
    Validators,
    Verdict,
    evaluate,
    not_modified_headers,
    parse_entity_tags,
    parse_http_date,
    range_applies,
)
from shim.cache.fill import MAX_KEPT_BYTES, MAX_METADATA_HEADERS, kept_headers
from shim.cache.server import CacheServer, entry_kept, hit_headers, plan_answer
from shim.cache.store import CacheStore, EntryMeta
from shim.metrics import Metrics
from shim.ranges import ByteRange
from tests.cache.origin import Origin, run_with_cache_server, until
from tests.cache.test_server_answers import fetches, send
from tests.support.servers import s3_client

ETAG = '"5d41402abc4b2a76b9719d911017c592"'
OTHER = '"00000000000000000000000000000000"'
WRONG = OTHER
MODIFIED = "Sun, 06 Nov 1994 08:49:37 GMT"
EARLIER = "Sun, 06 Nov 1994 08:49:36 GMT"
LATER = "Sun, 06 Nov 1994 08:49:38 GMT"
SEEN = parse_http_date(MODIFIED) or 0  # the second the object changed: a weak date
SEEN_LATER = SEEN + 60
OBJECT = Validators(ETAG, MODIFIED, SEEN_LATER)


# -- HTTP-dates and entity-tags --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (MODIFIED, 784111777),
        ("Sunday, 06-Nov-94 08:49:37 GMT", 784111777),  # rfc850-date
        ("Sun Nov  6 08:49:37 1994", 784111777),  # asctime-date
        ("  Sun, 06 Nov 1994 08:49:37 GMT ", 784111777),
        ("Sun, 06 Nov 1994 08:49:37 +0000", None),  # not GMT: no HTTP-date
        ("Sun, 06 Nov 1994 08:49:37", None),
        ("06 Nov 1994 08:49:37 GMT", None),
        ("Sun, 31 Feb 1994 08:49:37 GMT", None),  # no such day
        ("Sun, 06 Nov 1994 23:59:60 GMT", 784166399),  # a leap second
        ("Sun, 06 Nov 1994 25:49:37 GMT", None),
        ("Sun, 06 Foo 1994 08:49:37 GMT", None),
        ("", None),
        ("yesterday", None),
    ],
)
def test_http_dates(value: str, expected: int | None) -> None:
    assert parse_http_date(value) == expected


def test_a_two_digit_year_is_at_most_fifty_years_ahead() -> None:
    assert parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT") == 784111777
    assert parse_http_date("Friday, 01-Jan-00 00:00:00 GMT") == 946684800  # 2000


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"a"', [EntityTag('"a"', False)]),
        ('W/"a"', [EntityTag('"a"', True)]),
        (
            '"a", W/"b" ,"c"',
            [EntityTag('"a"', False), EntityTag('"b"', True), EntityTag('"c"', False)],
        ),
        ("abc", [EntityTag('"abc"', False)]),  # unquoted, as S3 accepts it
        ('""', [EntityTag('""', False)]),
        ('"a" "b"', None),
        ('"a', None),
        ('"a",', [EntityTag('"a"', False)]),
    ],
)
def test_entity_tag_lists(value: str, expected: list[EntityTag] | None) -> None:
    assert parse_entity_tags(value) == expected


# -- preconditions ---------------------------------------------------------------------------------

PRECONDITION_TABLE = [
    # (request's conditional headers, method, verdict)
    ({}, "GET", Verdict.SERVE),
    # If-None-Match: weak comparison; any listed tag; * for any object.
    ({"if_none_match": ETAG}, "GET", Verdict.NOT_MODIFIED),
    ({"if_none_match": ETAG}, "HEAD", Verdict.NOT_MODIFIED),
    ({"if_none_match": f"W/{ETAG}"}, "GET", Verdict.NOT_MODIFIED),
    ({"if_none_match": f"{OTHER}, {ETAG}"}, "GET", Verdict.NOT_MODIFIED),
    ({"if_none_match": "*"}, "GET", Verdict.NOT_MODIFIED),
    ({"if_none_match": OTHER}, "GET", Verdict.SERVE),
    ({"if_none_match": ETAG}, "DELETE", Verdict.PRECONDITION_FAILED),
    ({"if_none_match": '"unterminated'}, "GET", Verdict.SERVE),
    # If-Match: strong comparison.
    ({"if_match": ETAG}, "GET", Verdict.SERVE),
    ({"if_match": f"{OTHER}, {ETAG}"}, "GET", Verdict.SERVE),
    ({"if_match": "*"}, "GET", Verdict.SERVE),
    ({"if_match": OTHER}, "GET", Verdict.PRECONDITION_FAILED),
    ({"if_match": f"W/{ETAG}"}, "GET", Verdict.PRECONDITION_FAILED),
    ({"if_match": OTHER}, "HEAD", Verdict.PRECONDITION_FAILED),
    # If-Modified-Since: GET and HEAD only; a bad date is ignored.
    ({"if_modified_since": MODIFIED}, "GET", Verdict.NOT_MODIFIED),
    ({"if_modified_since": LATER}, "HEAD", Verdict.NOT_MODIFIED),
    ({"if_modified_since": EARLIER}, "GET", Verdict.SERVE),
    ({"if_modified_since": "not a date"}, "GET", Verdict.SERVE),
    ({"if_modified_since": ""}, "GET", Verdict.SERVE),  # sent twice
    ({"if_modified_since": MODIFIED}, "DELETE", Verdict.SERVE),
    # If-Unmodified-Since.
    ({"if_unmodified_since": MODIFIED}, "GET", Verdict.SERVE),
    ({"if_unmodified_since": LATER}, "GET", Verdict.SERVE),
    ({"if_unmodified_since": EARLIER}, "GET", Verdict.PRECONDITION_FAILED),
    ({"if_unmodified_since": "not a date"}, "GET", Verdict.SERVE),
    # Precedence: If-None-Match beats If-Modified-Since, If-Match beats If-Unmodified-Since.
    ({"if_none_match": OTHER, "if_modified_since": LATER}, "GET", Verdict.SERVE),
    ({"if_none_match": ETAG, "if_modified_since": EARLIER}, "GET", Verdict.NOT_MODIFIED),
    ({"if_match": ETAG, "if_unmodified_since": EARLIER}, "GET", Verdict.SERVE),
    ({"if_match": OTHER, "if_unmodified_since": LATER}, "GET", Verdict.PRECONDITION_FAILED),
    # 412 before 304: If-Match is evaluated first.
    ({"if_match": OTHER, "if_none_match": ETAG}, "GET", Verdict.PRECONDITION_FAILED),
    ({"if_unmodified_since": EARLIER, "if_none_match": ETAG}, "GET", Verdict.PRECONDITION_FAILED),
    ({"if_match": ETAG, "if_none_match": ETAG}, "GET", Verdict.NOT_MODIFIED),
]


@pytest.mark.parametrize(("headers", "method", "verdict"), PRECONDITION_TABLE)
def test_preconditions(headers: dict[str, str], method: str, verdict: Verdict) -> None:
    assert evaluate(method, Preconditions(**headers), OBJECT) is verdict


@pytest.mark.parametrize(
    ("headers", "verdict"),
    [
        ({"if_match": ETAG}, Verdict.PRECONDITION_FAILED),  # nothing to match
        ({"if_match": "*"}, Verdict.SERVE),
        ({"if_none_match": ETAG}, Verdict.SERVE),
        ({"if_none_match": "*"}, Verdict.NOT_MODIFIED),
        ({"if_modified_since": LATER}, Verdict.SERVE),  # no date to compare: ignored
        ({"if_unmodified_since": EARLIER}, Verdict.SERVE),
    ],
)
def test_an_object_without_validators(headers: dict[str, str], verdict: Verdict) -> None:
    assert evaluate("GET", Preconditions(**headers), Validators(None, None, SEEN)) is verdict


def test_a_weak_etag_matches_weakly_only() -> None:
    weak = Validators(f"W/{ETAG}", MODIFIED, SEEN_LATER)
    assert evaluate("GET", Preconditions(if_none_match=ETAG), weak) is Verdict.NOT_MODIFIED
    assert evaluate("GET", Preconditions(if_match=ETAG), weak) is Verdict.PRECONDITION_FAILED


@pytest.mark.parametrize(
    ("if_range", "validators", "applies"),
    [
        (ETAG, OBJECT, True),
        (OTHER, OBJECT, False),
        (f"W/{ETAG}", OBJECT, False),  # If-Range compares strongly
        (ETAG, Validators(f"W/{ETAG}", MODIFIED, SEEN_LATER), False),
        (MODIFIED, OBJECT, True),
        (EARLIER, OBJECT, False),
        (LATER, OBJECT, False),  # only the exact date names this version
        (MODIFIED, Validators(ETAG, MODIFIED, SEEN), False),  # seen within its second: weak
        (MODIFIED, Validators(ETAG, None, SEEN_LATER), False),
        ("garbage", OBJECT, False),
        (None, OBJECT, True),
    ],
)
def test_if_range(if_range: str | None, validators: Validators, applies: bool) -> None:
    conditions = Preconditions(if_range=if_range, range="bytes=0-9")
    assert range_applies(conditions, validators) is applies


def test_if_range_without_range_is_ignored() -> None:
    assert range_applies(Preconditions(if_range=OTHER), OBJECT)


def test_preconditions_read_every_line_of_a_list_header_and_one_date() -> None:
    headers = CIMultiDict(
        [
            ("If-None-Match", OTHER),
            ("if-none-match", ETAG),
            ("If-Modified-Since", MODIFIED),
            ("Range", "bytes=0-1"),
        ]
    )
    conditions = Preconditions.of(lambda name: headers.getall(name, []))
    assert conditions == Preconditions(
        if_none_match=f"{OTHER}, {ETAG}", if_modified_since=MODIFIED, range="bytes=0-1"
    )
    twice = CIMultiDict([("If-Modified-Since", MODIFIED), ("If-Modified-Since", MODIFIED)])
    assert Preconditions.of(lambda name: twice.getall(name, [])).if_modified_since == ""


# -- the answer ------------------------------------------------------------------------------------

KEPT = {
    "ETag": ETAG,
    "Last-Modified": MODIFIED,
    "Content-Type": "application/x-mar",
    "Cache-Control": "max-age=60",
    "Expires": LATER,
    "Content-Disposition": 'attachment; filename="m.mar"',
    "x-amz-meta-owner": "team",
}
OBJECT_HEADERS = {**KEPT, "Accept-Ranges": "bytes", "Content-Length": "100"}

ANSWER_TABLE = [
    # (method, conditions, status, headers, range sent)
    ("GET", {}, 200, OBJECT_HEADERS, None),
    ("HEAD", {}, 200, OBJECT_HEADERS, None),
    (
        "GET",
        {"if_none_match": ETAG},
        304,
        {k: KEPT[k] for k in ("ETag", "Last-Modified", "Cache-Control", "Expires")},
        None,
    ),
    (
        "HEAD",
        {"if_none_match": ETAG},
        304,
        {k: KEPT[k] for k in ("ETag", "Last-Modified", "Cache-Control", "Expires")},
        None,
    ),
    ("GET", {"if_match": OTHER}, 412, {"Content-Type": "text/plain"}, None),
    (
        "GET",
        {"range": "bytes=10-19"},
        206,
        {**OBJECT_HEADERS, "Content-Length": "10", "Content-Range": "bytes 10-19/100"},
        ByteRange(10, 19),
    ),
    ("HEAD", {"range": "bytes=10-19"}, 200, OBJECT_HEADERS, None),  # Range is for GET
    (
        "GET",
        {"range": "bytes=10-19", "if_range": ETAG},
        206,
        {**OBJECT_HEADERS, "Content-Length": "10", "Content-Range": "bytes 10-19/100"},
        ByteRange(10, 19),
    ),
    ("GET", {"range": "bytes=10-19", "if_range": OTHER}, 200, OBJECT_HEADERS, None),
    ("GET", {"range": "bytes=10-19", "if_range": EARLIER}, 200, OBJECT_HEADERS, None),
    ("GET", {"range": "bytes=100-"}, 416, {"Content-Range": "bytes */100"}, None),
    # A failed If-Range serves the whole object even where the range is past its end.
    ("GET", {"range": "bytes=100-", "if_range": OTHER}, 200, OBJECT_HEADERS, None),
    # Preconditions come before the range.
    (
        "GET",
        {"range": "bytes=100-", "if_none_match": ETAG},
        304,
        {k: KEPT[k] for k in ("ETag", "Last-Modified", "Cache-Control", "Expires")},
        None,
    ),
]


@pytest.mark.parametrize(("method", "conditions", "status", "headers", "byte_range"), ANSWER_TABLE)
def test_answers(
    method: str,
    conditions: dict[str, str],
    status: int,
    headers: dict[str, str],
    byte_range: ByteRange | None,
) -> None:
    answer = plan_answer(method, Preconditions(**conditions), KEPT, 100, seen_at=SEEN_LATER)
    assert (answer.status, answer.headers, answer.byte_range) == (status, headers, byte_range)
    assert answer.sends_object is (status in (200, 206))


def test_an_empty_object_and_one_of_unknown_length() -> None:
    empty = plan_answer("GET", Preconditions(), KEPT, 0, seen_at=SEEN_LATER)
    assert (empty.status, empty.headers["Content-Length"]) == (200, "0")
    assert plan_answer("GET", Preconditions(range="bytes=0-"), KEPT, 0, seen_at=SEEN).status == 416
    unknown = plan_answer("GET", Preconditions(range="bytes=0-9"), KEPT, None, seen_at=SEEN)
    assert (unknown.status, unknown.byte_range) == (200, None)
    assert "Content-Length" not in unknown.headers


def test_a_part_goes_out_as_the_origin_framed_it() -> None:
    part = {**KEPT, "Content-Range": "bytes 0-99/1000"}
    answer = plan_answer(
        "GET", Preconditions(range="bytes=0-9"), part, 100, seen_at=SEEN, part=True
    )
    assert (answer.status, answer.byte_range) == (206, None)
    assert answer.headers["Content-Range"] == "bytes 0-99/1000"
    assert answer.headers["Content-Length"] == "100"
    not_modified = plan_answer(
        "GET", Preconditions(if_none_match=ETAG), part, 100, seen_at=SEEN, part=True
    )
    assert not_modified.status == 304


def test_a_304_carries_the_validators_and_cache_headers_only() -> None:
    kept = {**KEPT, "Vary": "Origin", "Content-Location": "/m", "Content-Encoding": "gzip"}
    assert not_modified_headers(kept) == {
        "ETag": ETAG,
        "Last-Modified": MODIFIED,
        "Cache-Control": "max-age=60",
        "Expires": LATER,
        "Vary": "Origin",
        "Content-Location": "/m",
    }


# -- what an entry keeps ---------------------------------------------------------------------------


def test_kept_headers_are_the_objects_and_each_stores_metadata() -> None:
    origin = CIMultiDict(
        [
            ("ETag", ETAG),
            ("Content-Length", "5"),
            ("Date", MODIFIED),
            ("Server", "AmazonS3"),
            ("x-amz-request-id", "R"),
            ("x-amz-meta-owner", "a"),
            ("X-Ms-Meta-Owner", "b"),
            ("x-goog-meta-owner", "c"),
            ("x-oss-meta-owner", "d"),
            ("x-obs-meta-owner", "e"),
            ("x-amz-metadata-directive", "COPY"),  # not metadata, despite its name
            *((name, f"{name} value") for name in ("Cache-Control", "Content-Disposition")),
            *((name, f"{name} value") for name in ("Content-Language", "Expires")),
            ("Content-Type", "text/plain"),
            ("Content-Encoding", "gzip"),
            ("Last-Modified", MODIFIED),
        ]
    )
    assert kept_headers(origin) == {
        "ETag": ETAG,
        "Last-Modified": MODIFIED,
        "Content-Type": "text/plain",
        "Content-Encoding": "gzip",
        "Cache-Control": "Cache-Control value",
        "Content-Disposition": "Content-Disposition value",
        "Content-Language": "Content-Language value",
        "Expires": "Expires value",
        "x-amz-meta-owner": "a",
        "X-Ms-Meta-Owner": "b",
        "x-goog-meta-owner": "c",
        "x-oss-meta-owner": "d",
        "x-obs-meta-owner": "e",
    }


def test_kept_headers_are_bounded(caplog: pytest.LogCaptureFixture) -> None:
    many = CIMultiDict([("ETag", ETAG)] + [(f"x-amz-meta-k{i}", "v") for i in range(200)])
    kept = kept_headers(many)
    assert len(kept) == 1 + MAX_METADATA_HEADERS
    assert kept["ETag"] == ETAG and "x-amz-meta-k0" in kept
    big = CIMultiDict([("ETag", ETAG)] + [(f"x-amz-meta-k{i}", "v" * 2000) for i in range(20)])
    kept = kept_headers(big)
    assert kept["ETag"] == ETAG
    assert sum(len(k) + len(v) for k, v in kept.items()) <= MAX_KEPT_BYTES
    assert len(kept) == 1 + MAX_KEPT_BYTES // 2013
    assert "kept 9 of the origin's 21 object headers" in caplog.text


def test_an_entry_serves_what_it_kept_and_one_stored_before_serves_its_fields(
    tmp_path: Path,
) -> None:
    key = "ab" * 32
    store = CacheStore(tmp_path, 1 << 20)
    store.open()
    shard = tmp_path / "objects" / key[:2]
    shard.mkdir(mode=0o700)
    (shard / key).write_bytes(b"12345")
    # As an older shim wrote it: no headers field.
    old = {
        "key": key,
        "url": "http://h/b/k",
        "size": 5,
        "etag": ETAG,
        "content_type": "text/plain",
        "content_encoding": None,
        "last_modified": MODIFIED,
        "stored_at": SEEN,
    }
    (shard / f"{key}.json").write_text(json.dumps(old))
    reopened = CacheStore(tmp_path, 1 << 20)
    reopened.open()
    meta = reopened.lookup(key)
    assert meta is not None
    assert entry_kept(meta) == {
        "ETag": ETAG,
        "Last-Modified": MODIFIED,
        "Content-Type": "text/plain",
    }
    assert entry_kept(EntryMeta(key, "u", 5, etag=ETAG, headers=KEPT)) == KEPT
    # Headers that are not all strings make the entry unreadable, hence dropped.
    (shard / f"{key}.json").write_text(json.dumps({**old, "headers": {"ETag": 1}}))
    broken = CacheStore(tmp_path, 1 << 20)
    broken.open()
    assert broken.lookup(key) is None


def test_a_hit_says_how_old_its_entry_is() -> None:
    meta = EntryMeta("ab" * 32, "u", 5, stored_at=1000.0)
    assert hit_headers(meta, 1061.9) == {
        "X-Shim-Cache": "HIT",
        "X-Shim-Task-Id": "ab" * 32,
        "X-Shim-Route": "cache",
        "Age": "61",
    }
    assert hit_headers(meta, 990.0)["Age"] == "0"  # a clock stepped back
    revalidated = EntryMeta("ab" * 32, "u", 5, stored_at=1000.0, validated_at=1050.0)
    assert hit_headers(revalidated, 1061.9)["Age"] == "11"


# -- the cache server applies the plan, on a miss and on a hit (a real origin, in-process) ------


@pytest.mark.origin
def test_a_304_on_a_miss_lets_the_fill_go_on_and_every_answer_is_the_same_on_a_hit(
    origin: Origin, tmp_path: Path
) -> None:
    body = os.urandom(3000)
    origin.put("k", b"")  # creates the bucket
    s3_client(origin.s3rver).put_object(
        Bucket=origin.bucket, Key="k", Body=body, CacheControl="max-age=60", Metadata={"a": "b"}
    )
    store = CacheStore(tmp_path, 1 << 20)

    async def scenario(
        server: CacheServer, metrics: Metrics, session: aiohttp.ClientSession
    ) -> None:
        ticket = origin.ticket("k")
        _, whole, _ = await send(session, server, origin.ticket("k"))
        etag = whole["ETag"]
        store.remove(ticket.identity.task_id)  # so that each request below starts a miss
        requests: list[tuple[dict[str, str], int, bytes]] = [
            ({"If-None-Match": etag}, 304, b""),
            ({"If-Match": WRONG}, 412, b"shim: precondition failed\n"),
            ({"Range": "bytes=3000-"}, 416, b""),
            ({"Range": "bytes=1-2", "If-Range": WRONG}, 200, body),
            ({"Range": "bytes=1-2", "If-Range": etag}, 206, body[1:3]),
        ]
        for headers, status, expected in requests:
            answers = []
            for state in ("MISS", "HIT"):
                got = await send(session, server, origin.ticket("k"), headers=headers)
                assert (got[0], got[2], got[1]["X-Shim-Cache"]) == (status, expected, state)
                answers.append({k.lower(): v for k, v in got[1].items()})
                await until(lambda: len(store) == 1, "the fill became the entry")
            miss, hit = answers
            assert hit.pop("age") == "0"
            assert hit.pop("x-shim-route") == "cache"
            assert miss.pop("x-shim-route") == "direct"
            assert {k: v for k, v in miss.items() if k not in ("date", "x-shim-cache")} == {
                k: v for k, v in hit.items() if k not in ("date", "x-shim-cache")
            }
            if status == 304:
                assert miss["etag"] == etag and miss["cache-control"] == "max-age=60"
                assert "x-amz-meta-a" not in miss and "content-length" not in miss
            if status == 200:
                assert miss["x-amz-meta-a"] == "b"
            store.remove(ticket.identity.task_id)
        assert fetches(metrics) == 1 + len(requests)  # one per miss: none was cancelled
        assert "Server" not in whole

    run_with_cache_server(store, scenario)
