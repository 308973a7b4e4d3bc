"""Real S3 clients run against an endpoint (shim's S3 API, or a store itself) as users run them.

- the AWS CLI v2 (`aws s3 cp`, `aws s3 sync`...), Debian's ``awscli`` at /usr/bin/aws, or
  ``$SHIM_AWS_CLI``;
- KServe's storage initializer: ``kserve_storage.Storage.download(uri, dir)``, what its
  ``initializer-entrypoint`` runs, configured as KServe's controller configures the init
  container (``AWS_ENDPOINT_URL``; ``awsAnonymousCredential=true`` for unsigned requests);
- the Run:ai model streamer: ``SafetensorsStreamer`` reading ``s3://`` with its C++ S3 backend
  (``AWS_ENDPOINT_URL``, ``RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING=0`` for path-style,
  ``RUNAI_STREAMER_S3_UNSIGNED=1`` for unsigned requests);
- boto3 (the test venv's own).

KServe and the streamer run in their own venv, ``$SHIM_S3_CLIENTS_VENV`` or
``~/.cache/shim-ci/s3-clients-venv``, made by ``scripts/install-s3-clients`` (torch comes from the
TorchServe venv). Every client gets a clean AWS environment: the endpoint, region us-east-1,
either no credentials (unsigned) or dummy ones, no config or credentials file, no instance
metadata lookups, no proxy for loopback.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore import UNSIGNED
from botocore.config import Config

from tests.support.procs import free_port, require
from tests.support.servers import REGION, REPO_ROOT, ServerStartError
from tests.support.shim_process import ShimProcess, start_shim

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

VENV_ENV_VAR = "SHIM_S3_CLIENTS_VENV"
AWS_CLI_ENV_VAR = "SHIM_AWS_CLI"
DEFAULT_VENV = Path.home() / ".cache" / "shim-ci" / "s3-clients-venv"
DEFAULT_AWS_CLI = Path("/usr/bin/aws")
INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install-s3-clients"
# Any key pair: shim drops the client's signature and signs with its own.
DUMMY_CREDENTIALS = ("AKIADUMMYDUMMYDUMMY1", "dummy-secret-that-signs-nothing")


class S3ClientsMissing(RuntimeError):
    """A client is not installed; the message says how to install it."""


class S3ClientError(RuntimeError):
    """A client failed; the message carries its output."""


def clients_venv() -> Path:
    """The venv with kserve-storage and the Run:ai streamer; `S3ClientsMissing` without it."""
    venv = Path(os.environ.get(VENV_ENV_VAR) or DEFAULT_VENV)
    if not os.access(venv / "bin" / "python", os.X_OK):
        raise S3ClientsMissing(
            f"no S3 clients venv at {venv}: run {INSTALL_SCRIPT.relative_to(REPO_ROOT)}, "
            f"or point ${VENV_ENV_VAR} at a venv with kserve-storage, "
            "runai-model-streamer[s3], safetensors and torch"
        )
    return venv


def aws_cli() -> Path:
    """The AWS CLI v2 (``$SHIM_AWS_CLI``, else /usr/bin/aws); `S3ClientsMissing` without it."""
    aws = Path(os.environ.get(AWS_CLI_ENV_VAR) or DEFAULT_AWS_CLI)
    try:
        version = subprocess.run(
            [str(aws), "--version"], capture_output=True, text=True, timeout=60
        ).stdout
    except OSError:
        version = ""
    if not version.startswith("aws-cli/2."):
        raise S3ClientsMissing(
            f"no AWS CLI v2 at {aws} ({version.strip() or 'not there'}): run "
            f"{INSTALL_SCRIPT.relative_to(REPO_ROOT)} (Debian's awscli), or set ${AWS_CLI_ENV_VAR}"
        )
    return aws


def require_s3_clients() -> None:
    """Skip the calling test module without the clients (fail it under SHIM_REQUIRE_S3_CLIENTS)."""
    try:
        clients_venv()
        aws_cli()
        missing = None
    except S3ClientsMissing as exc:
        missing = str(exc)
    require("SHIM_REQUIRE_S3_CLIENTS", missing)


@dataclass(frozen=True)
class Endpoint:
    """Where a client sends its S3 requests, and what it signs them with (None: unsigned)."""

    url: str
    credentials: tuple[str, str] | None = None


def start_shim_s3_api(
    workdir: Path, config: dict[str, Any], *, timeout: float = 30.0
) -> tuple[ShimProcess, str]:
    """`start_shim` with its S3 API on a free loopback port; the shim and that endpoint URL."""
    port = free_port()
    shim = start_shim(workdir, {**config, "s3_api": f"127.0.0.1:{port}"}, timeout=timeout)
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return shim, f"http://127.0.0.1:{port}"
        except OSError:
            if time.monotonic() > deadline:
                output = shim.output()
                shim.stop()
                raise ServerStartError(
                    f"shim's S3 API not listening after {timeout}s:\n{output}"
                ) from None
            time.sleep(0.05)


def client_env(endpoint: Endpoint, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a client process: this one's, minus every AWS_* and proxy setting,
    plus the endpoint, the region and the credentials (if any)."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("AWS_") and name.lower() not in ("http_proxy", "https_proxy")
    }
    env |= {
        "AWS_ENDPOINT_URL": endpoint.url,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    if endpoint.credentials is not None:
        env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"] = endpoint.credentials
    return env | dict(extra or {})


def _run(
    cmd: Sequence[str], env: Mapping[str, str], what: str, timeout: float
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        list(cmd), env=dict(env), capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT
    )
    if done.returncode != 0:
        raise S3ClientError(
            f"{what} exited with {done.returncode}\nstdout:\n{done.stdout[-4000:]}\n"
            f"stderr:\n{done.stderr[-4000:]}"
        )
    return done


# --- boto3 -------------------------------------------------------------------------------------


def boto3_client(endpoint: Endpoint, *, connections: int = 10) -> S3Client:
    """A boto3 client of ``endpoint``: path-style, unsigned or signing with its credentials, no
    retries, up to ``connections`` kept open (for as many threads)."""
    signing: Config = (
        Config(signature_version=UNSIGNED)
        if endpoint.credentials is None
        else Config(signature_version="s3v4")
    )
    return boto3.client(
        "s3",
        endpoint_url=endpoint.url,
        region_name=REGION,
        aws_access_key_id=endpoint.credentials[0] if endpoint.credentials else None,
        aws_secret_access_key=endpoint.credentials[1] if endpoint.credentials else None,
        config=signing.merge(
            Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 1},
                max_pool_connections=connections,
            )
        ),
    )


# --- the AWS CLI -------------------------------------------------------------------------------


def run_aws(
    endpoint: Endpoint, args: Sequence[str], *, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``aws ARGS --endpoint-url URL`` (``--no-sign-request`` without credentials); with
    ``check``, raises `S3ClientError` if it fails."""
    cmd = [str(aws_cli()), *args, "--endpoint-url", endpoint.url]
    if endpoint.credentials is None:
        cmd.append("--no-sign-request")
    env = client_env(endpoint)
    if check:
        return _run(cmd, env, f"aws {' '.join(args)}", timeout)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


