"""HTTP semantics (RFC 9110 / 9111) measured as a table: each request (a conditional header
right or wrong, If-Range right or wrong, Range, HEAD, a 0-byte object, user metadata) is sent
to the strict store directly and through the real shim, as a miss and as a hit, through the
explicit proxy (plain HTTP: a zero-copy hit; HTTPS through CONNECT: a hit streamed by the
cache server) and the reverse listener. shim must answer what RFC 9110 asks, and the same on
every path, hit or miss, apart from its cache headers (X-Shim-*, Age).

The same rows run against azurite through the same shim. Each row records the store's own
answer too: s3rver implements If-None-Match (one tag, compared as a string) and
If-Modified-Since only, and answers a 304 with no headers at all; azurite ignores If-Range,
answers a Range past the end with an empty 206, If-None-Match: * with 400 and evaluates
If-Unmodified-Since beside a matching If-Match. Where a store departs from the RFC, the row
says what it answers, so the table stays honest about which server says what.

The nginx column: Debian's nginx (`etag on`) serves a file with the same bytes as each row's
object, and each row that does not depend on a store (all but the metadata ones) is sent to it
too, its conditional values built from nginx's own ETag (mtime-size) and Last-Modified. Where
nginx answers as RFC 9110 asks, shim's answer carries what nginx's does (status, bytes,
Content-Length, Content-Range, which validators); where nginx departs, the row says what it
answers: it evaluates If-Unmodified-Since beside a matching If-Match (412), and answers a Range
of an empty file with the whole (empty) file, 200, which RFC 9110 allows (a server may ignore
a Range) where shim answers 416.
"""

from __future__ import annotations

import datetime
import email.utils
import http.client
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, urlencode

import pytest
from azure.storage.blob import BlobSasPermissions, ContentSettings, generate_blob_sas

from tests.integration.test_proxy_azure import CONTAINER, azure_bucket_config, blob_url
from tests.support.azurite import ACCOUNT, ACCOUNT_KEY, AzuriteServer
from tests.support.http import Reply, direct, via_proxy
from tests.support.nginx import NginxServer, start_nginx
from tests.support.procs import free_port
from tests.support.servers import S3Server, put_object, s3_client
from tests.support.shim_process import ShimProcess, s3_bucket_config, start_shim

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

pytestmark = pytest.mark.slow

BUCKET = "semantics"
ALIAS = "models"
BODY = os.urandom(10_000)
WRONG_ETAG = '"00000000000000000000000000000000"'
# s3rver's answer to a Range of an empty object: a 206 that promises a byte and sends none.
BROKEN = -1
# Headers that are shim's alone, or the moment's: what hit and miss answers may differ in.
CACHE_HEADERS = {"x-shim-cache", "x-shim-route", "x-shim-task-id", "age", "date", "connection"}
# Headers that say what the object is: compared with the store's own answer.
SEMANTIC = (
    "Content-Length",
    "Content-Range",
    "Content-Type",
    "Content-Encoding",
    "ETag",
    "Last-Modified",
    "Cache-Control",
    "Content-Disposition",
    "Content-Language",
    "Expires",
    "Accept-Ranges",
    "x-amz-meta-owner",
    "x-ms-meta-owner",
)
NOT_MODIFIED = ("ETag", "Last-Modified", "Cache-Control", "Expires")
META_ARGS: dict[str, Any] = {
    "ContentType": "application/x-mar",
    "CacheControl": "max-age=600, must-revalidate",
    "ContentDisposition": 'attachment; filename="resnet.mar"',
    "ContentLanguage": "en",
    "Expires": email.utils.parsedate_to_datetime("Wed, 01 Jan 2031 00:00:00 GMT"),
    "Metadata": {"owner": "team-vision"},
}


@dataclass(frozen=True)
class Validators:
    etag: str
    last_modified: str

    def shifted(self, seconds: int) -> str:
        """Last-Modified moved by ``seconds``, as an HTTP-date."""
        when = email.utils.parsedate_to_datetime(self.last_modified).timestamp() + seconds
        return email.utils.formatdate(when, usegmt=True)


@dataclass(frozen=True)
class Row:
    name: str
    headers: Callable[[Validators], dict[str, str]] = lambda v: {}
    method: str = "GET"
    status: int = 200  # RFC 9110's answer, and shim's on every path
    part: slice = slice(None)  # the bytes of the body a 200 or 206 carries
    s3rver: int | None = None  # s3rver's status where it departs from the RFC
    azurite: int | None = None  # azurite's, likewise
    nginx: int | None = None  # nginx's, likewise
    body: bytes = BODY
    metadata: bool = False  # stored with a type, cache headers and user metadata

    def status_of(self, server: str) -> int | None:
        departures = {"s3rver": self.s3rver, "azurite": self.azurite, "nginx": self.nginx}
        return departures[server] or self.status


