"""S3's error answers: the code each failure gets, and its XML body. Pure."""

from __future__ import annotations

import re
from dataclasses import dataclass
from xml.sax.saxutils import escape

XML_TYPE = "application/xml"
REQUEST_ID_HEADER = "x-amz-request-id"


@dataclass(frozen=True, slots=True)
class S3Error:
    """An S3 error answer. ``kind``: shim's metrics label for it (X-Shim-Error)."""

    status: int
    code: str
    message: str
    resource: str = ""
    kind: str = "request"


def access_denied(resource: str, message: str = "Access Denied", kind: str = "method") -> S3Error:
    return S3Error(403, "AccessDenied", message, resource, kind)


def invalid_argument(resource: str, message: str) -> S3Error:
    return S3Error(400, "InvalidArgument", message, resource)


def not_implemented(resource: str, message: str) -> S3Error:
    return S3Error(501, "NotImplemented", message, resource)


# Characters XML 1.0 cannot carry, not even as references.
NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _text(value: str) -> str:
    # A resource is what the client sent, whatever it holds; the XML stays well-formed.
    # A bare CR would be read back as LF.
    return escape(NOT_XML.sub("\ufffd", value), {"\r": "&#13;"})


def error_xml(error: S3Error, request_id: str) -> bytes:
    resource = f"<Resource>{_text(error.resource)}</Resource>" if error.resource else ""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{error.code}</Code><Message>{_text(error.message)}</Message>"
        f"{resource}<RequestId>{request_id}</RequestId></Error>"
    ).encode()


# The code S3 gives each status when nothing more precise is known.
_BY_STATUS = {
    400: ("InvalidRequest", "Bad Request"),
    403: ("AccessDenied", "Access Denied"),
    404: ("NoSuchKey", "The specified key does not exist."),
    405: ("MethodNotAllowed", "The specified method is not allowed against this resource."),
    409: ("OperationAborted", "A conflicting operation is in progress."),
    411: ("MissingContentLength", "You must provide the Content-Length HTTP header."),
    412: ("PreconditionFailed", "At least one of the preconditions you specified did not hold."),
    416: ("InvalidRange", "The requested range is not satisfiable"),
    501: ("NotImplemented", "A header you provided implies functionality that is not implemented"),
    503: ("ServiceUnavailable", "Please reduce your request rate."),
    504: ("GatewayTimeout", "The origin did not answer in time."),
}
# Other stores' codes for the failures S3 names its own way (Azure, GCS and OSS send <Code>).
_FOREIGN_CODES = {
    "BlobNotFound": "NoSuchKey",
    "ContainerNotFound": "NoSuchBucket",
    "ResourceNotFound": "NoSuchKey",
    "AuthenticationFailed": "AccessDenied",
    "AuthorizationFailure": "AccessDenied",
    "AuthorizationPermissionMismatch": "AccessDenied",
    "InvalidRange": "InvalidRange",
    "ConditionNotMet": "PreconditionFailed",
}
# S3's own codes an S3-compatible origin may send, kept as they are.
_S3_CODES = frozenset(
    {
        "AccessDenied",
        "NoSuchKey",
        "NoSuchBucket",
        "NoSuchVersion",
        "InvalidRange",
        "PreconditionFailed",
        "InvalidArgument",
        "InvalidRequest",
        "InvalidObjectState",
        "InvalidPartNumber",
        "SlowDown",
        "ServiceUnavailable",
        "InternalError",
        "RequestTimeout",
    }
)
_CODE = re.compile(rb"<Code>([A-Za-z]{1,64})</Code>")


def error_for_status(
    status: int, resource: str, origin_body: bytes = b"", kind: str = "request"
) -> S3Error:
    """The S3 error for a failure answered with ``status``; ``origin_body``: the store's own
    error body, whose code is kept when S3 knows it (or has a name for it). ``kind``: who
    failed, as shim tells it (its X-Shim-Error), which the body cannot say: the answer to a
    HEAD has none."""
    found = _CODE.search(origin_body[:4096])
    origin_code = found.group(1).decode() if found else ""
    code = origin_code if origin_code in _S3_CODES else _FOREIGN_CODES.get(origin_code, "")
    default_code, message = _BY_STATUS.get(
        status, ("InternalError", "We encountered an internal error. Please try again.")
    )
    if not code:
        code = default_code
    elif code != default_code:
        message = code
    if code == "NoSuchBucket":
        message = "The specified bucket does not exist"
    return S3Error(status, code, message, resource, kind)
