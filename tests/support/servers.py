"""Real local servers for integration tests and benchmarks.

`start_s3rver` runs tests/servers/s3rver_strict.js: s3rver that verifies SigV2/SigV4 signatures
and answers 403 AccessDenied to unsigned requests (s3rver alone treats them as anonymous and
lets them through). Its Node dependencies come from `npm ci --prefix tests/servers`.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.support.procs import Stoppable, terminate, wait_started

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVERS_DIR = REPO_ROOT / "tests" / "servers"
S3RVER_SCRIPT = SERVERS_DIR / "s3rver_strict.js"

# s3rver's built-in key pair, always accepted.
DEFAULT_ACCESS_KEY = "S3RVER"
DEFAULT_SECRET_KEY = "S3RVER"
# s3rver ignores the region, but SigV4 needs one and clients must all agree on it.
REGION = "us-east-1"


class ServerStartError(RuntimeError):
    """A test server did not come up; the message carries its output."""


@dataclass
class S3Server(Stoppable):
    """A running strict s3rver; `stop()` (or leaving the `with` block) ends it."""

    host: str
    port: int
    data_dir: Path
    process: subprocess.Popen[bytes] = field(repr=False)
    access_key: str = DEFAULT_ACCESS_KEY
    secret_key: str = DEFAULT_SECRET_KEY
    region: str = REGION
    scheme: str = "http"
    # Unlinked temp file holding the server's stdout and stderr.
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        """What the server printed so far: its READY line, crash traces, Koa's logs of 5xx errors.

        Empty after `stop()`.
        """
        if self._log is None:
            return ""
        fd = self._log.fileno()
        # pread leaves alone the file offset the server shares with us and writes at.
        return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")

    def stop(self, timeout: float = 10.0) -> None:
        """Send SIGTERM to the server's PID and wait for it; SIGKILL if it does not exit."""
        terminate(self.process, timeout)
        if self.process.stdin is not None:
            self.process.stdin.close()
        if self._log is not None:
            self._log.close()
            self._log = None


def start_s3rver(
    data_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    extra_key_pairs: Mapping[str, str] | None = None,
    tls: tuple[Path, Path] | None = None,
    timeout: float = 30.0,
) -> S3Server:
    """Start the strict s3rver storing its buckets under `data_dir` and wait until it listens.

    `port=0` binds a free port. `extra_key_pairs` maps more access keys to their secrets, on top
    of the default S3RVER/S3RVER. `tls` = (certificate PEM, key PEM) serves https.
    """
    cmd = [
        "node",
        str(S3RVER_SCRIPT),
        "--directory",
        str(data_dir),
        "--address",
        host,
        "--port",
        str(port),
        # Our open stdin pipe is the server's lifeline: it exits if this process dies.
        "--exit-on-stdin-eof",
    ]
    for access_key, secret_key in (extra_key_pairs or {}).items():
        cmd += ["--key-pair", f"{access_key}:{secret_key}"]
    if tls is not None:
        cmd += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]

    with contextlib.ExitStack() as on_failure:
        # Output goes to an unlinked temp file rather than a pipe nobody drains, which could
        # fill up and block the server in a long session.
        log = on_failure.enter_context(tempfile.TemporaryFile())
        try:
            process = subprocess.Popen(
                cmd, cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT
            )
        except FileNotFoundError as exc:
            raise ServerStartError(f"cannot run node (is Node.js on PATH?): {exc}") from exc
        server = S3Server(
            host=host,
            port=port,
            data_dir=data_dir,
            process=process,
            scheme="https" if tls else "http",
            _log=log,
        )
        on_failure.callback(server.stop)
        server.port = _wait_ready(server, timeout)
        # Up and running: the server now owns the process and the log.
        on_failure.pop_all()
    return server


def _wait_ready(server: S3Server, timeout: float) -> int:
    def printed_port() -> int | None:
        for line in server.output().splitlines():
            if line.startswith("READY "):
                return int(line.split()[1])
        return None

    def failed(what: str) -> ServerStartError:
        hint = ""
        if not (SERVERS_DIR / "node_modules" / "@20minutes" / "s3rver").is_dir():
            hint = "\nIts dependencies are missing: run `npm ci --prefix tests/servers`."
        output = server.output().strip() or "(none)"
        return ServerStartError(f"s3rver ({S3RVER_SCRIPT}) {what}.{hint}\nOutput:\n{output}")

    return wait_started(server.process, printed_port, timeout, failed)


def s3_client(
    server: S3Server,
    *,
    endpoint_url: str | None = None,
    access_key: str | None = None,
    secret_key: str | None = None,
    ca_bundle: Path | None = None,
) -> S3Client:
    """A boto3 S3 client for `server` (SigV4, path-style addressing).

    `endpoint_url` sends the requests elsewhere, e.g. through a `Relay` in front of the server;
    the keys default to the server's; `ca_bundle` is the CA to trust for an https server.
    """
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url or server.endpoint,
        aws_access_key_id=access_key or server.access_key,
        aws_secret_access_key=secret_key or server.secret_key,
        region_name=server.region,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            # botocore's default trailing checksums (aws-chunked) are beyond s3rver.
            request_checksum_calculation="when_required",
        ),
        verify=str(ca_bundle) if ca_bundle else None,
    )


def put_object(client: S3Client, bucket: str, key: str, body: bytes) -> None:
    """Store `body` at `bucket`/`key`, creating the bucket first if it does not exist yet."""
    try:
        client.create_bucket(Bucket=bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in (
            "BucketAlreadyOwnedByYou",
            "BucketAlreadyExists",
        ):
            raise
    client.put_object(Bucket=bucket, Key=key, Body=body)


def put_objects(server: S3Server, objects: Mapping[str, bytes]) -> dict[str, bytes]:
    """Store each body of ``objects`` at its ``bucket/key`` on ``server``; returns ``objects``."""
    client = s3_client(server)
    for path, body in objects.items():
        bucket, _, key = path.partition("/")
        put_object(client, bucket, key, body)
    return dict(objects)
