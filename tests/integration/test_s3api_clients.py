"""Real S3 clients read through shim's S3 API with no credentials of the store.

The clients are the unmodified ones model servers use: KServe's storage initializer, the Run:ai
model streamer (its C++ S3 backend), boto3 and the AWS CLI v2, each pointed at shim's S3 API
with unsigned requests or dummy credentials. The store is the strict s3rver (it refuses unsigned
requests) behind a relay that counts what it serves: what the origin paid for each download.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from tests.support.procs import direct_opener
from tests.support.relay import Relay
from tests.support.s3_clients import (
    DUMMY_CREDENTIALS,
    Endpoint,
    TensorDigests,
    boto3_client,
    kserve_download,
    local_tensor_digests,
    require_s3_clients,
    run_aws,
    runai_stream,
    start_shim_s3_api,
    write_safetensors,
)
from tests.support.servers import S3Server, s3_client
from tests.support.shim_process import ShimProcess, s3_bucket_config

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

pytestmark = pytest.mark.slow

require_s3_clients()

BUCKET = "s3api-clients"
MiB = 1 << 20
# What a download may cost the origin besides object bodies: HeadBucket and listing answers.
LISTING_ALLOWANCE = 32 * 1024
CREDENTIALS = pytest.mark.parametrize(
    "credentials", [None, DUMMY_CREDENTIALS], ids=["unsigned", "dummy-credentials"]
)


class Shim:
    """shim with its S3 API in front of the store, and the relay counting what the store sent."""

    def __init__(self, process: ShimProcess, url: str, relay: Relay) -> None:
        self.process, self.url, self.relay = process, url, relay

    def endpoint(self, credentials: tuple[str, str] | None = None) -> Endpoint:
        return Endpoint(self.url, credentials)

    def cache_misses(self) -> float:
        return self.process.metrics().get("shim_cache_misses_total", 0.0)


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory, s3rver: S3Server) -> Iterator[Shim]:
    s3_client(s3rver).create_bucket(Bucket=BUCKET)
    with Relay(s3rver.host, s3rver.port) as relay:
        process, url = start_shim_s3_api(
            tmp_path_factory.mktemp("shim"),
            {"buckets": [s3_bucket_config(BUCKET, relay.endpoint)]},
        )
        with process:
            yield Shim(process, url, relay)


def upload(s3: S3Client, files: dict[str, bytes]) -> None:
    """Store each key's bytes in one part (its ETag an MD5, which shim verifies bodies against)."""
    for key, body in files.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by its relative path, with its bytes."""
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def under(files: dict[str, bytes], prefix: str) -> dict[str, bytes]:
    return {key.removeprefix(prefix): body for key, body in files.items() if key.startswith(prefix)}


# --- KServe's storage initializer ----------------------------------------------------------


def test_kserve_downloads_a_model_directory_unsigned_and_again_from_the_cache(
    shim: Shim, s3: S3Client, tmp_path: Path
) -> None:
    files = {
        "kserve/model/config.json": b'{"model_type": "resnet", "num_labels": 1000}\n',
        "kserve/model/1/model.pt": os.urandom(3 * MiB),
        # Over boto3's 8 MiB threshold: concurrent ranged GETs of a cold object.
        "kserve/model/1/variables/variables.data-00000-of-00001": os.urandom(12 * MiB + 5),
        "kserve/model/tokenizer/vocab.txt": os.urandom(200 * 1024),
        "kserve/other/not-this-model.bin": os.urandom(MiB),
    }
    upload(s3, files)
    model = under(files, "kserve/model/")
    model_bytes = sum(map(len, model.values()))
    uri = f"s3://{BUCKET}/kserve/model"

    shim.relay.reset_counters()
    kserve_download(shim.endpoint(), uri, tmp_path / "first")
    assert tree(tmp_path / "first") == model
    first_cost = shim.relay.bytes_down
    assert model_bytes <= first_cost <= 1.05 * model_bytes + LISTING_ALLOWANCE

    misses = shim.cache_misses()
    shim.relay.reset_counters()
    kserve_download(shim.endpoint(), uri, tmp_path / "second")
    assert tree(tmp_path / "second") == model
    # From the cache: no object fetched, the origin answering listings at most.
    assert shim.cache_misses() == misses
    assert shim.relay.bytes_down <= LISTING_ALLOWANCE


def test_kserve_downloads_with_dummy_credentials(shim: Shim, s3: S3Client, tmp_path: Path) -> None:
    files = {
        "kserve-dummy/model/model.onnx": os.urandom(2 * MiB),
        "kserve-dummy/model/labels/names.txt": b"cat\ndog\n",
    }
    upload(s3, files)
    kserve_download(
        shim.endpoint(DUMMY_CREDENTIALS), f"s3://{BUCKET}/kserve-dummy/model", tmp_path / "m"
    )
    assert tree(tmp_path / "m") == under(files, "kserve-dummy/model/")


# --- the Run:ai model streamer ---------------------------------------------------------------


# A model directory's files besides its weights, which vLLM pulls to a local directory.
MODEL_FILES = {
    "config.json": b'{"architectures": ["LlamaForCausalLM"], "hidden_size": 1024}\n',
    "tokenizer/tokenizer.json": b'{"version": "1.0", "model": {"type": "BPE"}}\n',
}


def stream_through_shim(
    shim: Shim,
    s3: S3Client,
    tmp_path: Path,
    shard_sizes: list[int],
    credentials: tuple[str, str] | None,
) -> tuple[str, TensorDigests]:
    """Safetensors shards of these sizes and a model's other files under a new prefix, loaded
    cold through shim by the Run:ai streamer: it lists the shards, pulls the other files
    byte-identical, streams the tensors of a local load, and the origin sends about one copy.
    Returns the model's URI and its tensors."""
    prefix = f"runai/{'-'.join(map(str, shard_sizes))}/"
    shards = [
        tmp_path / f"model-{n:05d}-of-{len(shard_sizes):05d}.safetensors"
        for n in range(1, len(shard_sizes) + 1)
    ]
    expected: TensorDigests = {}
    for n, (shard, size) in enumerate(zip(shards, shard_sizes, strict=True)):
        write_safetensors(shard, size, seed=n, names=f"model.layers.{n}")
        whole = TransferConfig(multipart_threshold=1 << 40)
        s3.upload_file(str(shard), BUCKET, prefix + shard.name, Config=whole)
        expected |= local_tensor_digests(shard)
        shard.unlink()
    upload(s3, {prefix + name: body for name, body in MODEL_FILES.items()})
    model = f"s3://{BUCKET}/{prefix}"

    shim.relay.reset_counters()
    streamed = runai_stream(shim.endpoint(credentials), model, tmp_path / "pulled")
    assert streamed.files == [model + shard.name for shard in shards]
    assert streamed.tensors == expected
    assert tree(tmp_path / "pulled") == {**MODEL_FILES, ".runai_complete": b""}
    weights = sum(
        s3.head_object(Bucket=BUCKET, Key=prefix + shard.name)["ContentLength"] for shard in shards
    )
    assert weights <= shim.relay.bytes_down <= 1.05 * weights
    return model, expected