# --- KServe's storage initializer --------------------------------------------------------------

_KSERVE_ENTRYPOINT = """\
import sys
from kserve_storage import Storage

Storage.download(sys.argv[1], sys.argv[2])
"""


def kserve_download(endpoint: Endpoint, uri: str, dest: Path, *, timeout: float = 300) -> None:
    """KServe's storage initializer downloads ``uri`` (``s3://BUCKET/PREFIX``) into ``dest``."""
    extra = {"awsAnonymousCredential": "true"} if endpoint.credentials is None else {}
    python = clients_venv() / "bin" / "python"
    _run(
        [str(python), "-c", _KSERVE_ENTRYPOINT, uri, str(dest)],
        client_env(endpoint, extra),
        f"KServe's storage initializer ({uri})",
        timeout,
    )


# --- the Run:ai model streamer and safetensors ----------------------------------------------

# A tensor's dtype, shape and the SHA-256 of its bytes: what "identical" compares.
TensorDigests = dict[str, tuple[str, tuple[int, ...], str]]

_DIGEST = """\
import hashlib, json, sys
import torch

def digest(tensor):
    raw = tensor.contiguous().reshape(-1).view(torch.uint8).numpy()
    return [str(tensor.dtype), list(tensor.shape), hashlib.sha256(raw).hexdigest()]
"""

