"""Real S3 clients read through shim's S3 API with no credentials of the store.

The clients are the unmodified ones model servers use: KServe's storage initializer, the Run:ai
model streamer (its C++ S3 backend), boto3 and the AWS CLI v2, each pointed at shim's S3 API
with unsigned requests or dummy credentials. The store is the strict s3rver (it refuses unsigned
requests) behind a relay that counts what it serves: what the origin paid for each download.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from boto3.s3.transfer import TransferConfig

from tests.support.azurite import ACCOUNT, ACCOUNT_KEY, AzuriteServer, put_blob
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
CONTAINER = "s3api-clients-azure"  # an Azure container, read through the same S3 API
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

    def origin_fetches(self) -> float:
        return self.process.metrics()["shim_origin_fetches_total"]


@pytest.fixture(scope="module")
def shim(
    tmp_path_factory: pytest.TempPathFactory, s3rver: S3Server, azurite: AzuriteServer
) -> Iterator[Shim]:
    s3_client(s3rver).create_bucket(Bucket=BUCKET)
    azure = {
        "provider": "azure",
        "account": ACCOUNT,
        "container": CONTAINER,
        "endpoint": azurite.endpoint,
        "credentials": {"source": "static", "account_key": ACCOUNT_KEY},
    }
    with Relay(s3rver.host, s3rver.port) as relay:
        process, url = start_shim_s3_api(
            tmp_path_factory.mktemp("shim"),
            {"buckets": [s3_bucket_config(BUCKET, relay.endpoint), azure]},
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

    fetches = shim.origin_fetches()
    shim.relay.reset_counters()
    kserve_download(shim.endpoint(), uri, tmp_path / "second")
    assert tree(tmp_path / "second") == model
    # From the cache: no object fetched, the origin answering listings at most.
    assert shim.origin_fetches() == fetches
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
    fetches = shim.origin_fetches()
    shim.relay.reset_counters()
    again = runai_stream(shim.endpoint(DUMMY_CREDENTIALS), model, tmp_path / "again")
    assert again.tensors == expected
    # From the cache: the origin answered the listings alone.
    assert shim.origin_fetches() == fetches
    assert shim.relay.bytes_down <= LISTING_ALLOWANCE


def test_runai_streamer_streams_512_mb_of_safetensors_unsigned(
    shim: Shim, s3: S3Client, tmp_path: Path
) -> None:
    stream_through_shim(shim, s3, tmp_path, [512 * MiB], None)


# --- an Azure container, to S3-only clients ------------------------------------------------


def test_kserve_and_the_runai_streamer_read_an_azure_container_as_s3(
    shim: Shim, azurite: AzuriteServer, tmp_path: Path
) -> None:
    weights = tmp_path / "model.safetensors"
    write_safetensors(weights, 6 * MiB, names="azure.layers")
    blobs = {"llm/model.safetensors": weights.read_bytes()}
    blobs |= {f"llm/{name}": body for name, body in MODEL_FILES.items()}
    for name, body in blobs.items():
        put_blob(azurite, CONTAINER, name, body)

    kserve_download(shim.endpoint(), f"s3://{CONTAINER}/llm", tmp_path / "kserve")
    assert tree(tmp_path / "kserve") == under(blobs, "llm/")
    model = f"s3://{CONTAINER}/llm/"
    streamed = runai_stream(shim.endpoint(), model, tmp_path / "runai")
    assert streamed.files == [f"{model}model.safetensors"]
    assert streamed.tensors == local_tensor_digests(weights)


# --- boto3 and the AWS CLI -------------------------------------------------------------------


@CREDENTIALS
def test_boto3_downloads_objects_and_prefixes_with_its_transfer_manager(
    shim: Shim, s3: S3Client, tmp_path: Path, credentials: tuple[str, str] | None
) -> None:
    # The S3 API's operations one by one: tests/integration/test_s3api.py. Here what
    # downloaders do with boto3: download_file, over its threshold as concurrent ranged GETs.
    prefix = f"boto3-{'dummy' if credentials else 'unsigned'}/"
    files = {
        f"{prefix}big.bin": os.urandom(10 * MiB + 3),
        f"{prefix}a/small.txt": b"small\n",
        f"{prefix}a/b/c.bin": os.urandom(100_000),
    }
    upload(s3, files)
    client = boto3_client(shim.endpoint(credentials))
    ranged = TransferConfig(multipart_threshold=MiB, multipart_chunksize=MiB, max_concurrency=8)

    client.download_file(BUCKET, f"{prefix}big.bin", str(tmp_path / "big.bin"), Config=ranged)
    assert (tmp_path / "big.bin").read_bytes() == files[f"{prefix}big.bin"]
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for obj in page["Contents"]:
            target = tmp_path / "prefix" / obj["Key"].removeprefix(prefix)
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(BUCKET, obj["Key"], str(target), Config=ranged)
    assert tree(tmp_path / "prefix") == under(files, prefix)


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
def test_aws_cli_writes_are_refused_with_access_denied_and_never_reach_the_store(
    shim: Shim, s3: S3Client, tmp_path: Path, credentials: tuple[str, str] | None
) -> None:
    # boto3's writes, one by one: tests/integration/test_s3api.py.
    prefix = f"writes-{'dummy' if credentials else 'unsigned'}/"
    original = os.urandom(1000)
    upload(s3, {f"{prefix}kept.bin": original})
    small, big = tmp_path / "small.bin", tmp_path / "big.bin"
    small.write_bytes(b"new")
    big.write_bytes(os.urandom(20 * MiB))  # over the AWS CLI's 8 MiB: a multipart upload
    target = f"s3://{BUCKET}/{prefix}"

    shim.relay.reset_counters()
    for args in (
        ["s3", "cp", str(small), f"{target}new.bin"],
        ["s3", "cp", str(small), f"{target}kept.bin"],
        ["s3", "cp", str(big), f"{target}big.bin"],
        ["s3", "rm", f"{target}kept.bin"],
        ["s3api", "put-object", "--bucket", BUCKET, "--key", f"{prefix}api.bin"],
        ["s3api", "delete-object", "--bucket", BUCKET, "--key", f"{prefix}kept.bin"],
        ["s3api", "create-multipart-upload", "--bucket", BUCKET, "--key", f"{prefix}mp.bin"],
    ):
        done = run_aws(shim.endpoint(credentials), args, check=False)
        assert done.returncode != 0, args
        assert "(AccessDenied)" in done.stderr, (args, done.stderr)

    # Not a byte went to the store, which holds what it held.
    assert shim.relay.bytes_up == 0
    stored = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    assert [obj["Key"] for obj in stored["Contents"]] == [f"{prefix}kept.bin"]
    assert s3.get_object(Bucket=BUCKET, Key=f"{prefix}kept.bin")["Body"].read() == original
