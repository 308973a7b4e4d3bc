"""The prefetch request, from a file or the admin port's body: its form and its bounds."""

from __future__ import annotations

import json
import re

import pytest

from shim._errors import RequestError
from shim.prefetch.request import (
    MAX_BODY_BYTES,
    MAX_URL_LENGTH,
    MAX_URLS,
    checked_urls,
    urls_from_json,
    urls_from_lines,
)


def test_lines_skip_blanks_and_comments() -> None:
    text = "# models\nhttps://b.s3.amazonaws.com/a.mar\n\n  http://h/b  \n#http://h/c\n"
    assert urls_from_lines(text) == ["https://b.s3.amazonaws.com/a.mar", "http://h/b"]


def test_urls_keep_their_order_and_come_once() -> None:
    assert checked_urls(["http://h/b", "http://h/a", "http://h/b"]) == ["http://h/b", "http://h/a"]


@pytest.mark.parametrize(
    ("urls", "problem"),
    [
        ([], "no URL to prefetch"),
        (["ftp://h/a"], "URL 1: expected an http:// or https:// URL"),
        (["http://h/a", "h/b"], "URL 2: expected an http:// or https:// URL"),
        (["http://h/a b"], "URL 1: holds spaces or control characters"),
        (["http://h/a\r\nX: y"], "URL 1: holds spaces or control characters"),
        (["http://[zz/a"], "URL 1: not a URL (Invalid IPv6 URL)"),
        (["http:///a"], "URL 1: names no host"),
        (["http://h/" + "a" * MAX_URL_LENGTH], f"URL 1: longer than {MAX_URL_LENGTH} characters"),
        ([f"http://h/{i}" for i in range(MAX_URLS + 1)], f"more than {MAX_URLS} URLs"),
    ],
)
def test_a_bad_list_is_refused_naming_the_problem(urls: list[str], problem: str) -> None:
    with pytest.raises(RequestError, match=re.escape(problem)):
        checked_urls(urls)


def test_the_most_urls_allowed_pass() -> None:
    urls = [f"http://h/{i}" for i in range(MAX_URLS)]
    assert checked_urls(urls + urls[:5]) == urls


def test_a_json_body_is_an_array_of_urls() -> None:
    assert urls_from_json(json.dumps(["http://h/a", "https://h/b"]).encode()) == [
        "http://h/a",
        "https://h/b",
    ]


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"", "not JSON"),
        (b"\xff\xfe[", "not JSON"),
        (b'{"urls": ["http://h/a"]}', "expected a JSON array of URL strings"),
        (b'["http://h/a", 1]', "expected a JSON array of URL strings"),
        (b"[" * 100_000, "not JSON"),  # nested past the parser's recursion limit
        (b"[]", "no URL to prefetch"),
        (b" " * (MAX_BODY_BYTES + 1), f"larger than {MAX_BODY_BYTES} bytes"),
    ],
)
def test_a_bad_body_is_refused(body: bytes, problem: str) -> None:
    with pytest.raises(RequestError, match=problem):
        urls_from_json(body)
