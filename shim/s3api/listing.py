"""Listings (ListObjectsV2, ListObjects): the client's parameters checked, the store's request
made from them, and its answer as S3's XML. Pure: no I/O.

An S3 bucket's own answer passes through with the bucket's name replaced by its alias; an
Azure container's blob listing is translated (its opaque marker is the continuation token).
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote, unquote
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from shim.s3api.errors import NOT_XML, S3Error, invalid_argument

LIST_PARAMS = frozenset(
    {
        "list-type",
        "prefix",
        "delimiter",
        "max-keys",
        "marker",
        "continuation-token",
        "start-after",
        "fetch-owner",
        "encoding-type",
    }
)
MAX_KEYS = 1000  # S3's own limit on one page
# A page of 1000 keys of 1024 bytes, with their XML: well under this. Anything larger is
# refused rather than held.
MAX_LIST_BODY = 8 * 1024 * 1024
S3_NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"


@dataclass(frozen=True, slots=True)
class ListRequest:
    version: Literal[1, 2]
    prefix: str = ""
    delimiter: str = ""
    max_keys: int = MAX_KEYS
    token: str | None = None  # v2's continuation-token, v1's marker
    start_after: str | None = None  # v2
    url_encoded: bool = False  # encoding-type=url
    fetch_owner: bool = False


def parse_list(params: Sequence[tuple[str, str]], resource: str) -> ListRequest | S3Error:
    given: dict[str, str] = {}
    for name, value in params:
        if name in given:
            return invalid_argument(resource, f"{name} is given more than once")
        given[name] = value
    list_type = given.get("list-type")
    if list_type not in (None, "2"):
        return invalid_argument(resource, "list-type must be 2 (or absent: ListObjects)")
    max_keys = given.get("max-keys", str(MAX_KEYS))
    if not (max_keys.isascii() and max_keys.isdigit() and len(max_keys) <= 10):
        return invalid_argument(resource, "max-keys must be a whole number from 0")
    encoding = given.get("encoding-type")
    if encoding not in (None, "url"):
        return invalid_argument(resource, "Invalid Encoding Method specified in Request")
    version: Literal[1, 2] = 2 if list_type == "2" else 1
    return ListRequest(
        version=version,
        prefix=given.get("prefix", ""),
        delimiter=given.get("delimiter", ""),
        max_keys=min(int(max_keys), MAX_KEYS),
        token=given.get("continuation-token" if version == 2 else "marker") or None,
        start_after=(given.get("start-after") or None) if version == 2 else None,
        url_encoded=encoding == "url",
        fetch_owner=version == 2 and given.get("fetch-owner") == "true",
    )


# -- S3 buckets: the store's own answer ------------------------------------------------------


def s3_list_call(request: ListRequest) -> tuple[str, dict[str, Any]]:
    """boto3's operation and parameters (bucket aside) for ``request``."""
    params: dict[str, Any] = {"MaxKeys": request.max_keys}
    if request.prefix:
        params["Prefix"] = request.prefix
    if request.delimiter:
        params["Delimiter"] = request.delimiter
    if request.url_encoded:
        params["EncodingType"] = "url"
    if request.version == 1:
        if request.token:
            params["Marker"] = request.token
        return "list_objects", params
    if request.token:
        params["ContinuationToken"] = request.token
    if request.start_after:
        params["StartAfter"] = request.start_after
    if request.fetch_owner:
        params["FetchOwner"] = True
    return "list_objects_v2", params


_NAME = re.compile(rb"<Name>[^<]*</Name>")


def rename_bucket(body: bytes, alias: str) -> bytes:
    """An S3 listing with its bucket's name (its first <Name>, before any key) as the alias."""
    return _NAME.sub(b"<Name>" + escape(alias).encode() + b"</Name>", body, count=1)


# -- Azure containers: their blob listing, translated --------------------------------------


def azure_list_query(request: ListRequest) -> list[tuple[str, str]]:
    """The List Blobs query for ``request`` (the SAS aside); ``max_keys`` is at least 1."""
    query = [("restype", "container"), ("comp", "list"), ("maxresults", str(request.max_keys))]
    if request.prefix:
        query.append(("prefix", request.prefix))
    if request.delimiter:
        query.append(("delimiter", request.delimiter))
    if request.token:
        query.append(("marker", request.token))
    return query


@dataclass(frozen=True, slots=True)
class Entry:
    key: str
    last_modified: str  # ISO 8601, as S3 writes it
    etag: str  # quoted
    size: int