def test_runai_streamer_loads_sharded_safetensors_with_dummy_credentials_then_from_the_cache(
    shim: Shim, s3: S3Client, tmp_path: Path
) -> None:
    model, expected = stream_through_shim(
        shim, s3, tmp_path, [16 * MiB, 8 * MiB], DUMMY_CREDENTIALS
    )
    misses = shim.cache_misses()
    shim.relay.reset_counters()
    again = runai_stream(shim.endpoint(DUMMY_CREDENTIALS), model, tmp_path / "again")
    assert again.tensors == expected
    # From the cache: the origin answered the listings alone.
    assert shim.cache_misses() == misses
    assert shim.relay.bytes_down <= LISTING_ALLOWANCE


def test_runai_streamer_streams_512_mb_of_safetensors_unsigned(
    shim: Shim, s3: S3Client, tmp_path: Path
) -> None:
    stream_through_shim(shim, s3, tmp_path, [512 * MiB], None)


# --- boto3 and the AWS CLI -------------------------------------------------------------------


@CREDENTIALS
def test_boto3_reads_objects_ranges_and_prefixes(
    shim: Shim, s3: S3Client, tmp_path: Path, credentials: tuple[str, str] | None
) -> None:
    prefix = f"boto3-{'dummy' if credentials else 'unsigned'}/"
    files = {
        f"{prefix}big.bin": os.urandom(10 * MiB + 3),
        f"{prefix}a/small.txt": b"small\n",
        f"{prefix}a/b/c.bin": os.urandom(100_000),
    }
    upload(s3, files)
    client = boto3_client(shim.endpoint(credentials))

    big = files[f"{prefix}big.bin"]
    assert client.head_object(Bucket=BUCKET, Key=f"{prefix}big.bin")["ContentLength"] == len(big)
    part = client.get_object(Bucket=BUCKET, Key=f"{prefix}big.bin", Range="bytes=1000-1999")
    assert part["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert part["Body"].read() == big[1000:2000]
    # Multipart download: concurrent ranged GETs of 1 MiB.
    ranged = TransferConfig(multipart_threshold=MiB, multipart_chunksize=MiB, max_concurrency=8)
    client.download_file(BUCKET, f"{prefix}big.bin", str(tmp_path / "big.bin"), Config=ranged)
    assert (tmp_path / "big.bin").read_bytes() == big

    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    keys = [obj["Key"] for obj in listed["Contents"]]
    assert sorted(keys) == sorted(files)
    # Page by page (ListObjects: s3rver answers a truncated ListObjectsV2 with a 500).
    pages = client.get_paginator("list_objects").paginate(
        Bucket=BUCKET, Prefix=prefix, PaginationConfig={"PageSize": 2}
    )
    assert [obj["Key"] for page in pages for obj in page["Contents"]] == keys
    folders = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix, Delimiter="/")
    assert [p["Prefix"] for p in folders["CommonPrefixes"]] == [f"{prefix}a/"]
    assert [obj["Key"] for obj in folders["Contents"]] == [f"{prefix}big.bin"]
    for key in keys:
        assert client.get_object(Bucket=BUCKET, Key=key)["Body"].read() == files[key]