ROWS = [
    Row("GET"),
    Row("HEAD", method="HEAD"),
    Row("Range", lambda v: {"Range": "bytes=10-19"}, status=206, part=slice(10, 20)),
    Row(
        "Range past the end",
        lambda v: {"Range": "bytes=10000-"},
        status=416,
        azurite=206,  # an empty 206
    ),
    Row("If-None-Match right", lambda v: {"If-None-Match": v.etag}, status=304),
    Row("If-None-Match right, HEAD", lambda v: {"If-None-Match": v.etag}, "HEAD", 304),
    Row("If-None-Match wrong", lambda v: {"If-None-Match": WRONG_ETAG}),
    Row(
        "If-None-Match *",
        lambda v: {"If-None-Match": "*"},
        status=304,
        azurite=400,  # as Azure documents for reads: UnsatisfiableCondition
    ),
    Row(
        "If-None-Match list",
        lambda v: {"If-None-Match": f"{WRONG_ETAG}, {v.etag}"},
        status=304,
        s3rver=200,  # s3rver compares the header as one string
        azurite=200,  # so does azurite
    ),
    Row("If-Match right", lambda v: {"If-Match": v.etag}),
    Row("If-Match wrong", lambda v: {"If-Match": WRONG_ETAG}, status=412, s3rver=200),
    Row("If-Match wrong, HEAD", lambda v: {"If-Match": WRONG_ETAG}, "HEAD", 412, s3rver=200),
    Row(
        "If-Modified-Since Last-Modified",
        lambda v: {"If-Modified-Since": v.last_modified},
        status=304,
    ),
    Row("If-Modified-Since earlier", lambda v: {"If-Modified-Since": v.shifted(-86400)}),
    Row("If-Unmodified-Since Last-Modified", lambda v: {"If-Unmodified-Since": v.last_modified}),
    Row(
        "If-Unmodified-Since earlier",
        lambda v: {"If-Unmodified-Since": v.shifted(-86400)},
        status=412,
        s3rver=200,
    ),
    Row(
        "If-None-Match wrong beats If-Modified-Since",
        lambda v: {"If-None-Match": WRONG_ETAG, "If-Modified-Since": v.last_modified},
        s3rver=304,  # s3rver evaluates If-Modified-Since whatever If-None-Match said
    ),
    Row(
        "If-Match right beats If-Unmodified-Since",
        lambda v: {"If-Match": v.etag, "If-Unmodified-Since": v.shifted(-86400)},
        azurite=412,  # azurite evaluates both
        nginx=412,  # so does nginx
    ),
    Row(
        "If-Range ETag right",
        lambda v: {"Range": "bytes=10-19", "If-Range": v.etag},
        status=206,
        part=slice(10, 20),
    ),
    Row(
        "If-Range ETag wrong",
        lambda v: {"Range": "bytes=10-19", "If-Range": WRONG_ETAG},
        s3rver=206,  # s3rver ignores If-Range: a resuming client would splice two versions
        azurite=206,  # so does azurite
    ),
    Row(
        "If-Range date right",
        lambda v: {"Range": "bytes=10-19", "If-Range": v.last_modified},
        status=206,
        part=slice(10, 20),
    ),
    Row(
        "If-Range date wrong",
        lambda v: {"Range": "bytes=10-19", "If-Range": v.shifted(-86400)},
        s3rver=206,
        azurite=206,
    ),
    Row("0-byte", body=b""),
    Row("0-byte, HEAD", method="HEAD", body=b""),
    Row("0-byte, If-None-Match right", lambda v: {"If-None-Match": v.etag}, status=304, body=b""),
    Row(
        "0-byte, Range",
        lambda v: {"Range": "bytes=0-"},
        status=416,
        body=b"",
        s3rver=BROKEN,
        azurite=206,  # an empty 206
        nginx=200,  # the whole empty file: it ignores a Range of an empty file
    ),
    Row("metadata", metadata=True),
    Row("metadata, HEAD", method="HEAD", metadata=True),
    Row(
        "metadata, If-None-Match right",
        lambda v: {"If-None-Match": v.etag},
        status=304,
        metadata=True,
    ),
]


def object_url(endpoint: str, key: str, query: str = "") -> str:
    return f"{endpoint}/{BUCKET}/{quote(key, safe='/')}" + (f"?{query}" if query else "")


