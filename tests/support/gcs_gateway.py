"""A verifying Google Cloud Storage gateway for tests: no GCS emulator checks signatures, so
this small aiohttp server in front of a directory of objects answers only requests whose V4
signed URL verifies (tests/support/gcs_v4.py, anchored on Google's conformance vectors), and
403 with a GCS-style XML error to every other one, unsigned requests included.

It also plays the two Google services the ambient-credentials path talks to, as Google
publishes them: the metadata server (`GCE_METADATA_HOST`: service account, short-lived access
tokens) and the IAM Credentials API's ``signBlob`` (base64 payload in, ``keyId`` and
``signedBlob`` out, signed with the service account's key; the bearer token is required and
must not have expired).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote
from xml.sax.saxutils import escape

import google_crc32c
from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from tests.support.gcs_v4 import Rejected, verify
from tests.support.procs import Stoppable
from tests.support.servers import REPO_ROOT

# Google's cross-language conformance vectors and their (inactive, public) service account.
VECTORS_DIR = REPO_ROOT / "tests" / "vectors" / "gcs"
TEST_SERVICE_ACCOUNT_FILE = VECTORS_DIR / "service-account.json"
CHUNK = 256 * 1024
METADATA_FLAVOR = ("Metadata-Flavor", "Google")
SIGN_BLOB_SUFFIX = ":signBlob"


@dataclass(frozen=True)
class ServiceAccount:
    email: str
    project_id: str
    private_key_id: str
    private_key: RSAPrivateKey = field(repr=False)

    @property
    def public_key(self) -> RSAPublicKey:
        return self.private_key.public_key()


def load_service_account(path: Path) -> ServiceAccount:
    """A service account key file (JSON, as IAM hands them out)."""
    info = json.loads(path.read_text())
    key = serialization.load_pem_private_key(info["private_key"].encode(), password=None)
    assert isinstance(key, RSAPrivateKey)
    return ServiceAccount(info["client_email"], info["project_id"], info["private_key_id"], key)


@dataclass(frozen=True)
class StoredObject:
    path: Path
    size: int
    md5: bytes
    crc32c: bytes
    generation: int
    content_type: str


@dataclass(frozen=True)
class Served:
    """One request the gateway answered."""

    service: str  # "storage", "metadata" or "iam"
    method: str
    target: str
    status: int
    body_bytes: int


def _error(status: int, code: str, message: str, **details: str | None) -> web.Response:
    parts = [f"<Code>{escape(code)}</Code><Message>{escape(message)}</Message>"]
    parts += [f"<{name}>{escape(value)}</{name}>" for name, value in details.items() if value]
    body = "<?xml version='1.0' encoding='UTF-8'?><Error>" + "".join(parts) + "</Error>"
    return web.Response(status=status, text=body, content_type="application/xml")


def _single_range(header: str | None, size: int) -> tuple[int, int] | bool | None:
    """(first, last) of a single ``bytes=`` range; None for no (or an ignored) range; False
    for a range that cannot be satisfied."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first_text, dash, last_text = header.removeprefix("bytes=").strip().partition("-")
    if not dash or not (first_text.isdigit() or last_text.isdigit()):
        return None
    if not first_text:
        length = int(last_text)
        return (max(size - length, 0), size - 1) if length and size else False
    first = int(first_text)
    last = min(int(last_text), size - 1) if last_text.isdigit() else size - 1
    if first >= size or (last_text and int(last_text) < first):
        return False
    return first, last


