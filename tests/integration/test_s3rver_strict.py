"""The test servers themselves: the strict s3rver rejects anything not validly signed (so a 200
from it proves a request was signed right), and the relay counts and breaks traffic as told."""

from __future__ import annotations

import http.client
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from botocore.exceptions import ClientError

from tests.support.relay import RelayFactory
from tests.support.servers import (
    S3Server,
    ServerStartError,
    put_object,
    s3_client,
    start_s3rver,
)

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

pytestmark = pytest.mark.origin

OBJECT = os.urandom(256 * 1024)


def _presigned_get(s3: S3Client, bucket: str, key: str) -> str:
    return s3.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=300
    )


def _request(url: str, method: str = "GET") -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, bytes(err.read())


def _with_query(url: str, query: list[tuple[str, str]]) -> str:
    return urllib.parse.urlsplit(url)._replace(query=urllib.parse.urlencode(query)).geturl()


def _flip_last_hex(signature: str) -> str:
    return signature[:-1] + ("0" if signature[-1] != "0" else "1")


def _error_code(body: bytes) -> str:
    return body.split(b"<Code>", 1)[1].split(b"</Code>", 1)[0].decode()


@pytest.fixture
def stored(s3: S3Client) -> tuple[str, str]:
    """A bucket holding OBJECT at key "this.bin", and something else at "other.bin"."""
    # The server is shared by the session, so each test gets its own bucket.
    bucket = f"test-{uuid.uuid4().hex[:16]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="this.bin", Body=OBJECT)
    s3.put_object(Bucket=bucket, Key="other.bin", Body=b"other")
    return bucket, "this.bin"


# -- strictness ------------------------------------------------------------------------------


def test_presigned_get_returns_object(s3: S3Client, stored: tuple[str, str]) -> None:
    assert _request(_presigned_get(s3, *stored)) == (200, OBJECT)


def test_tampered_signature_is_rejected(s3: S3Client, stored: tuple[str, str]) -> None:
    url = _presigned_get(s3, *stored)
    query = urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query)
    tampered = [(k, _flip_last_hex(v) if k == "X-Amz-Signature" else v) for k, v in query]

    status, body = _request(_with_query(url, tampered))

    assert status == HTTPStatus.FORBIDDEN
    assert _error_code(body) == "SignatureDoesNotMatch"


def test_unsigned_url_is_rejected(s3: S3Client, stored: tuple[str, str]) -> None:
    url = _presigned_get(s3, *stored)
    query = urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query)
    unsigned = [(k, v) for k, v in query if not k.lower().startswith("x-amz-")]

    status, body = _request(_with_query(url, unsigned))

    assert status == HTTPStatus.FORBIDDEN
    assert _error_code(body) == "AccessDenied"