# As vLLM's runai_streamer load format reads a model directory: the files other than weights
# pulled to a local directory, the safetensors files listed and all streamed in one session.
_STREAM = (
    _DIGEST
    + """
import time
from runai_model_streamer import ObjectStorageModel, SafetensorsStreamer, list_safetensors

model, local_dir = sys.argv[1], sys.argv[2]
start = time.monotonic()
with ObjectStorageModel(model_path=model, dst=local_dir) as pulled:
    pulled.pull_files(ignore_pattern=["*.pt", "*.safetensors", "*.bin", "*.tensors", "*.pth"])
files = sorted(list_safetensors(model))
digests = {}
with SafetensorsStreamer() as streamer:
    streamer.stream_files(files)
    for name, tensor in streamer.get_tensors():
        digests[name] = digest(tensor)
        del tensor
seconds = time.monotonic() - start
json.dump({"files": files, "tensors": digests, "seconds": seconds}, sys.stdout)
"""
)

_LOAD = (
    _DIGEST
    + """
from safetensors import safe_open

with safe_open(sys.argv[1], framework="pt") as local:
    json.dump({name: digest(local.get_tensor(name)) for name in local.keys()}, sys.stdout)
"""
)

# Tensors of several dtypes and shapes filling ``size`` bytes with random bits (no two alike).
_WRITE = """\
import sys
import torch
from safetensors.torch import save_file

size, seed, names = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
generator = torch.Generator().manual_seed(seed)
kinds = [(torch.float32, 1024), (torch.bfloat16, 768), (torch.float16, 512), (torch.int8, 4096)]
tensors, left, index = {}, size, 0
while left > 0:
    dtype, columns = kinds[index % len(kinds)]
    width = torch.tensor([], dtype=dtype).element_size() * columns
    rows = max(1, min(left // width, 1 + (size // 7) // width))
    raw = torch.randint(0, 256, (rows * width,), dtype=torch.uint8, generator=generator)
    tensors[f"{names}.{index}.weight"] = raw.view(dtype).reshape(rows, columns)
    left -= rows * width
    index += 1
save_file(tensors, sys.argv[1], metadata={"format": "pt"})
"""


def _digests(printed: dict[str, list[Any]]) -> TensorDigests:
    return {name: (dtype, tuple(shape), sha) for name, (dtype, shape, sha) in printed.items()}


@dataclass(frozen=True)
class StreamedModel:
    """What the Run:ai streamer read of a model directory."""

    files: list[str]  # the safetensors files it listed (s3:// URIs)
    tensors: TensorDigests  # of every file
    seconds: float  # from the first request to the last tensor (not the imports)


def runai_stream(
    endpoint: Endpoint, model: str, local_dir: Path, *, timeout: float = 600
) -> StreamedModel:
    """The Run:ai streamer loads the model directory ``model`` (``s3://BUCKET/PREFIX/``) as vLLM's
    ``runai_streamer`` load format does: its other files pulled into ``local_dir``, every
    safetensors file streamed."""
    extra = {
        "RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING": "0",
        # Anonymous requests (the C++ backend's anonymous credentials provider): no signature.
        **({"RUNAI_STREAMER_S3_UNSIGNED": "1"} if endpoint.credentials is None else {}),
    }
    python = clients_venv() / "bin" / "python"
    done = _run(
        [str(python), "-W", "ignore", "-c", _STREAM, model, str(local_dir)],
        client_env(endpoint, extra),
        f"the Run:ai streamer ({model})",
        timeout,
    )
    printed = json.loads(done.stdout)
    return StreamedModel(printed["files"], _digests(printed["tensors"]), printed["seconds"])


def local_tensor_digests(path: Path) -> TensorDigests:
    """The digests of the tensors of a local safetensors file, loaded with safetensors."""
    python = clients_venv() / "bin" / "python"
    done = _run(
        [str(python), "-W", "ignore", "-c", _LOAD, str(path)],
        dict(os.environ),
        f"safetensors loading {path}",
        600,
    )
    return _digests(json.loads(done.stdout))


def write_safetensors(path: Path, size: int, *, seed: int = 0, names: str = "layers") -> None:
    """A safetensors file of random tensors (several dtypes and shapes) of about ``size`` bytes,
    named ``NAMES.0.weight``, ``NAMES.1.weight``..."""
    python = clients_venv() / "bin" / "python"
    _run(
        [str(python), "-W", "ignore", "-c", _WRITE, str(path), str(size), str(seed), names],
        dict(os.environ),
        f"writing {path}",
        600,
    )