class Store(Protocol):
    name: str
    reverse: str  # http://HOST:PORT/ALIAS

    def put(self, key: str, row: Row) -> None: ...

    def signed(self, method: str, key: str, **overrides: str) -> str:
        """A URL signed for ``method`` of ``key``, independently of shim."""
        ...

    def url(self, key: str) -> str:
        """The plain URL a client asks shim for."""
        ...


@dataclass
class S3Store:
    name: str
    s3rver: S3Server
    client: S3Client
    reverse: str

    def put(self, key: str, row: Row) -> None:
        extra = dict(META_ARGS) if row.metadata else {}
        self.client.put_object(Bucket=BUCKET, Key=key, Body=row.body, **extra)

    def signed(self, method: str, key: str, **overrides: str) -> str:
        operation = "get_object" if method == "GET" else "head_object"
        params = {"Bucket": BUCKET, "Key": key, **overrides}
        return self.client.generate_presigned_url(operation, Params=params)

    def url(self, key: str) -> str:
        return object_url(self.s3rver.endpoint, key)


@dataclass
class AzureStore:
    name: str
    azurite: AzuriteServer
    reverse: str

    def put(self, key: str, row: Row) -> None:
        blob = self.azurite.service().get_blob_client(CONTAINER, key)
        settings = ContentSettings(
            content_type=META_ARGS["ContentType"],
            cache_control=META_ARGS["CacheControl"],
            content_disposition=META_ARGS["ContentDisposition"],
            content_language=META_ARGS["ContentLanguage"],
        )
        if row.metadata:
            blob.upload_blob(
                row.body, overwrite=True, content_settings=settings, metadata=META_ARGS["Metadata"]
            )
        else:
            blob.upload_blob(row.body, overwrite=True)

    def signed(self, method: str, key: str, **overrides: str) -> str:
        sas = generate_blob_sas(
            ACCOUNT,
            CONTAINER,
            key,
            account_key=ACCOUNT_KEY,
            permission=BlobSasPermissions(read=True),
            expiry=datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1),
        )
        return f"{self.url(key)}?{sas}"

    def url(self, key: str) -> str:
        return blob_url(self.azurite, key)


@dataclass
class Setup:
    shim: ShimProcess
    stores: dict[str, Store]

    def store(self, store: Store, method: str, key: str, headers: dict[str, str]) -> Reply:
        return direct(store.signed(method, key), method=method, headers=headers)

    def validators(self, store: Store, key: str) -> Validators:
        head = self.store(store, "HEAD", key, {})
        assert head.status == 200, (store.name, head.status)
        return Validators(head.headers["ETag"], head.headers["Last-Modified"])

    def proxy(
        self, store: Store, method: str, key: str, headers: dict[str, str], *, https: bool = False
    ) -> Reply:
        url = store.url(key)
        if https:
            url = url.replace("http://", "https://")
        ca = self.shim.ca_cert if https else None
        return via_proxy(self.shim.proxy_port, url, method=method, headers=headers, ca_cert=ca)

    def via_reverse(self, store: Store, method: str, key: str, headers: dict[str, str]) -> Reply:
        return direct(f"{store.reverse}/{quote(key, safe='/')}", method=method, headers=headers)

    def until_cached(self, fetch: Callable[[], Reply]) -> None:
        """Wait for the fill a miss started (it goes on whatever the miss was answered)."""
        deadline = time.monotonic() + 20
        while fetch().headers["X-Shim-Cache"] != "HIT":
            assert time.monotonic() < deadline, "the fill never became an entry"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxServer]:
    root = tmp_path_factory.mktemp("nginx-files")
    with start_nginx(root, tmp_path_factory.mktemp("nginx")) as server:
        yield server


@pytest.fixture(scope="module")
def setup(
    s3rver: S3Server, azurite: AzuriteServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Setup]:
    client = s3_client(s3rver)
    put_object(client, BUCKET, "seed", b"seed")
    port = free_port()
    reverse = f"http://127.0.0.1:{port}"
    config = {
        "reverse": f"127.0.0.1:{port}",
        "buckets": [
            {**s3_bucket_config(BUCKET, s3rver.endpoint), "alias": "s3"},
            {**azure_bucket_config(azurite.endpoint), "alias": "azure"},
        ],
    }
    stores: list[Store] = [
        S3Store("s3rver", s3rver, client, f"{reverse}/s3"),
        AzureStore("azurite", azurite, f"{reverse}/azure"),
    ]
    with start_shim(tmp_path_factory.mktemp("shim"), config) as shim:
        yield Setup(shim, {store.name: store for store in stores})


