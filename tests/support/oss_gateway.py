"""A verifying OSS gateway for tests: serves objects from a directory, but only to requests
whose signed URL tests/support/oss_verify.py accepts (V1 or V4); every other request, unsigned
ones included, gets OSS's 403 XML error, echoing what OSS echoes of a bad signature.

No OSS emulator checks signatures, so this stands in for the service's authentication, the part
under test, with a plain file store behind it. Path-style ``/BUCKET/KEY`` when the Host is an
IP address or localhost, virtual-hosted (``BUCKET.`` + anything) otherwise. GET and HEAD, one
byte range (206, 416 past the end), ``response-*`` overrides, OSS's checksum headers (``ETag``
as the upper-case MD5, ``x-oss-hash-crc64ecma``). Runs in a background thread;
``stop()`` (or leaving the ``with`` block) ends it.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import ipaddress
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit
from xml.sax.saxutils import escape

import crcmod

from tests.support.keys import AWKWARD_KEYS
from tests.support.oss_verify import Credential, Denied, verify
from tests.support.procs import Stoppable

REGION = "cn-hangzhou"
ACCESS_KEY_ID = "LTAI5tGatewayKeyId"
ACCESS_KEY_SECRET = "gateway+secret/with=odd&chars"
STS_ACCESS_KEY_ID = "STS.NUgatewayTempKey"
STS_ACCESS_KEY_SECRET = "sts-secret-value"
STS_TOKEN = "CAIS+gateway/sts=token&value"
CREDENTIALS = {
    ACCESS_KEY_ID: Credential(ACCESS_KEY_SECRET),
    STS_ACCESS_KEY_ID: Credential(STS_ACCESS_KEY_SECRET, STS_TOKEN),
}

# Keys every OSS test sends through: each escapes differently in each SDK and URL shape.
AWKWARD_KEYS = (*AWKWARD_KEYS, "tilde~and'quote\".mar")

_crc64 = crcmod.mkCrcFun(0x142F0E1EBA9EA3693, initCrc=0, xorOut=0xFFFFFFFFFFFFFFFF, rev=True)
_CHUNK = 256 * 1024
_OVERRIDES = {
    "response-content-type": "Content-Type",
    "response-content-language": "Content-Language",
    "response-expires": "Expires",
    "response-cache-control": "Cache-Control",
    "response-content-disposition": "Content-Disposition",
    "response-content-encoding": "Content-Encoding",
}


@dataclass(frozen=True, slots=True)
class Served:
    """One request the gateway answered."""

    method: str
    bucket: str
    key: str
    status: int
    body_bytes: int
    query: str  # raw, as sent: the signature parameters a test must not find elsewhere


@dataclass(frozen=True, slots=True)
class _Object:
    path: Path
    size: int
    etag: str
    crc64: str


def _is_ip_or_localhost(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _byte_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """(first, last) for one satisfiable range; None to send the whole object (no header, or
    several ranges); "unsatisfiable" for 416."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first_text, _, last_text = header[6:].strip().partition("-")
    if not first_text:
        if not last_text.isdigit() or int(last_text) == 0:
            return "unsatisfiable"
        return max(0, size - int(last_text)), size - 1
    if not first_text.isdigit() or (last_text and not last_text.isdigit()):
        return None
    first = int(first_text)
    last = min(int(last_text), size - 1) if last_text else size - 1
    if first >= size or last < first:
        return "unsatisfiable"
    return first, last


class OssGateway(Stoppable):
    def __init__(
        self,
        root: Path,
        *,
        credentials: Mapping[str, Credential] = CREDENTIALS,
        region: str | None = REGION,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = root
        self.credentials = dict(credentials)
        self.region = region
        # The time signatures are checked at: tests move it to expire a URL.
        self.clock = clock
        self.served: list[Served] = []
        self._objects: dict[tuple[str, str], _Object] = {}
        self._lock = threading.Lock()
        gateway = self

        class Handler(_Handler):
            owner = gateway

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        port: int = self._server.server_address[1]
        return port

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, bucket: str, key: str) -> str:
        """The unsigned path-style URL of an object."""
        return f"{self.endpoint}/{bucket}/{quote(key, safe='/')}"

    def put(self, bucket: str, key: str, body: bytes) -> None:
        folder = self.root / bucket
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / hashlib.sha256(key.encode()).hexdigest()
        path.write_bytes(body)
        etag = hashlib.md5(body).hexdigest().upper()  # OSS's ETag: the MD5
        with self._lock:
            self._objects[bucket, key] = _Object(path, len(body), etag, str(_crc64(body)))

    def create_bucket(self, bucket: str) -> None:
        (self.root / bucket).mkdir(parents=True, exist_ok=True)

    def lookup(self, bucket: str, key: str) -> _Object | None:
        with self._lock:
            return self._objects.get((bucket, key))

    def record(self, served: Served) -> None:
        with self._lock:
            self.served.append(served)

    def fetches(self, bucket: str, key: str, status: int = 200) -> list[Served]:
        """The GETs of ``bucket``/``key`` answered with ``status`` (200 or 206)."""
        with self._lock:
            return [
                s
                for s in self.served
                if (s.method, s.bucket, s.key, s.status) == ("GET", bucket, key, status)
            ]

    @property
    def bytes_served(self) -> int:
        with self._lock:
            return sum(s.body_bytes for s in self.served)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


