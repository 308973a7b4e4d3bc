"""The S3 API listener against real stores (strict s3rver, azurite, the verifying GCS and OSS
gateways) with boto3, the SDK the model servers' downloaders use: anonymous and with dummy
credentials, which shim drops."""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, urlsplit
from xml.etree import ElementTree

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.support.azurite import ACCOUNT, ACCOUNT_KEY, AzuriteServer, put_blob, start_azurite
from tests.support.http import direct
from tests.support.keys import AWKWARD_KEYS
from tests.support.procs import free_port
from tests.support.relay import Relay
from tests.support.servers import S3Server, put_object, s3_client
from tests.support.shim_process import ShimProcess, s3_bucket_config, start_shim
from tests.support.stores import ORIGINS, Origin

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytestmark = pytest.mark.slow

BUCKET = "s3api-origin"  # the store's name
ALIAS = "models"  # the name clients use
CONTAINER = "s3api-container"
DOMAIN = "s3.shim.test"
# Stores whose buckets the S3 API reads but does not list. Their gateways refuse an unsigned or
# tampered request (test_proxy_gcs.py, test_proxy_oss.py): only shim's own signature reads.
READ_ONLY_PROVIDERS = ("gcs", "oss")


@pytest.fixture(scope="module")
def relay(s3rver: S3Server) -> Iterator[Relay]:
    """In front of s3rver: what reaches the store, and how many bytes come back."""
    relay = Relay(s3rver.host, s3rver.port)
    relay.start()
    yield relay
    relay.stop()


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteServer]:
    with start_azurite(tmp_path_factory.mktemp("azurite")) as server:
        yield server


@pytest.fixture(scope="module")
def shim(
    tmp_path_factory: pytest.TempPathFactory, s3rver: S3Server, relay: Relay, azurite: AzuriteServer
) -> Iterator[ShimProcess]:
    s3_client(s3rver).create_bucket(Bucket=BUCKET)
    put_blob(azurite, CONTAINER, "seed", b"seed")
    config = {
        "s3_api": {"listen": f"127.0.0.1:{free_port()}", "domain": DOMAIN},
        "reverse": f"127.0.0.1:{free_port()}",
        "buckets": [
            {**s3_bucket_config(BUCKET, relay.endpoint), "alias": ALIAS},
            {
                "provider": "azure",
                "account": ACCOUNT,
                "container": CONTAINER,
                "endpoint": azurite.endpoint,
                "credentials": {"source": "static", "account_key": ACCOUNT_KEY},
            },
        ],
    }
    with start_shim(tmp_path_factory.mktemp("shim"), config) as process:
        yield process


def endpoint(shim: ShimProcess, name: str = "s3_api") -> str:
    import yaml

    config = yaml.safe_load((shim.workdir / "shim.yaml").read_text())
    listen = config[name]["listen"] if name == "s3_api" else config[name]
    return f"http://{listen}"