def headers_of(reply: Reply) -> dict[str, str]:
    return {name.lower(): value for name, value in reply.headers.items()}


def semantic(reply: Reply) -> dict[str, str | None]:
    return {name: reply.headers.get(name) for name in SEMANTIC}


def answer(reply: Reply, *, validators: bool = True) -> tuple[int, bytes, dict[str, str]]:
    """What a client may rely on: status, body, and every header but the cache's (and but
    the validators, ``validators`` False)."""
    dropped = CACHE_HEADERS | (set() if validators else {"etag", "last-modified"})
    headers = {k: v for k, v in headers_of(reply).items() if k not in dropped}
    return reply.status, reply.body, headers


def carried(reply: Reply) -> dict[str, object]:
    """What an answer carries beyond the values of its validators and its type, which differ
    between nginx and a store: the status, the bytes and their length and range, and which
    validators it names (a 412's or 416's body and length are each server's own text)."""
    document = reply.status in (412, 416)
    return {
        "status": reply.status,
        "body": None if document else reply.body,
        "Content-Length": None if document else reply.headers.get("Content-Length"),
        "Content-Range": reply.headers.get("Content-Range"),
        "validators": [name for name in ("ETag", "Last-Modified") if name in reply.headers],
    }


STORES = ("s3rver", "azurite")


@pytest.mark.parametrize("name", STORES)
def test_the_store_is_strict(setup: Setup, name: str) -> None:
    store = setup.stores[name]
    store.put("strict", ROWS[0])
    assert direct(store.url("strict")).status in (401, 403)
    assert setup.store(store, "GET", "strict", {}).status == 200


@pytest.mark.parametrize("name", STORES)
@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_the_table(setup: Setup, nginx: NginxServer, row: Row, name: str) -> None:
    store = setup.stores[name]
    slug = row.name.replace(" ", "-").replace(",", "").replace("*", "star")
    proxied, reversed_ = f"rows/{slug}/proxy", f"rows/{slug}/reverse"
    store.put(proxied, row)
    store.put(reversed_, row)
    served = nginx.root / slug  # nginx's file of the same bytes (no store metadata)
    served.write_bytes(row.body)
    # A date validator is strong once the object is a second old (RFC 9110 section 8.8.2.2).
    time.sleep(1.05)
    proxied_headers = row.headers(setup.validators(store, proxied))
    reversed_headers = row.headers(setup.validators(store, reversed_))
    method = row.method
    fetches = setup.shim.metrics()["shim_origin_fetches_total"]

    if row.status_of(name) == BROKEN:
        with pytest.raises(http.client.IncompleteRead):
            setup.store(store, method, proxied, proxied_headers)
    else:
        direct_reply = setup.store(store, method, proxied, proxied_headers)
        assert direct_reply.status == row.status_of(name), name
    proxy, reverse = {}, {}
    proxy["miss"] = setup.proxy(store, method, proxied, proxied_headers)
    if method == "HEAD":  # a HEAD fills nothing: a GET does
        setup.proxy(store, "GET", proxied, {})
        setup.via_reverse(store, "GET", reversed_, {})
    else:
        reverse["miss"] = setup.via_reverse(store, method, reversed_, reversed_headers)
    setup.until_cached(lambda: setup.proxy(store, "HEAD", proxied, {}))
    setup.until_cached(lambda: setup.via_reverse(store, "HEAD", reversed_, {}))
    proxy["hit (zero-copy)"] = setup.proxy(store, method, proxied, proxied_headers)
    proxy["hit (https, streamed)"] = setup.proxy(
        store, method, proxied, proxied_headers, https=True
    )
    reverse["hit"] = setup.via_reverse(store, method, reversed_, reversed_headers)
    # One origin fetch per object, whatever the miss was answered.
    assert setup.shim.metrics()["shim_origin_fetches_total"] == fetches + 2

    for path, reply in [*proxy.items(), *reverse.items()]:
        state = "MISS" if path == "miss" else "HIT"
        assert reply.headers["X-Shim-Cache"] == state, path
        assert reply.headers["X-Shim-Route"] == ("cache" if state == "HIT" else "direct")
        assert len(reply.headers["X-Shim-Task-Id"]) == 64
        assert reply.headers["Date"], path
        if state == "HIT":
            assert int(reply.headers["Age"]) >= 0, path
    # Hit and miss alike, on every path: byte for byte within one object, and apart from
    # its validators across the two copies.
    first = proxy["miss"]
    for replies in (proxy, reverse):
        for path, reply in replies.items():
            assert answer(reply) == answer(next(iter(replies.values()))), path
            assert answer(reply, validators=False) == answer(first, validators=False), path

    status, body, got = answer(first)
    assert status == row.status
    if status != 412:  # whose body is shim's own text, as the store's is its error document
        assert body == (row.body[row.part] if status in (200, 206) and method == "GET" else b"")
    if status in (200, 206):
        # What the store answers when it evaluates no precondition wrongly.
        plain = {"Range": proxied_headers["Range"]} if status == 206 else {}
        assert semantic(first) == semantic(setup.store(store, method, proxied, plain))
    elif status == 304:
        full = setup.store(store, method, proxied, {})
        assert got == {
            name.lower(): full.headers[name] for name in NOT_MODIFIED if name in full.headers
        }
    elif status == 416:
        assert got["content-range"] == f"bytes */{len(row.body)}"

    if row.metadata:  # a store's metadata: nothing nginx serves has it
        return
    head = direct(f"{nginx.endpoint}/{slug}", method="HEAD")
    own = row.headers(Validators(head.headers["ETag"], head.headers["Last-Modified"]))
    by_nginx = direct(f"{nginx.endpoint}/{slug}", method=method, headers=own)
    assert by_nginx.status == row.status_of("nginx")
    if by_nginx.status == row.status:  # where nginx answers as RFC 9110 asks, shim does alike
        assert carried(first) == carried(by_nginx)