class _Handler(http.server.BaseHTTPRequestHandler):
    owner: OssGateway
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a test's output is its assertions."""

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _refuse_method(self) -> None:
        self.close_connection = True  # its body is never read
        self._error(405, "MethodNotAllowed", "The specified method is not allowed.", "", "")

    do_PUT = do_POST = do_DELETE = _refuse_method

    def _query(self) -> str:
        return urlsplit(self.path).query

    def _locate(self) -> tuple[str, str, str] | None:
        """(bucket, raw key, raw query) of the request target."""
        target = urlsplit(self.path)
        host = urlsplit("//" + (self.headers.get("Host") or "")).hostname or ""
        raw_path, query = target.path, target.query
        if _is_ip_or_localhost(host):
            bucket, slash, raw_key = raw_path.removeprefix("/").partition("/")
            return (bucket, raw_key, query) if slash else None
        return host.partition(".")[0], raw_path.removeprefix("/"), query

    def _answer(self, *, body: bool) -> None:
        located = self._locate()
        if located is None:
            self._error(400, "InvalidArgument", "no bucket and key in the URL", "", "")
            return
        bucket, raw_key, query = located
        try:
            key = unquote(raw_key, errors="strict")
        except UnicodeDecodeError:
            self._error(400, "InvalidObjectName", "the key is not UTF-8", bucket, raw_key)
            return
        if not (self.owner.root / bucket).is_dir():
            self._error(404, "NoSuchBucket", "The specified bucket does not exist.", bucket, key)
            return
        try:
            verified = verify(
                self.command,
                bucket,
                key,
                query,
                credentials=self.owner.credentials,
                region=self.owner.region,
                headers=dict(self.headers.items()),
                now=self.owner.clock(),
            )
        except Denied as denied:
            self._error(403, denied.code, denied.message, bucket, key, denied.echo)
            return
        version = verified.params.get("versionId")
        found = self.owner.lookup(bucket, key)
        if version not in (None, "null"):
            self._error(404, "NoSuchVersion", "The specified version does not exist.", bucket, key)
            return
        if found is None:
            self._error(404, "NoSuchKey", "The specified key does not exist.", bucket, key)
            return
        self._send_object(found, bucket, key, verified.params, body=body)

    def _send_object(
        self, found: _Object, bucket: str, key: str, params: Mapping[str, str], *, body: bool
    ) -> None:
        wanted = _byte_range(self.headers.get("Range"), found.size)
        if wanted == "unsatisfiable":
            self._error(416, "InvalidRange", "The requested range is not satisfiable", bucket, key)
            return
        first, last = wanted if isinstance(wanted, tuple) else (0, found.size - 1)
        status = 206 if isinstance(wanted, tuple) else 200
        length = last - first + 1 if found.size else 0
        headers = {
            "Content-Length": str(length),
            "Content-Type": "application/octet-stream",
            "ETag": f'"{found.etag}"',
            "Content-MD5": base64.b64encode(bytes.fromhex(found.etag)).decode(),
            "x-oss-hash-crc64ecma": found.crc64,
            "Accept-Ranges": "bytes",
            "x-oss-request-id": secrets.token_hex(12).upper(),
        }
        if status == 206:
            headers["Content-Range"] = f"bytes {first}-{last}/{found.size}"
        headers |= {header: params[name] for name, header in _OVERRIDES.items() if name in params}
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

        def record(sent: int) -> None:
            self.owner.record(Served(self.command, bucket, key, status, sent, self._query()))

        sent = 0
        if body and length:
            with found.path.open("rb") as file:
                file.seek(first)
                while sent < length:
                    chunk = file.read(min(_CHUNK, length - sent))
                    if not chunk:
                        break
                    if sent + len(chunk) == length:
                        # Recorded before the last byte leaves: a client that has its answer
                        # finds it here.
                        record(length)
                    self.wfile.write(chunk)
                    sent += len(chunk)
        if sent < length or not (body and length):
            record(sent)

    def _error(
        self,
        status: int,
        code: str,
        message: str,
        bucket: str,
        key: str,
        echo: Mapping[str, str] | None = None,
    ) -> None:
        request_id = secrets.token_hex(12).upper()
        elements = {"Code": code, "Message": message, "RequestId": request_id}
        elements |= {"HostId": self.headers.get("Host") or "", **(echo or {})}
        xml = "".join(f"<{name}>{escape(value)}</{name}>" for name, value in elements.items())
        document = f'<?xml version="1.0" encoding="UTF-8"?>\n<Error>{xml}</Error>\n'.encode()
        # Recorded before it is sent: a client that has its answer finds it here.
        self.owner.record(Served(self.command, bucket, key, status, 0, self._query()))
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(document)))
        self.send_header("x-oss-request-id", request_id)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(document)