@dataclass(frozen=True, slots=True)
class Page:
    entries: tuple[Entry, ...]
    prefixes: tuple[str, ...]
    next_token: str | None  # None: the last page


_DECLARATION = re.compile(rb"<!(DOCTYPE|ENTITY)", re.IGNORECASE)


class UnencodableKey(ValueError):
    """A listed key XML cannot carry: the client must ask for encoding-type=url."""


class ListingError(Exception):
    """The store's listing is not what it should be: answered as a 502, not guessed at."""


def parse_azure_listing(body: bytes) -> Page:
    """Azure's EnumerationResults as a page of entries and common prefixes."""
    if _DECLARATION.search(body):
        # No listing has one; a DTD's entities are how XML bombs go off.
        raise ListingError("the store's listing holds a DTD")
    try:
        root = ElementTree.fromstring(body)  # noqa: S314 (no DTD, so no entity to expand)
    except ElementTree.ParseError:
        raise ListingError("the store's listing is not well-formed XML") from None
    if root.tag != "EnumerationResults":
        raise ListingError(f"the store's listing is a <{root.tag}>, not <EnumerationResults>")
    entries, prefixes = [], []
    for item in root.iterfind("Blobs/*"):
        name = _blob_name(item)
        if item.tag == "BlobPrefix":
            prefixes.append(name)
        elif item.tag == "Blob":
            entries.append(_entry(name, item))
    next_marker = root.findtext("NextMarker") or None
    return Page(tuple(entries), tuple(prefixes), next_marker)


def _blob_name(item: ElementTree.Element) -> str:
    name = item.find("Name")
    if name is None or not name.text:
        raise ListingError("a listed blob has no name")
    # Names XML cannot hold are percent-encoded and marked so.
    return unquote(name.text) if name.get("Encoded") == "true" else name.text


def _entry(name: str, blob: ElementTree.Element) -> Entry:
    properties = blob.find("Properties")
    if properties is None:
        raise ListingError(f"blob {name!r} is listed without properties")
    size = properties.findtext("Content-Length", "")
    if not size.isdigit():
        raise ListingError(f"blob {name!r} is listed without a size")
    etag = properties.findtext("Etag", "").strip('"')
    return Entry(name, _iso_time(properties.findtext("Last-Modified", "")), f'"{etag}"', int(size))


def _iso_time(http_date: str) -> str:
    try:
        when = email.utils.parsedate_to_datetime(http_date)
    except (TypeError, ValueError):
        raise ListingError(f"a listed blob has an unreadable date {http_date[:40]!r}") from None
    return when.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def list_result_xml(request: ListRequest, alias: str, page: Page) -> bytes:
    """S3's ListBucketResult (v1 or v2, as ``request`` asked) for one page."""

    def text(value: str) -> str:
        if request.url_encoded:
            return escape(quote(value, safe="/"))
        if NOT_XML.search(value):
            raise UnencodableKey(value)
        return escape(value, {"\r": "&#13;"})

    def element(name: str, value: str) -> str:
        return f"<{name}>{value}</{name}>"

    truncated = page.next_token is not None
    parts = [
        element("Name", escape(alias)),
        element("Prefix", text(request.prefix)),
    ]
    if request.version == 1:
        parts.append(element("Marker", escape(request.token or "")))
        if truncated:
            assert page.next_token is not None
            parts.append(element("NextMarker", escape(page.next_token)))
    parts.append(element("MaxKeys", str(request.max_keys)))
    if request.delimiter:
        parts.append(element("Delimiter", text(request.delimiter)))
    if request.url_encoded:
        parts.append(element("EncodingType", "url"))
    parts.append(element("IsTruncated", "true" if truncated else "false"))
    if request.version == 2:
        parts.append(element("KeyCount", str(len(page.entries) + len(page.prefixes))))
        if request.token:
            parts.append(element("ContinuationToken", escape(request.token)))
        if page.next_token is not None:
            parts.append(element("NextContinuationToken", escape(page.next_token)))
        if request.start_after:
            parts.append(element("StartAfter", text(request.start_after)))
    for entry in page.entries:
        parts.append(
            "<Contents>"
            + element("Key", text(entry.key))
            + element("LastModified", entry.last_modified)
            + element("ETag", escape(entry.etag))
            + element("Size", str(entry.size))
            + element("StorageClass", "STANDARD")
            + "</Contents>"
        )
    for prefix in page.prefixes:
        parts.append(f"<CommonPrefixes>{element('Prefix', text(prefix))}</CommonPrefixes>")
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<ListBucketResult xmlns="{S3_NAMESPACE}">{"".join(parts)}</ListBucketResult>'
    ).encode()