def test_overrides_change_headers_not_bytes_and_stay_with_their_url(setup: Setup) -> None:
    s3 = setup.stores["s3rver"]
    key = "overrides.mar"
    s3.put(key, ROWS[0])
    overrides = {
        "response-content-disposition": 'attachment; filename="v1.mar"',
        "response-cache-control": "no-cache",
        "response-content-type": "application/x-override",
    }
    other = {"response-content-disposition": 'attachment; filename="v2.mar"'}
    query, other_query = urlencode(overrides, quote_via=quote), urlencode(other, quote_via=quote)
    signed = s3.signed(
        "GET",
        key,
        ResponseContentDisposition=overrides["response-content-disposition"],
        ResponseCacheControl=overrides["response-cache-control"],
        ResponseContentType=overrides["response-content-type"],
    )
    store = direct(signed)
    assert store.headers["Content-Disposition"] == 'attachment; filename="v1.mar"'

    def through_shim(q: str) -> Reply:
        return via_proxy(setup.shim.proxy_port, f"{s3.url(key)}?{q}" if q else s3.url(key))

    for state in ("MISS", "HIT"):
        reply = through_shim(query)
        assert (reply.status, reply.body, reply.headers["X-Shim-Cache"]) == (200, BODY, state)
        assert semantic(reply) == semantic(store)
        assert reply.headers["Cache-Control"] == "no-cache"
        assert reply.headers["Content-Type"] == "application/x-override"
    # The same bytes asked for with other overrides, or none, never get these headers.
    for q, disposition in ((other_query, 'attachment; filename="v2.mar"'), ("", None)):
        for state in ("MISS", "HIT"):
            reply = through_shim(q)
            assert (reply.body, reply.headers["X-Shim-Cache"]) == (BODY, state)
            assert reply.headers.get("Content-Disposition") == disposition
            assert "Cache-Control" not in reply.headers
            assert reply.headers["Content-Type"] == "binary/octet-stream"


def test_answers_to_the_clients_conditions_are_no_errors(setup: Setup) -> None:
    metrics = setup.shim.metrics()
    errors = {name: value for name, value in metrics.items() if name.startswith("shim_errors")}
    assert not any(errors.values()), errors
    assert metrics.get('shim_requests_total{route="error"}', 0) == 0


@pytest.mark.parametrize("name", STORES)
def test_an_origin_error_carries_the_cache_headers(setup: Setup, name: str) -> None:
    store = setup.stores[name]
    for path, reply in [
        ("proxy", setup.proxy(store, "GET", "absent.mar", {})),
        ("proxy HEAD", setup.proxy(store, "HEAD", "absent.mar", {})),
        ("reverse", setup.via_reverse(store, "GET", "absent.mar", {})),
    ]:
        assert reply.status == 404, path
        assert (reply.headers["X-Shim-Cache"], reply.headers["X-Shim-Route"]) == ("MISS", "direct")
        assert len(reply.headers["X-Shim-Task-Id"]) == 64
        assert reply.headers["X-Shim-Error"] == "origin_status"