@CREDENTIALS
def test_aws_cli_copies_and_syncs_objects_and_prefixes(
    shim: Shim, s3: S3Client, tmp_path: Path, credentials: tuple[str, str] | None
) -> None:
    prefix = f"cli-{'dummy' if credentials else 'unsigned'}/"
    files = {
        f"{prefix}weights.bin": os.urandom(9 * MiB),
        f"{prefix}config.json": b'{"hidden_size": 64}\n',
        f"{prefix}nested/deeper/tokenizer.json": os.urandom(50_000),
    }
    upload(s3, files)
    endpoint = shim.endpoint(credentials)
    quiet = "--only-show-errors"

    source = f"s3://{BUCKET}/{prefix}"
    run_aws(endpoint, ["s3", "cp", quiet, f"{source}weights.bin", str(tmp_path / "w.bin")])
    assert (tmp_path / "w.bin").read_bytes() == files[f"{prefix}weights.bin"]
    run_aws(endpoint, ["s3", "cp", quiet, "--recursive", source, str(tmp_path / "cp")])
    assert tree(tmp_path / "cp") == under(files, prefix)
    run_aws(endpoint, ["s3", "sync", quiet, source, str(tmp_path / "sync")])
    assert tree(tmp_path / "sync") == under(files, prefix)
    # Sizes and times in the listing agree with what was downloaded: nothing left to sync.
    again = run_aws(endpoint, ["s3", "sync", source, str(tmp_path / "sync")])
    assert again.stdout.strip() == ""
    listed = run_aws(endpoint, ["s3", "ls", "--recursive", source]).stdout
    assert sorted(line.split()[-1] for line in listed.splitlines()) == sorted(files)


# --- writes ------------------------------------------------------------------------------------


@CREDENTIALS
def test_writes_are_refused_with_access_denied_and_never_reach_the_store(
    shim: Shim, s3: S3Client, tmp_path: Path, credentials: tuple[str, str] | None
) -> None:
    prefix = f"writes-{'dummy' if credentials else 'unsigned'}/"
    original = os.urandom(1000)
    upload(s3, {f"{prefix}kept.bin": original})
    endpoint = shim.endpoint(credentials)
    client = boto3_client(endpoint)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(20 * MiB))  # over the AWS CLI's 8 MiB: a multipart upload

    shim.relay.reset_counters()
    attempts: dict[str, Callable[[], object]] = {
        "PutObject": lambda: client.put_object(Bucket=BUCKET, Key=f"{prefix}new.bin", Body=b"x"),
        "PutObject over": lambda: client.put_object(
            Bucket=BUCKET, Key=f"{prefix}kept.bin", Body=b"overwritten"
        ),
        "DeleteObject": lambda: client.delete_object(Bucket=BUCKET, Key=f"{prefix}kept.bin"),
        "DeleteObjects": lambda: client.delete_objects(
            Bucket=BUCKET, Delete={"Objects": [{"Key": f"{prefix}kept.bin"}]}
        ),
        "CreateMultipartUpload": lambda: client.create_multipart_upload(
            Bucket=BUCKET, Key=f"{prefix}multi.bin"
        ),
        "UploadPart": lambda: client.upload_part(
            Bucket=BUCKET, Key=f"{prefix}multi.bin", UploadId="x", PartNumber=1, Body=b"x"
        ),
        "CopyObject": lambda: client.copy_object(
            Bucket=BUCKET, Key=f"{prefix}copy.bin", CopySource=f"{BUCKET}/{prefix}kept.bin"
        ),
    }
    for name, attempt in attempts.items():
        with pytest.raises(ClientError) as refused:
            attempt()
        assert refused.value.response["Error"]["Code"] == "AccessDenied", name
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403, name

    for args in (
        ["s3", "cp", str(big), f"s3://{BUCKET}/{prefix}big.bin"],
        ["s3", "cp", str(tmp_path / "big.bin"), f"s3://{BUCKET}/{prefix}kept.bin"],
        ["s3", "rm", f"s3://{BUCKET}/{prefix}kept.bin"],
    ):
        done = run_aws(endpoint, args, check=False)
        assert done.returncode != 0, args
        assert "AccessDenied" in done.stderr, (args, done.stderr)

    # The refusal is S3's XML, to a plain HTTP client too.
    request = urllib.request.Request(
        f"{shim.url}/{BUCKET}/{prefix}raw.bin", data=b"x", method="PUT"
    )
    with pytest.raises(urllib.error.HTTPError) as raw:
        direct_opener.open(request, timeout=10)
    assert raw.value.code == 403
    assert raw.value.headers.get_content_type() == "application/xml"
    assert b"<Code>AccessDenied</Code>" in raw.value.read()

    # Not a byte went to the store, which holds what it held.
    assert shim.relay.bytes_up == 0
    assert shim.relay.connections == 0
    stored = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    assert [obj["Key"] for obj in stored["Contents"]] == [f"{prefix}kept.bin"]
    assert s3.get_object(Bucket=BUCKET, Key=f"{prefix}kept.bin")["Body"].read() == original
