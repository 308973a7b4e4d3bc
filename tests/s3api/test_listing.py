"""shim.s3api.listing: list requests made for each store, and Azure's listing as S3's XML
(read back with botocore's own parser, as SDK clients read it)."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import botocore.session
import pytest
from botocore.parsers import RestXMLParser

from shim.s3api.listing import (
    Entry,
    ListingError,
    ListRequest,
    Page,
    UnencodableKey,
    azure_list_query,
    list_result_xml,
    parse_azure_listing,
    rename_bucket,
    s3_list_call,
)

AZURE_LISTING = b"""\xef\xbb\xbf<?xml version="1.0" encoding="utf-8"?>
<EnumerationResults ServiceEndpoint="http://127.0.0.1:10000/devstoreaccount1/"
 ContainerName="weights"><Prefix>models/</Prefix><MaxResults>3</MaxResults>
<Delimiter>/</Delimiter><Blobs>
<Blob><Name>models/a &amp; b.bin</Name><Properties>
<Last-Modified>Mon, 30 Nov 2026 19:40:01 GMT</Last-Modified><Etag>0x8DD1234</Etag>
<Content-Length>42</Content-Length><BlobType>BlockBlob</BlobType></Properties></Blob>
<BlobPrefix><Name>models/sub/</Name></BlobPrefix>
<Blob><Name Encoded="true">models/%EF%BF%BEodd</Name><Properties>
<Last-Modified>Tue, 01 Dec 2026 00:00:00 GMT</Last-Modified><Etag>"0x8DD5678"</Etag>
<Content-Length>0</Content-Length></Properties></Blob>
</Blobs><NextMarker>2!80!opaque</NextMarker></EnumerationResults>"""


def parsed(body: bytes, operation: str) -> dict[str, Any]:
    """``body`` as boto3 hands it to a client of ``operation``."""
    model = botocore.session.get_session().get_service_model("s3")
    shape = model.operation_model(operation).output_shape
    assert shape is not None
    response = {"body": body, "headers": {}, "status_code": 200}
    result: dict[str, Any] = RestXMLParser().parse(response, shape)
    return result


def test_an_azure_page_reads_as_an_s3_v2_page() -> None:
    page = parse_azure_listing(AZURE_LISTING)
    request = ListRequest(2, "models/", "/", 3, "prev", url_encoded=True)
    result = parsed(list_result_xml(request, "weights", page), "ListObjectsV2")
    assert result["Name"] == "weights"
    # boto3 decodes what it asked to be encoded (encoding-type=url, its default).
    assert [(unquote(o["Key"]), o["Size"], o["ETag"]) for o in result["Contents"]] == [
        ("models/a & b.bin", 42, '"0x8DD1234"'),
        ("models/\ufffeodd", 0, '"0x8DD5678"'),
    ]
    assert result["Contents"][0]["LastModified"].isoformat() == "2026-11-30T19:40:01+00:00"
    assert result["CommonPrefixes"] == [{"Prefix": "models/sub/"}]
    assert (result["IsTruncated"], result["KeyCount"]) == (True, 3)
    assert (result["ContinuationToken"], result["NextContinuationToken"]) == ("prev", "2!80!opaque")
    # U+FFFE cannot be written in XML: without encoding-type=url there is no answer to give.
    with pytest.raises(UnencodableKey):
        list_result_xml(ListRequest(2), "weights", page)


def test_a_v1_page_carries_its_markers_and_url_encoding() -> None:
    page = Page((Entry("a b+c%", "2026-11-30T19:40:01.000Z", '"e"', 1),), (), "next")
    body = list_result_xml(ListRequest(1, prefix="a b", url_encoded=True, token="m"), "w", page)
    assert b"<Key>a%20b%2Bc%25</Key>" in body and b"<EncodingType>url</EncodingType>" in body
    result = parsed(body, "ListObjects")
    assert (result["Marker"], result["NextMarker"], result["IsTruncated"]) == ("m", "next", True)
    last = parsed(list_result_xml(ListRequest(1), "w", Page((), (), None)), "ListObjects")
    assert last["IsTruncated"] is False and "NextMarker" not in last


@pytest.mark.parametrize(
    "body",
    [
        b"not xml",
        b"<Error><Code>x</Code></Error>",
        b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaa">]><EnumerationResults/>',
        b"<EnumerationResults><Blobs><Blob><Name>a</Name></Blob></Blobs></EnumerationResults>",
        b"<EnumerationResults><Blobs><Blob><Properties><Content-Length>1</Content-Length>"
        b"</Properties></Blob></Blobs></EnumerationResults>",
    ],
)
def test_a_listing_that_is_not_one_is_an_error_not_a_guess(body: bytes) -> None:
    with pytest.raises(ListingError):
        parse_azure_listing(body)


def test_s3_requests_carry_what_the_client_asked_and_nothing_else() -> None:
    assert s3_list_call(ListRequest(2)) == ("list_objects_v2", {"MaxKeys": 1000})
    v2 = ListRequest(2, "p", "/", 10, "tok", "after", url_encoded=True, fetch_owner=True)
    assert s3_list_call(v2) == (
        "list_objects_v2",
        {
            "MaxKeys": 10,
            "Prefix": "p",
            "Delimiter": "/",
            "EncodingType": "url",
            "ContinuationToken": "tok",
            "StartAfter": "after",
            "FetchOwner": True,
        },
    )
    assert s3_list_call(ListRequest(1, token="m")) == (
        "list_objects",
        {"MaxKeys": 1000, "Marker": "m"},
    )
    assert azure_list_query(ListRequest(2, "p", "/", 5, "tok")) == [
        ("restype", "container"),
        ("comp", "list"),
        ("maxresults", "5"),
        ("prefix", "p"),
        ("delimiter", "/"),
        ("marker", "tok"),
    ]


def test_only_the_bucket_name_is_renamed() -> None:
    body = (
        b"<ListBucketResult><Name>real</Name><Contents><Key>real</Key><Owner>"
        b"<DisplayName>real</DisplayName></Owner></Contents></ListBucketResult>"
    )
    assert rename_bucket(body, "a&b") == body.replace(b"<Name>real</Name>", b"<Name>a&amp;b</Name>")
