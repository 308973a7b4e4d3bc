"""The freshness policy and what revalidation answers mean (shim.freshness): pure tables."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from shim.freshness import (
    ALWAYS,
    NEVER,
    FreshnessPolicy,
    Verdict,
    cache_control_directives,
    conditional_headers,
    judge,
    names_version,
    needs_revalidation,
    parse_revalidate,
    storable,
    versioned_tag,
)
from shim.providers import PROVIDERS


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("always", ALWAYS),
        ("never", NEVER),
        (60, 60.0),
        (0, 0.0),
        (2.5, 2.5),
        ("60", 60.0),
        ("60s", 60.0),
        ("5m", 300.0),
        ("1.5m", 90.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("500ms", 0.5),
        (" 10 s ", 10.0),
        ({"after": "5m"}, 300.0),
        ({"after": 30}, 30.0),
        (math.inf, NEVER),
    ],
)
def test_revalidate_values(value: object, seconds: float) -> None:
    assert parse_revalidate(value) == seconds


@pytest.mark.parametrize(
    "value",
    ["sometimes", "-5s", "5 minutes", "5x", "", True, None, {"after": "5m", "x": 1}, {}, -1, "nan"],
)
def test_revalidate_refuses(value: object) -> None:
    with pytest.raises(ValueError):
        parse_revalidate(value)


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_every_provider_bucket_has_the_policy_with_its_defaults(provider: str) -> None:
    fields = PROVIDERS[provider].config.model_fields
    assert fields["revalidate"].default == 60.0
    assert fields["keep_uncacheable"].default is False


def test_a_bucket_reads_the_policy_and_names_the_key_when_wrong() -> None:
    config = PROVIDERS["s3"].config
    base = {"provider": "s3", "bucket": "m", "credentials": {"source": "default"}}
    bucket = config.model_validate(
        {**base, "revalidate": {"after": "5m"}, "keep_uncacheable": True}
    )
    assert bucket.freshness == FreshnessPolicy(300.0, keep_uncacheable=True)
    assert config.model_validate({**base, "revalidate": "never"}).freshness.after == NEVER
    with pytest.raises(ValidationError, match="revalidate"):
        config.model_validate({**base, "revalidate": "soon"})


@pytest.mark.parametrize(
    ("after", "age", "versioned", "due"),
    [
        (60.0, 0.0, False, False),
        (60.0, 59.9, False, False),
        (60.0, 60.0, False, True),
        (60.0, 3600.0, False, True),
        (60.0, -5.0, False, True),  # validated "in the future": the clock went back
        (ALWAYS, 0.0, False, True),
        (NEVER, 1e9, False, False),
        (ALWAYS, 0.0, True, False),  # a version in the URL: immutable bytes
        (60.0, 3600.0, True, False),
    ],
)
def test_when_an_entry_is_due(after: float, age: float, versioned: bool, due: bool) -> None:
    now = 1_000_000.0
    policy = FreshnessPolicy(after)
    assert needs_revalidation(policy, now - age, now, versioned=versioned) is due


@pytest.mark.parametrize(
    ("url", "versioned"),
    [
        ("https://b.s3.amazonaws.com/k?versionId=3HL4kqtJ", True),
        ("https://storage.googleapis.com/b/o?generation=1700000000000000", True),
        ("https://a.blob.core.windows.net/c/b?versionid=2024-01-01T00:00:00.0000000Z", True),
        ("https://a.blob.core.windows.net/c/b?snapshot=2024-01-01T00:00:00.0000000Z", True),
        ("https://b.oss-cn-hangzhou.aliyuncs.com/k?versionId=CAEQ", True),
        ("https://b.s3.amazonaws.com/k", False),
        ("https://b.s3.amazonaws.com/versionId", False),  # the key, not a parameter
        ("https://b.s3.amazonaws.com/k?response-content-type=x", False),
        ("https://b.s3.amazonaws.com/k?partNumber=2", False),
    ],
)
def test_which_urls_name_a_version(url: str, versioned: bool) -> None:
    assert names_version(url) is versioned


@pytest.mark.parametrize(
    ("status", "stored", "etag", "verdict", "result"),
    [
        (304, '"a"', '"a"', Verdict.FRESH, "fresh"),
        (304, None, None, Verdict.FRESH, "fresh"),
        (200, '"a"', '"b"', Verdict.CHANGED, "changed"),
        (200, '"a"', '"a"', Verdict.FRESH, "fresh"),  # the origin ignored If-None-Match
        (200, '"a"', 'W/"a"', Verdict.FRESH, "fresh"),
        (200, None, '"a"', Verdict.CHANGED, "changed"),  # nothing to compare: take the new one
        (200, '"a"', None, Verdict.CHANGED, "changed"),
        (206, '"a"', '"a"', Verdict.FRESH, "fresh"),  # the first byte, for a dfdaemon tag
        (206, '"a"', '"b"', Verdict.CHANGED, "changed"),
        (404, '"a"', None, Verdict.GONE, "gone"),
        (410, '"a"', None, Verdict.GONE, "gone"),
        (500, '"a"', None, Verdict.UNAVAILABLE, "error"),
        (503, '"a"', None, Verdict.UNAVAILABLE, "error"),
        (429, '"a"', None, Verdict.UNAVAILABLE, "error"),
        (None, '"a"', None, Verdict.UNAVAILABLE, "error"),  # unreachable
        (403, '"a"', None, Verdict.REFUSED, "error"),
        (307, '"a"', None, Verdict.REFUSED, "error"),
        (412, '"a"', None, Verdict.REFUSED, "error"),
    ],
)
def test_what_an_answer_means(
    status: int | None, stored: str | None, etag: str | None, verdict: Verdict, result: str
) -> None:
    assert judge(status, stored, etag) is verdict
    assert verdict.result == result


@pytest.mark.parametrize(
    ("cache_control", "keep_uncacheable", "kept"),
    [
        (None, False, True),
        ("", False, True),
        ("max-age=3600", False, True),
        ("public, max-age=60", False, True),
        ("no-store", False, False),
        ("No-Store", False, False),
        ("private", False, False),
        ('private="Set-Cookie", max-age=10', False, False),
        ("max-age=0, no-store", False, False),
        ("no-cache", False, True),  # storable: it asks for revalidation, not for no copy
        ("no-store", True, True),
        ("private", True, True),
    ],
)
def test_what_is_kept(cache_control: str | None, keep_uncacheable: bool, kept: bool) -> None:
    policy = FreshnessPolicy(keep_uncacheable=keep_uncacheable)
    assert storable(cache_control, policy) is kept


def test_cache_control_directive_names() -> None:
    assert cache_control_directives(' Max-Age=5 ,private="x", ,no-store') == {
        "max-age",
        "private",
        "no-store",
    }


@pytest.mark.parametrize(
    ("etag", "last_modified", "headers"),
    [
        ('"a"', "Mon, 01 Jan 2024 00:00:00 GMT", {"If-None-Match": '"a"'}),
        (
            None,
            "Mon, 01 Jan 2024 00:00:00 GMT",
            {"If-Modified-Since": "Mon, 01 Jan 2024 00:00:00 GMT"},
        ),
        (None, None, {}),
    ],
)
def test_conditional_headers(
    etag: str | None, last_modified: str | None, headers: dict[str, str]
) -> None:
    assert conditional_headers(etag, last_modified) == headers


@pytest.mark.parametrize(
    ("tag", "etag", "result"),
    [
        ("", '"9b2cf535f27731c974343645a3985328"', ';etag="9b2cf535f27731c974343645a3985328"'),
        ("models", '"abc-2"', 'models;etag="abc-2"'),
        ("models", 'W/"x"', 'models;etag=W/"x"'),
        ("models", None, "models"),
        ("", None, ""),
    ],
)
def test_the_versioned_tag(tag: str, etag: str | None, result: str) -> None:
    assert versioned_tag(tag, etag) == result
