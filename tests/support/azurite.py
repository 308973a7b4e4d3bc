"""Azurite, Microsoft's Azure Storage emulator (npm), as a real, strict Azure Blob origin.

`start_azurite` runs `azurite-blob` from tests/servers/node_modules (`npm ci --prefix
tests/servers`). It verifies SharedKey and SAS signatures (tampered, unsigned, other-blob and
write uses of a read SAS are 403). With `oauth=True` it serves https and accepts bearer tokens,
checking their issuer, audience and lifetime but not their signature: what
`unsigned_storage_token` mints. `ManagedIdentityEndpoint` answers as App Service's managed
identity endpoint does, so azure-identity's `DefaultAzureCredential` gets such tokens on loopback.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import os
import re
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import BlobServiceClient

from tests.support.procs import Stoppable, terminate, wait_started
from tests.support.servers import REPO_ROOT, SERVERS_DIR, ServerStartError

AZURITE_BIN = SERVERS_DIR / "node_modules" / ".bin" / "azurite-blob"

# Azurite's built-in account (the Azure Storage emulator's well-known development account).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
# Token fields azurite's basic OAuth checks: an Entra ID issuer and the storage audience.
TENANT_ID = "72f988bf-86f1-41af-91ab-2d7cd011db47"
OBJECT_ID = "5b8a9c41-6f3e-4a5e-9d1c-0a7c3e2f4b61"
STORAGE_AUDIENCE = "https://storage.azure.com"

_LISTENING = re.compile(r"successfully listens on (https?)://[^:\s]+:(\d+)")


@dataclass
class AzuriteServer(Stoppable):
    """A running azurite-blob; `stop()` (or leaving the `with` block) ends it."""

    host: str
    port: int
    data_dir: Path
    process: subprocess.Popen[bytes] = field(repr=False)
    scheme: str = "http"
    ca_cert: Path | None = None  # the CA of its certificate when it serves https
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        """The account URL, as `BlobServiceClient(account_url=...)` takes it."""
        return f"{self.scheme}://{self.host}:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol={self.scheme};AccountName={ACCOUNT};"
            f"AccountKey={ACCOUNT_KEY};BlobEndpoint={self.endpoint};"
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        """What azurite printed so far; empty after `stop()`."""
        if self._log is None:
            return ""
        fd = self._log.fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")

    def service(self) -> BlobServiceClient:
        """A client signing with SharedKey (the account key), trusting the server's CA."""
        return BlobServiceClient(
            self.endpoint,
            credential={"account_name": ACCOUNT, "account_key": ACCOUNT_KEY},
            connection_verify=str(self.ca_cert) if self.ca_cert else True,
        )

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM by PID and wait; SIGKILL if it does not exit."""
        terminate(self.process, timeout)
        if self._log is not None:
            self._log.close()
            self._log = None


def start_azurite(
    data_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    oauth_pki: tuple[Path, Path, Path] | None = None,
    timeout: float = 30.0,
) -> AzuriteServer:
    """Start azurite-blob storing under `data_dir`, and wait until it listens (`port=0`: a
    free one). `oauth_pki` = (CA, certificate, key) PEM files: serve https with that
    certificate and accept bearer tokens (`--oauth basic`, which needs https)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        str(AZURITE_BIN),
        "--blobHost",
        host,
        "--blobPort",
        str(port),
        "--silent",
        "--disableTelemetry",
        # azure-storage-blob sends a newer API version than azurite knows.
        "--skipApiVersionCheck",
        "-l",
        str(data_dir),
    ]
    if oauth_pki is not None:
        cmd += ["--oauth", "basic", "--cert", str(oauth_pki[1]), "--key", str(oauth_pki[2])]
    with contextlib.ExitStack() as on_failure:
        log = on_failure.enter_context(tempfile.TemporaryFile())
        try:
            process = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
        except FileNotFoundError as exc:
            raise ServerStartError(
                f"cannot run {AZURITE_BIN}: run `npm ci --prefix tests/servers` ({exc})"
            ) from exc
        server = AzuriteServer(
            host, port, data_dir, process, ca_cert=oauth_pki[0] if oauth_pki else None, _log=log
        )
        on_failure.callback(server.stop)
        server.scheme, server.port = _wait_listening(server, timeout)
        on_failure.pop_all()
    return server


def _wait_listening(server: AzuriteServer, timeout: float) -> tuple[str, int]:
    def printed_address() -> tuple[str, int] | None:
        found = _LISTENING.search(server.output())
        return (found.group(1), int(found.group(2))) if found else None

    def failed(what: str) -> ServerStartError:
        output = server.output().strip() or "(none)"
        return ServerStartError(f"azurite-blob {what}.\nOutput:\n{output}")

    return wait_started(server.process, printed_address, timeout, failed)


def put_blob(server: AzuriteServer, container: str, name: str, body: bytes) -> None:
    """Upload `body` as block blob `container`/`name`, creating the container if needed."""
    service = server.service()
    with contextlib.suppress(ResourceExistsError):
        service.create_container(container)
    service.get_blob_client(container, name).upload_blob(body, overwrite=True)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_storage_token(lifetime: int = 3600) -> tuple[str, int]:
    """A JWT (unsigned: azurite does not check signatures) with the claims azurite's basic
    OAuth checks, for the storage audience; and its expiry (epoch seconds)."""
    now = int(time.time())
    expires = now + lifetime
    claims: dict[str, Any] = {
        "aud": STORAGE_AUDIENCE,
        "iss": f"https://sts.windows.net/{TENANT_ID}/",
        "iat": now - 60,
        "nbf": now - 60,
        "exp": expires,
        "oid": OBJECT_ID,
        "tid": TENANT_ID,
        "uti": uuid.uuid4().hex,
    }
    header = {"alg": "none", "typ": "JWT"}
    token = ".".join(_b64url(json.dumps(part).encode()) for part in (header, claims)) + "."
    return token, expires


class ManagedIdentityEndpoint(Stoppable):
    """App Service's managed identity endpoint on loopback (`IDENTITY_ENDPOINT` with
    `IDENTITY_HEADER`): answers token requests that carry the header with an
    `unsigned_storage_token`. `requests` counts the tokens handed out."""

    def __init__(self, secret: str = "shim-test-identity-header", lifetime: int = 3600) -> None:
        self.secret = secret
        self.lifetime = lifetime
        self.requests = 0
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.headers.get("X-IDENTITY-HEADER") != endpoint.secret:
                    self._answer(401, {"error": "missing or wrong X-IDENTITY-HEADER"})
                    return
                endpoint.requests += 1
                token, expires_on = unsigned_storage_token(endpoint.lifetime)
                self._answer(
                    200,
                    {
                        "access_token": token,
                        "expires_on": str(expires_on),
                        "resource": STORAGE_AUDIENCE,
                        "token_type": "Bearer",
                    },
                )

            def _answer(self, status: int, document: dict[str, Any]) -> None:
                body = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/msi/token"

    def environment(self) -> dict[str, str]:
        """What App Service sets for a managed identity, pointing here."""
        return {"IDENTITY_ENDPOINT": self.url, "IDENTITY_HEADER": self.secret}

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
