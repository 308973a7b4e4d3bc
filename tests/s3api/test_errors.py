"""shim.s3api.errors: the S3 code of each failure, and well-formed XML whatever it names."""

from __future__ import annotations

from xml.etree import ElementTree

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shim.s3api.errors import NOT_XML, S3Error, access_denied, error_for_status, error_xml

S3_NO_SUCH_KEY = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>NoSuchKey</Code>'
    b"<Message>The specified key does not exist.</Message><Key>a</Key></Error>"
)
AZURE_CONTAINER_NOT_FOUND = (
    b'\xef\xbb\xbf<?xml version="1.0" encoding="utf-8"?><Error><Code>ContainerNotFound</Code>'
    b"<Message>The specified container does not exist.</Message></Error>"
)


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (404, S3_NO_SUCH_KEY, "NoSuchKey"),
        (404, b"", "NoSuchKey"),
        (404, AZURE_CONTAINER_NOT_FOUND, "NoSuchBucket"),
        (404, b"<Error><Code>BlobNotFound</Code></Error>", "NoSuchKey"),
        (404, b"<Error><Code>NoSuchBucket</Code></Error>", "NoSuchBucket"),
        (403, b"<Error><Code>AuthenticationFailed</Code></Error>", "AccessDenied"),
        (403, b"<Error><Code>SignatureDoesNotMatch</Code></Error>", "AccessDenied"),
        (412, b"shim: precondition failed\n", "PreconditionFailed"),
        (416, b"", "InvalidRange"),
        (400, b"<Error><Code>InvalidPartNumber</Code></Error>", "InvalidPartNumber"),
        (500, b"", "InternalError"),
        (502, b"shim: origin unreachable\n", "InternalError"),
        (503, b"<Error><Code>SlowDown</Code></Error>", "SlowDown"),
        (404, b"<Error><Code>Weird<Code></Error>", "NoSuchKey"),
    ],
)
def test_each_failure_gets_the_code_s3_gives_it(status: int, body: bytes, expected: str) -> None:
    error = error_for_status(status, "/models/a", body)
    assert (error.status, error.code, error.resource) == (status, expected, "/models/a")


@given(resource=st.text(), message=st.text())
def test_the_xml_is_well_formed_whatever_the_resource(resource: str, message: str) -> None:
    body = error_xml(S3Error(404, "NoSuchKey", message, resource), "0123456789ABCDEF")
    root = ElementTree.fromstring(body)
    assert root.findtext("Code") == "NoSuchKey"
    assert root.findtext("RequestId") == "0123456789ABCDEF"
    # What XML cannot carry is replaced, the rest kept as it was.
    assert root.findtext("Resource", "") == NOT_XML.sub("\ufffd", resource)
    assert root.findtext("Message") == NOT_XML.sub("\ufffd", message)


def test_access_denied_is_a_write_refusal_by_default() -> None:
    error = access_denied("/models/a")
    assert (error.status, error.code, error.kind) == (403, "AccessDenied", "method")