def test_presigned_url_for_another_key_is_rejected(s3: S3Client, stored: tuple[str, str]) -> None:
    bucket, key = stored
    other_url = _presigned_get(s3, bucket, "other.bin")
    assert _request(other_url) == (200, b"other")  # the URL itself is good...

    misused = other_url.replace("/other.bin?", f"/{key}?")
    status, body = _request(misused)

    assert status == HTTPStatus.FORBIDDEN  # ...but signs a different key
    assert _error_code(body) == "SignatureDoesNotMatch"


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/"), ("GET", "/{bucket}"), ("HEAD", "/{bucket}/this.bin"), ("PUT", "/{bucket}/new")],
)
def test_unsigned_requests_are_denied_everywhere(
    s3rver: S3Server, s3: S3Client, stored: tuple[str, str], method: str, path: str
) -> None:
    bucket, _ = stored
    status, body = _request(s3rver.endpoint + path.format(bucket=bucket), method)

    assert status == HTTPStatus.FORBIDDEN
    if method != "HEAD":
        assert _error_code(body) == "AccessDenied"
    assert "new" not in [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_wrong_secret_is_rejected(s3rver: S3Server, stored: tuple[str, str]) -> None:
    bad = s3_client(s3rver, secret_key="not-the-secret")
    with pytest.raises(ClientError) as caught:
        bad.head_bucket(Bucket=stored[0])
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == HTTPStatus.FORBIDDEN


def test_extra_key_pairs_are_accepted(tmp_path: Path) -> None:
    with start_s3rver(tmp_path, extra_key_pairs={"SHIMTEST": "shim/secret+key"}) as server:
        client = s3_client(server, access_key="SHIMTEST", secret_key="shim/secret+key")
        put_object(client, "keys", "k", b"v")
        assert client.get_object(Bucket="keys", Key="k")["Body"].read() == b"v"

        stranger = s3_client(server, access_key="NOBODY", secret_key="x")
        with pytest.raises(ClientError) as caught:
            stranger.list_buckets()
        assert caught.value.response["Error"]["Code"] == "InvalidAccessKeyId"
        assert f"READY {server.port}" in server.output()
    assert server.process.returncode == 0  # stopped cleanly by SIGTERM


def test_start_failure_reports_server_output(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(ServerStartError, match="EADDRINUSE"):
            start_s3rver(tmp_path, port=port)


# -- relay -----------------------------------------------------------------------------------


def _raw_get(address: tuple[str, int], url: str) -> tuple[bytes, OSError | None]:
    """GET `url`'s path over one new connection to `address`.

    Returns every byte received until the connection ended, and the error that ended it, if any.
    """
    parts = urllib.parse.urlsplit(url)
    request = (
        f"GET {parts.path}?{parts.query} HTTP/1.1\r\n"
        f"Host: {parts.netloc}\r\nConnection: close\r\n\r\n"
    ).encode()
    received = bytearray()
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(request)
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except OSError as err:
            return bytes(received), err
    return bytes(received), None


def test_relay_counts_every_byte(
    s3rver: S3Server, s3: S3Client, stored: tuple[str, str], relay_factory: RelayFactory
) -> None:
    relay = relay_factory(s3rver.host, s3rver.port)
    # Signed for the relay's address: s3rver checks the Host header the client sent.
    url = _presigned_get(s3_client(s3rver, endpoint_url=relay.endpoint), *stored)

    response, error = _raw_get(relay.address, url)
    assert error is None

    head, body = response.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 ")
    assert body == OBJECT
    assert relay.bytes_down == len(response)
    assert relay.bytes_up > 0
    assert relay.connections == 1

    relay.reset_counters()
    via_relay = s3_client(s3rver, endpoint_url=relay.endpoint)
    assert via_relay.get_object(Bucket=stored[0], Key=stored[1])["Body"].read() == OBJECT
    assert len(OBJECT) < relay.bytes_down < len(OBJECT) + 4096  # the object plus headers


def test_relay_cut_resets_mid_body(
    s3rver: S3Server, s3: S3Client, stored: tuple[str, str], relay_factory: RelayFactory
) -> None:
    relay = relay_factory(s3rver.host, s3rver.port)
    url = _presigned_get(s3_client(s3rver, endpoint_url=relay.endpoint), *stored)
    relay.cut_after_bytes = len(OBJECT) // 2  # set at runtime, like a test changing faults

    # An HTTP client sees a failure, never a complete body.
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        _request(url)

    # Exactly cut_after_bytes arrive, then a reset (not a clean FIN).
    received, error = _raw_get(relay.address, url)
    assert isinstance(error, ConnectionResetError)
    assert len(received) == len(OBJECT) // 2
    assert received.startswith(b"HTTP/1.1 200 ")

    relay.cut_after_bytes = None
    assert _request(url) == (200, OBJECT)


def test_relay_rate_limit_paces_transfer(
    s3rver: S3Server, stored: tuple[str, str], relay_factory: RelayFactory
) -> None:
    rate = 1_000_000.0
    relay = relay_factory(s3rver.host, s3rver.port, rate_limit_bytes_per_s=rate)
    via_relay = s3_client(s3rver, endpoint_url=relay.endpoint)

    start = time.monotonic()
    body = via_relay.get_object(Bucket=stored[0], Key=stored[1])["Body"].read()
    elapsed = time.monotonic() - start

    assert body == OBJECT
    expected = relay.bytes_down / rate
    # Loose bounds: the lower one is what pacing guarantees; the upper only catches a stall.
    assert expected * 0.8 < elapsed < expected + 3.0