def client(shim: ShimProcess, *, anonymous: bool = True) -> S3Client:
    """boto3 pointed at shim: unsigned, or signing with credentials shim has never heard of."""
    config = Config(
        signature_version=UNSIGNED if anonymous else "s3v4",
        retries={"max_attempts": 1},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.client(
        "s3",
        endpoint_url=endpoint(shim),
        region_name="us-east-1",
        aws_access_key_id="AKIADUMMYCLIENTKEY",
        aws_secret_access_key="dummy-secret",
        config=config,
    )


def error_of(call: Any, *args: Any, **kwargs: Any) -> tuple[int, str]:
    with pytest.raises(ClientError) as caught:
        call(*args, **kwargs)
    response = caught.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"]


def error_kind_of(call: Any, *args: Any, **kwargs: Any) -> tuple[int, str]:
    """The status of a failed call and its kind as shim told it (X-Shim-Error)."""
    with pytest.raises(ClientError) as caught:
        call(*args, **kwargs)
    metadata = caught.value.response["ResponseMetadata"]
    return metadata["HTTPStatusCode"], metadata["HTTPHeaders"]["x-shim-error"]


def cache_state(response: Any) -> str:
    return str(response["ResponseMetadata"]["HTTPHeaders"]["x-shim-cache"])


@pytest.mark.parametrize("anonymous", [True, False], ids=["unsigned", "dummy-credentials"])
def test_get_head_range_and_conditions(
    shim: ShimProcess, s3rver: S3Server, anonymous: bool
) -> None:
    s3 = client(shim, anonymous=anonymous)
    key = f"read/{anonymous}/model.bin"
    body = os.urandom(300_000)
    put_object(s3_client(s3rver), BUCKET, key, body)
    # The strict store refuses any signature but shim's own (the client's key is unknown).
    got = s3.get_object(Bucket=ALIAS, Key=key)
    assert (got["Body"].read(), cache_state(got)) == (body, "MISS")
    head = s3.head_object(Bucket=ALIAS, Key=key)
    assert head["ContentLength"] == len(body)
    etag = head["ETag"]
    ranged = s3.get_object(Bucket=ALIAS, Key=key, Range="bytes=1000-1999")
    assert ranged["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert ranged["ContentRange"] == f"bytes 1000-1999/{len(body)}"
    assert (ranged["Body"].read(), cache_state(ranged)) == (body[1000:2000], "HIT")
    assert error_of(s3.get_object, Bucket=ALIAS, Key=key, IfNoneMatch=etag)[0] == 304
    assert error_of(s3.get_object, Bucket=ALIAS, Key=key, IfMatch='"0000"') == (
        412,
        "PreconditionFailed",
    )
    assert error_of(s3.get_object, Bucket=ALIAS, Key=key, Range="bytes=999999-") == (
        416,
        "InvalidRange",
    )
    # partNumber names another object than the whole one: signed, identified and cached apart
    # (s3rver ignores it and sends the whole object).
    whole_task = got["ResponseMetadata"]["HTTPHeaders"]["x-shim-task-id"]
    part = s3.get_object(Bucket=ALIAS, Key=key, PartNumber=1)
    assert part["ResponseMetadata"]["HTTPHeaders"]["x-shim-task-id"] != whole_task
    assert error_of(s3.get_object, Bucket=ALIAS, Key=f"{key}.absent") == (404, "NoSuchKey")
    # The origin's answer, to a HEAD (no body) as to a GET.
    for read in (s3.get_object, s3.head_object):
        assert error_kind_of(read, Bucket=ALIAS, Key=f"{key}.absent") == (404, "origin_status")


def test_awkward_keys_are_exactly_the_keys_fetched(shim: ShimProcess, s3rver: S3Server) -> None:
    s3 = client(shim)
    for key in (*AWKWARD_KEYS, "a%2Fb", "unicode/ß∂ƒ/模型"):
        body = key.encode() * 100
        put_object(s3_client(s3rver), BUCKET, f"awkward/{key}", body)
        assert s3.get_object(Bucket=ALIAS, Key=f"awkward/{key}")["Body"].read() == body
    # A dot segment would be resolved away by a URL parser on the way: refused, never fetched
    # as another key.
    status, body = _raw(shim, f"/{ALIAS}/awkward/x/../plain.mar")
    assert status == 400 and b"<Code>InvalidArgument</Code>" in body


def _raw(
    shim: ShimProcess, target: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    reply = direct(f"{endpoint(shim)}{target}", method=method, headers=headers)
    return reply.status, reply.body


def test_listings_v2_and_v1_paginate_with_prefix_and_delimiter(
    shim: ShimProcess, s3rver: S3Server
) -> None:
    origin = s3_client(s3rver)
    keys = [f"tree/{d}/file-{i}.bin" for d in ("a", "b", "c b") for i in range(4)]
    keys.append("tree/top.txt")
    for key in keys:
        put_object(origin, BUCKET, key, b"x")
    s3 = client(shim)
    # s3rver answers a truncated ListObjectsV2 with a 500, to boto3 directly too: its pages
    # are tested on Azure, which shim translates. ListObjects (v1) pages here.
    listed = s3.list_objects_v2(Bucket=ALIAS, Prefix="tree/")
    assert listed["Name"] == ALIAS
    assert [o["Key"] for o in listed["Contents"]] == sorted(keys)
    pages = list(
        s3.get_paginator("list_objects").paginate(
            Bucket=ALIAS, Prefix="tree/", PaginationConfig={"PageSize": 5}
        )
    )
    assert len(pages) == 3
    assert {page["Name"] for page in pages} == {ALIAS}
    assert [o["Key"] for page in pages for o in page["Contents"]] == sorted(keys)
    top = s3.list_objects_v2(Bucket=ALIAS, Prefix="tree/", Delimiter="/")
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["tree/a/", "tree/b/", "tree/c b/"]
    assert [o["Key"] for o in top["Contents"]] == ["tree/top.txt"]
    v1 = list(
        s3.get_paginator("list_objects").paginate(
            Bucket=ALIAS, Prefix="tree/c b/", PaginationConfig={"PageSize": 3}
        )
    )
    assert [o["Key"] for page in v1 for o in page["Contents"]] == [
        f"tree/c b/file-{i}.bin" for i in range(4)
    ]
    # boto3's resource API (KServe's storage initializer lists so).
    bucket = boto3.resource(
        "s3",
        endpoint_url=endpoint(shim),
        region_name="us-east-1",
        config=Config(signature_version=UNSIGNED),
    ).Bucket(ALIAS)
    assert sorted(o.key for o in bucket.objects.filter(Prefix="tree/b/")) == [
        f"tree/b/file-{i}.bin" for i in range(4)
    ]
    location = s3.get_bucket_location(Bucket=ALIAS)
    assert location["LocationConstraint"] is None  # us-east-1
    assert s3.head_bucket(Bucket=ALIAS)["ResponseMetadata"]["HTTPStatusCode"] == 200


def test_listings_are_logged_and_counted_as_requests_without_the_clients_signature(
    shim: ShimProcess, s3rver: S3Server
) -> None:
    put_object(s3_client(s3rver), BUCKET, "logged/a.bin", b"a")
    requests = shim.metrics().get('shim_requests_total{route="bucket"}', 0)
    s3 = client(shim, anonymous=False)  # its own signature, with a key shim never heard of
    listed = s3.list_objects_v2(Bucket=ALIAS, Prefix="logged/")
    assert [o["Key"] for o in listed["Contents"]] == ["logged/a.bin"]
    presigned = s3.generate_presigned_url(
        "list_objects_v2", Params={"Bucket": ALIAS, "Prefix": "logged/"}
    )
    sent = shim.metrics()['shim_bucket_response_bytes_total{bucket="models"}']
    reply = direct(presigned)
    assert reply.status == 200 and b"<Key>logged/a.bin</Key>" in reply.body
    metrics = shim.metrics()
    assert metrics['shim_requests_total{route="bucket"}'] == requests + 2
    assert metrics['shim_bucket_response_bytes_total{bucket="models"}'] == sent + len(reply.body)
    output = shim.output()
    lines = [line for line in output.splitlines() if "prefix=logged" in line]
    assert len(lines) == 2, output
    assert all(" -> 200 - via - task=- bucket=models bytes=" in line for line in lines), lines
    assert f"bytes={len(reply.body)} " in lines[1]
    assert "X-Amz-Signature=REDACTED" in lines[1]
    signature = parse_qs(urlsplit(presigned).query)["X-Amz-Signature"][0]
    assert signature not in output and "AKIADUMMYCLIENTKEY" not in output


def test_a_small_object_cut_mid_body_is_an_s3_error(
    shim: ShimProcess, s3rver: S3Server, relay: Relay
) -> None:
    body = os.urandom(40_000)  # small: read whole before it is answered
    put_object(s3_client(s3rver), BUCKET, "cut/small.bin", body)
    relay.cut_after_bytes = 20_000  # the origin's answer stops partway
    try:
        reply = direct(f"{endpoint(shim)}/{ALIAS}/cut/small.bin")
    finally:
        relay.cut_after_bytes = None
    assert (reply.status, reply.headers["Content-Type"]) == (502, "application/xml")
    assert reply.headers["X-Shim-Error"] == "origin"  # a failed fetch, not the origin's answer
    error = ElementTree.fromstring(reply.body)
    assert (error.findtext("Code"), error.findtext("Resource")) == (
        "InternalError",
        f"/{ALIAS}/cut/small.bin",
    )
    assert "aborting a response mid-body" in shim.output()  # read whole, and failed there


def test_every_write_is_access_denied_and_never_reaches_the_store(
    shim: ShimProcess, s3rver: S3Server, relay: Relay
) -> None:
    origin = s3_client(s3rver)
    put_object(origin, BUCKET, "writes/kept.bin", b"kept")
    relay.reset_counters()
    for anonymous in (True, False):
        s3 = client(shim, anonymous=anonymous)
        writes: list[tuple[Callable[..., object], dict[str, Any]]] = [
            (s3.put_object, {"Bucket": ALIAS, "Key": "writes/new.bin", "Body": b"x" * 100_000}),
            (s3.delete_object, {"Bucket": ALIAS, "Key": "writes/kept.bin"}),
            (
                s3.delete_objects,
                {"Bucket": ALIAS, "Delete": {"Objects": [{"Key": "writes/kept.bin"}]}},
            ),
            (s3.create_multipart_upload, {"Bucket": ALIAS, "Key": "writes/mp.bin"}),
            (
                s3.copy_object,
                {
                    "Bucket": ALIAS,
                    "Key": "writes/copy.bin",
                    "CopySource": f"{ALIAS}/writes/kept.bin",
                },
            ),
            (s3.create_bucket, {"Bucket": "created-through-shim"}),
            (s3.put_object, {"Bucket": "not-configured", "Key": "k", "Body": b"x"}),
            (s3.get_object, {"Bucket": "not-configured", "Key": "k"}),
            (s3.list_objects_v2, {"Bucket": BUCKET}),  # the store's name is no alias
            (s3.list_buckets, {}),
        ]
        for call, params in writes:
            assert error_of(call, **params) == (403, "AccessDenied"), call
    assert relay.bytes_up == 0  # not a byte of any of them reached the store
    assert origin.get_object(Bucket=BUCKET, Key="writes/kept.bin")["Body"].read() == b"kept"
    status, body = _raw(shim, f"/{ALIAS}/writes/new.bin", method="PUT")
    assert status == 403
    assert b"<Code>AccessDenied</Code>" in body and b"<RequestId>" in body
    # The refusal names no bucket that exists.
    assert ALIAS.encode() not in _raw(shim, "/")[1] and BUCKET.encode() not in _raw(shim, "/")[1]


def test_the_s3_api_and_the_url_route_share_cache_entries(
    shim: ShimProcess, s3rver: S3Server
) -> None:
    body = os.urandom(200_000)
    put_object(s3_client(s3rver), BUCKET, "shared/one.bin", body)
    put_object(s3_client(s3rver), BUCKET, "shared/two.bin", body)
    fetches = shim.metrics()["shim_origin_fetches_total"]
    by_url = direct(f"{endpoint(shim, 'reverse')}/{ALIAS}/shared/one.bin")
    assert (by_url.status, by_url.headers["X-Shim-Cache"]) == (200, "MISS")
    got = client(shim).get_object(Bucket=ALIAS, Key="shared/one.bin")
    assert (got["Body"].read(), cache_state(got)) == (body, "HIT")
    # One identity, so one Dragonfly task too when a dfdaemon fetches it.
    assert (
        got["ResponseMetadata"]["HTTPHeaders"]["x-shim-task-id"] == by_url.headers["X-Shim-Task-Id"]
    )
    got = client(shim).get_object(Bucket=ALIAS, Key="shared/two.bin")
    assert (got["Body"].read(), cache_state(got)) == (body, "MISS")
    by_url = direct(f"{endpoint(shim, 'reverse')}/{ALIAS}/shared/two.bin")
    assert (by_url.body, by_url.headers["X-Shim-Cache"]) == (body, "HIT")
    assert shim.metrics()["shim_origin_fetches_total"] == fetches + 2


def test_virtual_hosted_requests_name_the_bucket_in_host(
    shim: ShimProcess, s3rver: S3Server
) -> None:
    put_object(s3_client(s3rver), BUCKET, "vhost/k v.bin", b"virtual")
    port = endpoint(shim).rsplit(":", 1)[1]
    status, body = _raw(
        shim, f"/{quote('vhost/k v.bin')}", headers={"Host": f"{ALIAS}.{DOMAIN}:{port}"}
    )
    assert (status, body) == (200, b"virtual")
    status, body = _raw(
        shim, "/?list-type=2&prefix=vhost/", headers={"Host": f"{ALIAS}.{DOMAIN}:{port}"}
    )
    assert status == 200 and b"<Key>vhost/k v.bin</Key>" in body
    status, body = _raw(shim, "/k", headers={"Host": f"other.{DOMAIN}:{port}"})
    assert status == 403 and b"AccessDenied" in body
    # A Host in any case names the bucket; the key is fetched exactly as named.
    for key in ("vhost/MiXeD.bin", "vhost/mixed.bin"):
        put_object(s3_client(s3rver), BUCKET, key, key.encode())
    for key in ("vhost/MiXeD.bin", "vhost/mixed.bin"):
        host = f"{ALIAS.upper()}.{DOMAIN.upper()}:{port}"
        assert _raw(shim, f"/{key}", headers={"Host": host}) == (200, key.encode())


def test_concurrent_ranged_readers_of_a_cold_object_cost_one_origin_copy(
    shim: ShimProcess, s3rver: S3Server, relay: Relay
) -> None:
    size, readers = 4 * 1024 * 1024, 8
    body = os.urandom(size)
    put_object(s3_client(s3rver), BUCKET, "streamed/weights.safetensors", body)
    fetches = shim.metrics()["shim_origin_fetches_total"]
    relay.reset_counters()
    relay.rate_limit_bytes_per_s = 8 * 1024 * 1024  # the fill takes ~0.5 s: readers overlap
    part = size // readers
    got: dict[int, bytes] = {}
    start = threading.Barrier(readers)

    def read(index: int) -> None:
        s3 = client(shim)
        start.wait()
        first = index * part
        answer = s3.get_object(
            Bucket=ALIAS,
            Key="streamed/weights.safetensors",
            Range=f"bytes={first}-{first + part - 1}",
        )
        got[index] = answer["Body"].read()

    threads = [threading.Thread(target=read, args=(i,)) for i in range(readers)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        relay.rate_limit_bytes_per_s = None
    assert b"".join(got[i] for i in range(readers)) == body
    # Each byte once; readers far ahead of the fill get requests of their own, and the request
    # cut short where one of them begins had a little more on its way (at most ~rate x 30 ms).
    assert size <= relay.bytes_down <= size + 512 * 1024, relay.bytes_down
    assert shim.metrics()["shim_origin_fetches_total"] == fetches + 1


def test_an_azure_container_reads_and_lists_through_the_s3_api(
    shim: ShimProcess, azurite: AzuriteServer
) -> None:
    names = [f"models/{d}/part-{i}.bin" for d in ("x", "y") for i in range(3)] + ["models/cfg.json"]
    for name in names:
        put_blob(azurite, CONTAINER, name, name.encode())
    s3 = client(shim)
    got = s3.get_object(Bucket=CONTAINER, Key="models/x/part-1.bin")
    assert got["Body"].read() == b"models/x/part-1.bin"
    ranged = s3.get_object(Bucket=CONTAINER, Key="models/cfg.json", Range="bytes=7-9")
    assert ranged["Body"].read() == b"cfg"
    assert error_of(s3.get_object, Bucket=CONTAINER, Key="models/absent") == (404, "NoSuchKey")
    pages = list(
        s3.get_paginator("list_objects_v2").paginate(
            Bucket=CONTAINER, Prefix="models/", PaginationConfig={"PageSize": 2}
        )
    )
    listed = [o for page in pages for o in page.get("Contents", [])]
    assert [o["Key"] for o in listed] == sorted(names)
    assert {o["Size"] for o in listed} == {len(n) for n in names}
    assert all(o["ETag"].startswith('"') for o in listed)
    top = s3.list_objects_v2(Bucket=CONTAINER, Prefix="models/", Delimiter="/")
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["models/x/", "models/y/"]
    assert [o["Key"] for o in top["Contents"]] == ["models/cfg.json"]
    v1 = list(
        s3.get_paginator("list_objects").paginate(
            Bucket=CONTAINER, Prefix="models/y/", PaginationConfig={"PageSize": 2}
        )
    )
    assert [o["Key"] for page in v1 for o in page["Contents"]] == [
        f"models/y/part-{i}.bin" for i in range(3)
    ]
    assert error_of(s3.put_object, Bucket=CONTAINER, Key="models/new", Body=b"x") == (
        403,
        "AccessDenied",
    )


def test_answers_relayed_by_the_cache_server_are_s3_answers_too(
    tmp_path: Path, s3rver: S3Server
) -> None:
    # zero_copy_hits off: every answer is relayed from the loopback cache server through
    # mitmproxy, whose failures must read as S3's too.
    body = os.urandom(150_000)
    put_object(s3_client(s3rver), BUCKET, "relayed/a.bin", body)
    config = {
        "s3_api": {"listen": f"127.0.0.1:{free_port()}"},
        "cache": {"zero_copy_hits": False},
        "buckets": [{**s3_bucket_config(BUCKET, s3rver.endpoint), "alias": ALIAS}],
    }
    with start_shim(tmp_path, config) as relayed:
        s3 = client(relayed)
        got = s3.get_object(Bucket=ALIAS, Key="relayed/a.bin", Range="bytes=10-19")
        assert got["Body"].read() == body[10:20]
        assert error_of(s3.get_object, Bucket=ALIAS, Key="relayed/absent") == (404, "NoSuchKey")
        assert error_of(
            s3.get_object, Bucket=ALIAS, Key="relayed/a.bin", Range="bytes=9999999-"
        ) == (
            416,
            "InvalidRange",
        )
        assert error_kind_of(s3.head_object, Bucket=ALIAS, Key="relayed/absent") == (
            404,
            "origin_status",
        )
        # shim's XML, not the origin's relayed as it was.
        missing = direct(f"{endpoint(relayed)}/{ALIAS}/relayed/absent")
        assert b"<Resource>/models/relayed/absent</Resource>" in missing.body
        assert missing.headers["x-amz-request-id"] in missing.body.decode()
        assert error_of(s3.put_object, Bucket=ALIAS, Key="relayed/new", Body=b"x" * 200_000) == (
            403,
            "AccessDenied",
        )


@pytest.fixture(scope="module")
def gcs_and_oss(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ShimProcess, dict[str, Origin]]]:
    """A shim whose S3 API fronts a GCS and an OSS bucket, each store behind a counting relay."""
    with contextlib.ExitStack() as stack:
        origins = {
            provider: stack.enter_context(ORIGINS[provider](tmp_path_factory.mktemp(provider)))
            for provider in READ_ONLY_PROVIDERS
        }
        config = {
            "s3_api": {"listen": f"127.0.0.1:{free_port()}"},
            "buckets": [origin.buckets[0] for origin in origins.values()],
        }
        yield stack.enter_context(start_shim(tmp_path_factory.mktemp("shim"), config)), origins


@pytest.mark.parametrize("provider", READ_ONLY_PROVIDERS)
def test_a_gcs_or_oss_bucket_reads_through_the_s3_api_but_does_not_list(
    gcs_and_oss: tuple[ShimProcess, dict[str, Origin]], provider: str
) -> None:
    shim, origins = gcs_and_oss
    origin = origins[provider]
    alias = origin.buckets[0]["alias"]
    s3 = client(shim)
    # An S3 key is the object's name, exactly: each name holds its own bytes.
    for key in (*AWKWARD_KEYS, "unicode/ß∂ƒ/模型"):
        body = f"{provider}/{key}".encode() * 1000
        origin.put(f"awkward/{key}", body)
        assert s3.get_object(Bucket=alias, Key=f"awkward/{key}")["Body"].read() == body
    body = os.urandom(300_000)
    origin.put("weights/model v1.bin", body)
    ranged = s3.get_object(Bucket=alias, Key="weights/model v1.bin", Range="bytes=1000-1999")
    assert ranged["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert ranged["ContentRange"] == f"bytes 1000-1999/{len(body)}"
    assert ranged["Body"].read() == body[1000:2000]
    got = s3.get_object(Bucket=alias, Key="weights/model v1.bin")
    assert got["Body"].read() == body
    head = s3.head_object(Bucket=alias, Key="weights/model v1.bin")
    assert head["ContentLength"] == len(body)
    # The store's ETag (both stores': the MD5; OSS's in capitals).
    assert head["ETag"] == got["ETag"]
    assert head["ETag"].strip('"').lower() == hashlib.md5(body).hexdigest()
    assert error_of(s3.get_object, Bucket=alias, Key="weights/absent.bin") == (404, "NoSuchKey")
    assert error_of(s3.head_object, Bucket=alias, Key="weights/absent.bin")[0] == 404
    assert origin.signatures_seen()  # read with shim's signature, which the store checked
    origin.relay.reset_counters()
    assert error_of(s3.list_objects_v2, Bucket=alias, Prefix="weights/") == (
        501,
        "NotImplemented",
    )
    for anonymous in (True, False):
        writer = client(shim, anonymous=anonymous)
        assert error_of(
            writer.put_object, Bucket=alias, Key="weights/new.bin", Body=b"x" * 100_000
        ) == (403, "AccessDenied")
        assert error_of(writer.delete_object, Bucket=alias, Key="weights/model v1.bin") == (
            403,
            "AccessDenied",
        )
    assert origin.relay.bytes_up == 0  # neither the listing nor a write reached the store
    assert error_of(s3.get_object, Bucket=alias, Key="weights/new.bin") == (404, "NoSuchKey")