class GcsGateway(Stoppable):
    """Serves ``bucket/object`` from ``root`` at ``endpoint`` (path-style, as
    ``api_access_endpoint`` URLs are) to requests signed by one of ``accounts``."""

    def __init__(
        self, root: Path, accounts: list[ServiceAccount], *, token_lifetime: int = 3600
    ) -> None:
        self.root = root
        self.accounts = {account.email: account for account in accounts}
        # The access tokens' lifetime, as the metadata server states it and enforces it.
        self.token_lifetime = token_lifetime
        # Added to the real time: tests move the gateway's clock (URL and token expiry).
        self.time_shift = timedelta()
        self._objects: dict[tuple[str, str], StoredObject] = {}
        self._tokens: dict[str, datetime] = {}
        self._served: list[Served] = []
        self._sign_blob_tokens: list[str] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> GcsGateway:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="gcs-gateway", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            asyncio.run_coroutine_threadsafe(self._serve(), loop).result(timeout=10)
        except BaseException:
            self.stop()
            raise
        return self

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
        self._loop = self._thread = self._runner = None

    def __enter__(self) -> GcsGateway:
        return self.start()

    @property
    def endpoint(self) -> str:
        """What replaces https://storage.googleapis.com (and the IAM endpoint) in tests."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def metadata_host(self) -> str:
        """The value for GCE_METADATA_HOST and GCE_METADATA_IP."""
        return f"127.0.0.1:{self.port}"

    def now(self) -> datetime:
        return datetime.now(UTC) + self.time_shift

    # -- objects and counters ----------------------------------------------------------------

    def put(
        self, bucket: str, name: str, body: bytes, content_type: str = "application/octet-stream"
    ) -> int:
        """Store ``body`` as object ``name`` (any characters) of ``bucket``; returns its new
        generation."""
        directory = self.root / bucket
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / hashlib.sha256(name.encode()).hexdigest()
        path.write_bytes(body)
        with self._lock:
            previous = self._objects.get((bucket, name))
            generation = previous.generation + 1 if previous else 1
            self._objects[(bucket, name)] = StoredObject(
                path,
                len(body),
                hashlib.md5(body).digest(),
                google_crc32c.value(body).to_bytes(4, "big"),
                generation,
                content_type,
            )
        return generation

    @property
    def served(self) -> list[Served]:
        with self._lock:
            return list(self._served)

    def object_requests(self, status: int | None = None) -> list[Served]:
        """The object requests answered (not metadata or IAM), with ``status`` if given."""
        return [
            s
            for s in self.served
            if s.service == "storage" and (status is None or s.status == status)
        ]

    @property
    def bytes_served(self) -> int:
        """Object body bytes sent, all requests together."""
        return sum(s.body_bytes for s in self.object_requests())

    @property
    def tokens_issued(self) -> int:
        with self._lock:
            return len(self._tokens)

    @property
    def sign_blob_tokens(self) -> list[str]:
        """The bearer token of every signBlob request that was signed, in order."""
        with self._lock:
            return list(self._sign_blob_tokens)

    def _record(
        self, request: web.Request, status: int, body_bytes: int = 0, service: str = "storage"
    ) -> None:
        with self._lock:
            served = Served(service, request.method, request.raw_path, status, body_bytes)
            self._served.append(served)

    # -- requests ----------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.raw_path.partition("?")[0]
        if request.headers.get(METADATA_FLAVOR[0]) == METADATA_FLAVOR[1]:
            response: web.StreamResponse = self._metadata(request, path)
            self._record(request, response.status, service="metadata")
        elif request.method == "POST" and path.endswith(SIGN_BLOB_SUFFIX):
            response = await self._sign_blob(request, path)
            self._record(request, response.status, service="iam")
        else:
            response = await self._object(request, path)
        return response

    def _metadata(self, request: web.Request, path: str) -> web.Response:
        """The parts of the GCE metadata server google-auth reads."""
        account = next(iter(self.accounts.values()))
        accounts_path = "/computeMetadata/v1/instance/service-accounts/"
        name, _, item = path.removeprefix(accounts_path).partition("/")
        headers = dict([METADATA_FLAVOR])
        if path == "/":
            return web.Response(text="computeMetadata/", headers=headers)
        if path == "/computeMetadata/v1/project/project-id":
            return web.Response(text=account.project_id, headers=headers)
        if path == "/computeMetadata/v1/universe/universe-domain":
            return web.Response(text="googleapis.com", headers=headers)
        if path.startswith(accounts_path) and name in ("default", account.email):
            if item == "":
                info = {"email": account.email, "aliases": ["default"], "scopes": []}
                return web.json_response(info, headers=headers)
            if item == "token":
                token = "ya29.gateway-" + secrets.token_urlsafe(24)
                with self._lock:
                    self._tokens[token] = self.now() + timedelta(seconds=self.token_lifetime)
                reply = {
                    "access_token": token,
                    "expires_in": self.token_lifetime,
                    "token_type": "Bearer",
                }
                return web.json_response(reply, headers=headers)
        return web.Response(status=404, text="not found", headers=headers)

    async def _sign_blob(self, request: web.Request, path: str) -> web.Response:
        """IAM Credentials ``projects.serviceAccounts.signBlob``."""
        prefix = "/v1/projects/-/serviceAccounts/"
        email = unquote(path.removeprefix(prefix).removesuffix(SIGN_BLOB_SUFFIX))
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        with self._lock:
            expires_at = self._tokens.get(token)
        if scheme != "Bearer" or expires_at is None or self.now() >= expires_at:
            error = {"code": 401, "message": "Request had invalid authentication credentials."}
            return web.json_response({"error": {**error, "status": "UNAUTHENTICATED"}}, status=401)
        account = self.accounts.get(email)
        if not path.startswith(prefix) or account is None:
            error = {"code": 404, "message": "Service account not found", "status": "NOT_FOUND"}
            return web.json_response({"error": error}, status=404)
        payload = base64.b64decode((await request.json())["payload"], validate=True)
        signature = account.private_key.sign(payload, padding.PKCS1v15(), hashes.SHA256())
        with self._lock:
            self._sign_blob_tokens.append(token)
        blob = base64.b64encode(signature).decode()
        return web.json_response({"keyId": account.private_key_id, "signedBlob": blob})

    async def _object(self, request: web.Request, path: str) -> web.StreamResponse:
        try:
            verify(
                request.method,
                request.raw_path,
                list(request.headers.items()),
                keys={email: a.public_key for email, a in self.accounts.items()},
                now=self.now(),
            )
        except Rejected as rejected:
            self._record(request, 403)
            return _error(
                403,
                rejected.code,
                rejected.message,
                StringToSign=rejected.string_to_sign,
                CanonicalRequest=rejected.canonical_request,
            )
        bucket, slash, raw_name = path.removeprefix("/").partition("/")
        name = unquote(raw_name, errors="strict")
        with self._lock:
            stored = self._objects.get((bucket, name)) if slash and name else None
        generation = request.query.get("generation")
        if stored is None or (generation is not None and generation != str(stored.generation)):
            self._record(request, 404)
            return _error(404, "NoSuchKey", "The specified key does not exist.")
        if request.method not in ("GET", "HEAD"):
            self._record(request, 405)
            return _error(405, "MethodNotAllowed", "The specified method is not allowed.")
        return await self._send(request, stored)

    async def _send(self, request: web.Request, stored: StoredObject) -> web.StreamResponse:
        headers = {
            "ETag": f'"{stored.md5.hex()}"',
            "Accept-Ranges": "bytes",
            "Content-Type": request.query.get("response-content-type", stored.content_type),
            "x-goog-generation": str(stored.generation),
            "x-goog-metageneration": "1",
            "x-goog-stored-content-encoding": "identity",
            "x-goog-stored-content-length": str(stored.size),
            "x-goog-storage-class": "STANDARD",
        }
        if "response-content-disposition" in request.query:
            headers["Content-Disposition"] = request.query["response-content-disposition"]
        response = web.StreamResponse(headers=headers)
        # GCS sends one x-goog-hash header per checksum.
        response.headers.add("x-goog-hash", "crc32c=" + base64.b64encode(stored.crc32c).decode())
        response.headers.add("x-goog-hash", "md5=" + base64.b64encode(stored.md5).decode())
        first, last = 0, stored.size - 1
        wanted = _single_range(request.headers.get("Range"), stored.size)
        if wanted is False:
            self._record(request, 416)
            return _error(416, "InvalidRange", "The requested range cannot be satisfied.")
        if isinstance(wanted, tuple):
            first, last = wanted
            response.set_status(206)
            response.headers["Content-Range"] = f"bytes {first}-{last}/{stored.size}"
        length = response.content_length = last - first + 1
        await response.prepare(request)
        sent = 0
        if request.method == "GET":
            with stored.path.open("rb") as body:
                body.seek(first)
                while sent < length:
                    chunk = body.read(min(CHUNK, length - sent))
                    if not chunk:
                        break
                    if sent + len(chunk) == length:
                        # Recorded before the last byte leaves: a client that has its answer
                        # finds it here.
                        self._record(request, response.status, length)
                    await response.write(chunk)
                    sent += len(chunk)
        if sent < length or request.method != "GET" or not length:
            self._record(request, response.status, sent)
        await response.write_eof()
        return response


def start_gateway(root: Path, accounts: list[ServiceAccount] | None = None) -> GcsGateway:
    """A started gateway for the test service account (or ``accounts``)."""
    return GcsGateway(root, accounts or [load_service_account(TEST_SERVICE_ACCOUNT_FILE)]).start()


def account_json(account: ServiceAccount) -> dict[str, Any]:
    """A service-account key file's content for ``account`` (for a second, generated key)."""
    pem = account.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return {
        "type": "service_account",
        "project_id": account.project_id,
        "private_key_id": account.private_key_id,
        "private_key": pem,
        "client_email": account.email,
        "client_id": "1",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
