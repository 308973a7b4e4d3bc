"""The prefetch request: the URLs to warm, from the command line, a file, or the admin port's
JSON body. The same bounds everywhere. Pure: no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from urllib.parse import urlsplit

from shim._errors import RequestError

# What one request may name: a deploy pipeline warms one model's files, not a whole bucket;
# the admin port keeps each job's list in memory.
MAX_URLS = 1000
MAX_URL_LENGTH = 8192
MAX_BODY_BYTES = 512 * 1024


def checked_urls(urls: Iterable[str]) -> list[str]:
    """``urls`` in order, each once; RequestError naming the first problem."""
    unique: dict[str, None] = {}
    for index, url in enumerate(urls):
        if not url.startswith(("http://", "https://")):
            raise RequestError(f"URL {index + 1}: expected an http:// or https:// URL")
        if len(url) > MAX_URL_LENGTH:
            raise RequestError(f"URL {index + 1}: longer than {MAX_URL_LENGTH} characters")
        if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
            raise RequestError(f"URL {index + 1}: holds spaces or control characters")
        try:
            host = urlsplit(url).hostname
        except ValueError as error:  # e.g. an unclosed IPv6 bracket
            raise RequestError(f"URL {index + 1}: not a URL ({error})") from None
        if not host:
            raise RequestError(f"URL {index + 1}: names no host")
        unique[url] = None
        if len(unique) > MAX_URLS:
            raise RequestError(f"more than {MAX_URLS} URLs in one prefetch request")
    if not unique:
        raise RequestError("no URL to prefetch")
    return list(unique)


def urls_from_lines(text: str) -> list[str]:
    """The URLs of a ``--from-file`` list: one a line; blank lines and ``#`` comments skipped."""
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def urls_from_json(body: bytes) -> list[str]:
    """The URLs of the admin port's request body: a JSON array of URL strings."""
    if len(body) > MAX_BODY_BYTES:
        raise RequestError(f"the body is larger than {MAX_BODY_BYTES} bytes")
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise RequestError("the body is not JSON; expected an array of URLs") from None
    if not isinstance(doc, list) or not all(isinstance(url, str) for url in doc):
        raise RequestError("expected a JSON array of URL strings")
    return checked_urls(doc)
