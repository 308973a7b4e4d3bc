"""The S3 API's I/O: bucket requests answered (listings fetched from the store, signed, never
cached), and its errors as S3's XML. Object reads are not here: the proxy serves them as it
serves any URL of the bucket (shim.addon)."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Mapping

import aiohttp
import yarl

from shim._errors import SigningError
from shim.cache.server import ERROR_HEADER, Reply, shim_headers
from shim.decide import Refuse
from shim.providers import Signer
from shim.providers.azure import AzureBucket, AzureSigner
from shim.providers.s3 import S3Bucket, S3Signer
from shim.redact import redact_url
from shim.s3api.errors import (
    REQUEST_ID_HEADER,
    XML_TYPE,
    S3Error,
    error_for_status,
    error_xml,
    invalid_argument,
    not_implemented,
)
from shim.s3api.listing import (
    MAX_LIST_BODY,
    S3_NAMESPACE,
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
from shim.s3api.request import BucketRead

log = logging.getLogger("shim.s3api")
# The error kind of the store's own answer to a listing (as of an object fetch's); "origin" is
# a store that did not answer, or not readably.
ORIGIN_STATUS = "origin_status"


def new_request_id() -> str:
    return secrets.token_hex(8).upper()


def xml_headers(request_id: str) -> dict[str, str]:
    return {"Content-Type": XML_TYPE, REQUEST_ID_HEADER: request_id}


def refusal(error: S3Error, method: str) -> Refuse:
    """``error`` as the proxy's refusal, with its XML body (none for a HEAD)."""
    request_id = new_request_id()
    headers = {**xml_headers(request_id), ERROR_HEADER: error.kind}
    body = b"" if method == "HEAD" else error_xml(error, request_id)
    return Refuse(error.status, error.kind, error.message, tuple(headers.items()), body)


def s3_error_reply(error: S3Error, method: str, cache_headers: Mapping[str, str] = {}) -> Reply:
    request_id = new_request_id()
    body = b"" if method == "HEAD" else error_xml(error, request_id)
    headers = {**cache_headers, **xml_headers(request_id), ERROR_HEADER: error.kind}
    return Reply(error.status, headers, body)


def object_reply(reply: Reply, method: str, resource: str) -> Reply:
    """A reply for an object, its failure (the origin's, a precondition, a range) told in
    S3's XML; the cache's own headers kept."""
    if reply.status < 400:
        return reply
    if reply.stream is not None:
        reply.stream.close()
    kept = shim_headers(reply.headers)
    told = [kept.pop(name) for name in list(kept) if name.lower() == ERROR_HEADER.lower()]
    # The kind the cache told (the origin's answer, a failed fetch...), else the request's own:
    # a precondition, a range.
    kind = told[0] if told else "request"
    error = error_for_status(reply.status, resource, reply.body, kind)
    if "Content-Range" in reply.headers:  # a 416's, the object's size
        kept["Content-Range"] = reply.headers["Content-Range"]
    return s3_error_reply(error, method, kept)


class BucketRequests:
    """Answers HeadBucket, GetBucketLocation and listings."""

    def __init__(self, *, origin_timeout: float) -> None:
        self._timeout = origin_timeout
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def answer(
        self, read: BucketRead, signer: Signer, extra_headers: Mapping[str, str]
    ) -> Reply:
        bucket = read.bucket
        alias = bucket.reverse_alias
        region = bucket.region if isinstance(bucket, S3Bucket) else "us-east-1"
        if read.operation == "head":
            return Reply(200, {"x-amz-bucket-region": region, **xml_headers(new_request_id())})
        if read.operation == "location":
            # us-east-1 is written as no location at all.
            location = "" if region == "us-east-1" else region
            body = (
                '<?xml version="1.0" encoding="UTF-8"?>\n'
                f'<LocationConstraint xmlns="{S3_NAMESPACE}">{location}</LocationConstraint>'
            ).encode()
            return Reply(200, xml_headers(new_request_id()), body)
        assert read.listing is not None
        resource = f"/{alias}"
        try:
            if isinstance(bucket, S3Bucket) and isinstance(signer, S3Signer):
                return await self._list_s3(read.listing, signer, alias, extra_headers)
            if isinstance(bucket, AzureBucket) and isinstance(signer, AzureSigner):
                return await self._list_azure(read.listing, signer, alias, extra_headers)
        except SigningError as error:
            log.warning("listing %s: %s", alias, error)
            failure = S3Error(502, "InternalError", str(error), resource, "signing")
            return s3_error_reply(failure, "GET")
        except UnencodableKey:
            message = "a listed key cannot be written in XML: list with encoding-type=url"
            return s3_error_reply(invalid_argument(resource, message), "GET")
        except ListingError as error:
            log.warning("listing %s: %s", alias, error)
            message = f"the store's listing cannot be read: {error}"
            return s3_error_reply(S3Error(502, "InternalError", message, resource, "origin"), "GET")
        except (aiohttp.ClientError, TimeoutError) as error:
            log.warning("listing %s: %s", alias, type(error).__name__)
            message = f"the store did not answer the listing ({type(error).__name__})"
            return s3_error_reply(S3Error(502, "InternalError", message, resource, "origin"), "GET")
        message = f"shim's S3 API lists S3 and Azure buckets only, not {bucket.provider}"
        return s3_error_reply(not_implemented(resource, message), "GET")

    async def _list_s3(
        self,
        request: ListRequest,
        signer: S3Signer,
        alias: str,
        extra_headers: Mapping[str, str],
    ) -> Reply:
        url = await asyncio.to_thread(signer.sign_listing, *s3_list_call(request))
        status, body = await self._get(url, extra_headers)
        if status != 200:
            return s3_error_reply(error_for_status(status, f"/{alias}", body, ORIGIN_STATUS), "GET")
        return Reply(200, xml_headers(new_request_id()), rename_bucket(body, alias))

    async def _list_azure(
        self,
        request: ListRequest,
        signer: AzureSigner,
        alias: str,
        extra_headers: Mapping[str, str],
    ) -> Reply:
        if request.start_after:
            message = "start-after is not supported on an Azure container"
            return s3_error_reply(not_implemented(f"/{alias}", message), "GET")
        if request.max_keys == 0:  # Azure wants at least 1
            page = Page((), (), None)
        else:
            url = await asyncio.to_thread(signer.sign_listing, azure_list_query(request))
            status, body = await self._get(url, extra_headers)
            if status != 200:
                return s3_error_reply(
                    error_for_status(status, f"/{alias}", body, ORIGIN_STATUS), "GET"
                )
            page = parse_azure_listing(body)
        return Reply(200, xml_headers(new_request_id()), list_result_xml(request, alias, page))

    async def _get(self, url: str, extra_headers: Mapping[str, str]) -> tuple[int, bytes]:
        """The store's status and body (at most MAX_LIST_BODY bytes) for a GET of ``url``."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                auto_decompress=False,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=self._timeout),
            )
        # As signed: not normalised again on the way (shim.upstream does the same).
        target = yarl.URL(url, encoded=True)
        # No redirect followed (a 3xx is the store's answer, as for objects: the extra headers
        # go nowhere else), and no compressed body to pass on as if it were XML.
        headers = {**extra_headers, "Accept-Encoding": "identity"}
        async with self._session.get(target, headers=headers, allow_redirects=False) as response:
            body = bytearray()
            async for chunk in response.content.iter_any():
                body += chunk
                if len(body) > MAX_LIST_BODY:
                    raise ListingError(f"its answer is larger than {MAX_LIST_BODY} bytes")
            log.debug("listing %s -> %d", redact_url(url), response.status)
            return response.status, bytes(body)
