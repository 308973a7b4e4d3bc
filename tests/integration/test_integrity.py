"""End-to-end integrity through the real shim: one byte flipped in transit fails every client's
transfer, for every store and every checksum kind, and nothing is kept.

Each store's real origin (s3rver for S3 and OBS, azurite, the GCS and OSS gateways) sits behind
the relay, which flips one body byte on the way. Those servers offer the checksums they offer
(an MD5 in every case); the kinds none of them sends (S3's x-amz-checksum-*, a GCS object with
a CRC32C only, an OSS object whose ETag is no MD5) come from the relay answering with the
headers a real store sends and a corrupted body: a relay of its own in front of the store,
configured as another bucket, which answers every request itself (so that no connection shim
keeps alive from an earlier test reaches the real server instead).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from shim.cache.integrity import Kind, crc
from tests.support.dragonfly import require_dragonfly, start_dfdaemon, start_scheduler
from tests.support.http import Reply, via_proxy
from tests.support.relay import Relay, raw_response
from tests.support.servers import S3Server, put_object, s3_client
from tests.support.shim_process import ShimProcess, s3_bucket_config, start_shim
from tests.support.stores import BUCKET, ORIGINS, Origin
from tests.support.torchserve import (
    build_echo_archive,
    echo_reply,
    java_tool_options_from_shim_env,
    require_torchserve,
    start_torchserve,
)

pytestmark = pytest.mark.slow

SIZE = 4 << 20
# Well inside the body of any response: its headers are a few hundred bytes.
FLIP_AT = SIZE // 2
READERS = 3


# The stores whose headers the answering relays act out.
ANSWERING = ("s3", "gcs", "oss")


@dataclass
class World:
    origins: dict[str, Origin]
    answering: dict[str, Relay]  # by provider: a relay that answers every request itself
    shim: ShimProcess

    def answered_url(self, provider: str, key: str) -> str:
        return f"{self.answering[provider].endpoint}{self.origins[provider].prefix}{key}"


@contextlib.contextmanager
def s3_origin(s3rver: S3Server) -> Iterator[Origin]:
    """The S3 provider on the session's strict s3rver, behind a relay of its own."""
    client = s3_client(s3rver)
    with Relay(s3rver.host, s3rver.port) as relay:
        yield Origin(
            provider="s3",
            relay=relay,
            prefix=f"/{BUCKET}-s3/",
            signature_params=("X-Amz-Signature",),
            put=lambda key, body: put_object(client, f"{BUCKET}-s3", key, body),
            buckets=({**s3_bucket_config(f"{BUCKET}-s3", relay.endpoint), "alias": "s3"},),
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, s3rver: S3Server) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("integrity")
    with contextlib.ExitStack() as stack:
        origins = {name: stack.enter_context(start(tmp / name)) for name, start in ORIGINS.items()}
        origins["s3"] = stack.enter_context(s3_origin(s3rver))
        answering = {
            name: stack.enter_context(Relay(s3rver.host, s3rver.port)) for name in ANSWERING
        }
        for relay in answering.values():
            relay.answer = lambda _head: raw_response(503, {})
        buckets = [origin.buckets[0] for origin in origins.values()]
        buckets += [
            {**origins[name].buckets[0], "endpoint": relay.endpoint, "alias": f"{name}-answered"}
            for name, relay in answering.items()
        ]
        shim = stack.enter_context(start_shim(tmp / "shim", {"buckets": buckets}))
        yield World(origins, answering, shim)


def download(shim: ShimProcess, url: str, headers: dict[str, str] | None = None) -> Reply | str:
    """The reply, or how the transfer failed."""
    try:
        return via_proxy(shim.proxy_port, url, headers=headers)
    except (http.client.IncompleteRead, ConnectionError) as error:
        return type(error).__name__


def files(shim: ShimProcess) -> list[Path]:
    return [
        path for path in shim.cache_dir.rglob("*") if path.is_file() and path.parent.name != "conf"
    ]


def integrity(shim: ShimProcess, result: str, kind: str) -> float:
    return shim.metrics().get(f'shim_integrity_total{{kind="{kind}",result="{result}"}}', 0.0)


def corrupt_downloads_fail_then_a_clean_one_is_kept(
    world: World, url: str, kind: str, body: bytes, *, clean: Callable[[], None]
) -> None:
    """Every concurrent reader of a corrupted object (its byte FLIP_AT flipped) gets a failed
    transfer; nothing is kept; once the corruption is gone the object downloads and is kept. A
    range reader beside them gets its range as it arrives (ranges never wait for the whole
    object's check, see shim.cache.fill): one before the flipped byte, the object's bytes."""
    shim = world.shim
    before = integrity(shim, "mismatch", kind)
    kept_before = set(files(shim))
    requests: list[dict[str, str] | None] = [None] * READERS + [{"Range": "bytes=0-1023"}]
    with ThreadPoolExecutor(len(requests)) as pool:
        *results, ranged = pool.map(lambda headers: download(shim, url, headers), requests)
    for result in results:
        assert isinstance(result, str), f"a client got a whole corrupted object: {result}"
    assert isinstance(ranged, Reply) and (ranged.status, ranged.body) == (206, body[:1024])
    # One failed check per fetch: the readers share one, but one that arrives after it ended
    # (a loaded machine) starts another, which fails the same way.
    assert integrity(shim, "mismatch", kind) >= before + 1
    # Nothing new kept, nothing left in tmp/, once every fill ended: a fill belongs to no client,
    # and one that the range reader started after the first had failed (a loaded machine) may
    # still be running when its 1 KiB is sent; it fails the same way.
    deadline = time.monotonic() + 30
    while set(files(shim)) != kept_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert set(files(shim)) == kept_before
    clean()
    first, again = download(shim, url), download(shim, url)
    assert isinstance(first, Reply) and isinstance(again, Reply)
    assert (first.status, first.headers["X-Shim-Cache"]) == (200, "MISS")
    assert (again.status, again.headers["X-Shim-Cache"], again.body) == (200, "HIT", first.body)
    assert integrity(shim, "verified", kind) >= 1


# What each store's own server offers for a plain upload: its strongest checksum.
NATIVE_KINDS = {"s3": "md5", "obs": "md5", "azure": "md5", "gcs": "md5", "oss": "md5"}


@pytest.mark.parametrize("provider", sorted(NATIVE_KINDS))
def test_a_flipped_byte_from_the_store_fails_every_client_and_keeps_nothing(
    world: World, provider: str
) -> None:
    origin = world.origins[provider]
    body = os.urandom(SIZE)
    origin.put("flipped.bin", body)
    origin.relay.corrupt_at_byte = FLIP_AT
    try:
        corrupt_downloads_fail_then_a_clean_one_is_kept(
            world,
            origin.url("flipped.bin"),
            NATIVE_KINDS[provider],
            body,
            clean=lambda: setattr(origin.relay, "corrupt_at_byte", None),
        )
    finally:
        origin.relay.corrupt_at_byte = None
    assert download(world.shim, origin.url("flipped.bin")).body == body  # type: ignore[union-attr]


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def crc_bytes(kind: Kind, body: bytes) -> bytes:
    return crc(kind, body).to_bytes(8 if kind in (Kind.CRC64NVME, Kind.CRC64ECMA) else 4, "big")


# The headers a store sends for an object whose only (or strongest) checksum is of one kind.
ANSWERED: dict[str, tuple[str, Callable[[bytes], dict[str, str]]]] = {
    "s3 sha256": ("s3", lambda b: {"x-amz-checksum-sha256": b64(hashlib.sha256(b).digest())}),
    "s3 sha1": ("s3", lambda b: {"x-amz-checksum-sha1": b64(hashlib.sha1(b).digest())}),
    "s3 crc64nvme": (
        "s3",
        lambda b: {
            "x-amz-checksum-crc64nvme": b64(crc_bytes(Kind.CRC64NVME, b)),
            "x-amz-checksum-type": "FULL_OBJECT",
            "ETag": '"0123456789abcdef0123456789abcdef-2"',
        },
    ),
    "s3 crc32c": ("s3", lambda b: {"x-amz-checksum-crc32c": b64(crc_bytes(Kind.CRC32C, b))}),
    "s3 crc32": ("s3", lambda b: {"x-amz-checksum-crc32": b64(crc_bytes(Kind.CRC32, b))}),
    "gcs crc32c": (
        "gcs",
        lambda b: {
            "x-goog-hash": f"crc32c={b64(crc_bytes(Kind.CRC32C, b))}",
            "x-goog-component-count": "2",
            "ETag": '"CJCs7t6s/IkDEAE="',
        },
    ),
    "oss crc64ecma": (
        "oss",
        lambda b: {
            "x-oss-hash-crc64ecma": str(crc(Kind.CRC64ECMA, b)),
            "x-oss-object-type": "Multipart",
            "ETag": '"0123456789ABCDEF0123456789ABCDEF-3"',
        },
    ),
}


@pytest.mark.parametrize("case", sorted(ANSWERED))
def test_a_flipped_byte_fails_every_checksum_kind(world: World, case: str) -> None:
    provider, headers_for = ANSWERED[case]
    relay = world.answering[provider]
    body = os.urandom(SIZE)
    headers = headers_for(body)
    kind = case.split()[1]
    flipped = bytearray(body)
    flipped[FLIP_AT] ^= 0xFF
    served = {"body": bytes(flipped)}
    relay.answer = lambda _head: raw_response(200, headers, served["body"])
    corrupt_downloads_fail_then_a_clean_one_is_kept(
        world,
        world.answered_url(provider, f"answered-{kind}.bin"),
        kind,
        body,
        clean=lambda: served.update(body=body),
    )


def test_a_multipart_etag_is_served_unchecked_and_said_once(world: World) -> None:
    body = os.urandom(SIZE)
    headers = {"ETag": '"0123456789abcdef0123456789abcdef-4"'}
    world.answering["s3"].answer = lambda _head: raw_response(200, headers, body)
    before = integrity(world.shim, "unchecked", "multipart_etag")
    reply = download(world.shim, world.answered_url("s3", "multipart.bin"))
    assert isinstance(reply, Reply) and reply.body == body
    assert integrity(world.shim, "unchecked", "multipart_etag") == before + 1
    said = [
        line for line in world.shim.output().splitlines() if "multipart.bin is not verified" in line
    ]
    assert len(said) == 1 and "multipart ETag" in said[0]


@pytest.mark.torchserve
def test_torchserve_fails_to_register_a_corrupted_archive_cleanly_and_stays_healthy(
    world: World, tmp_path: Path
) -> None:
    require_torchserve()
    archive = build_echo_archive(tmp_path, name="echo_integrity").read_bytes()
    flipped = bytearray(archive)
    flipped[len(archive) // 2] ^= 0xFF
    etag = {"ETag": f'"{hashlib.md5(archive).hexdigest()}"'}
    served = {"body": bytes(flipped)}
    world.answering["s3"].answer = lambda _head: raw_response(200, etag, served["body"])
    url = world.answered_url("s3", "ts/echo_integrity.mar")
    options = java_tool_options_from_shim_env(world.shim.proxy_port)
    with start_torchserve(tmp_path / "ts", java_tool_options=options) as torchserve:
        status, text = torchserve.register(url)
        assert status >= 400, text
        assert torchserve.ping() == 200
        # TorchServe may leave what it received: never the whole archive (the last byte waits
        # for the check that failed).
        left = torchserve.model_store / "echo_integrity.mar"
        assert not left.exists() or len(left.read_bytes()) < len(archive)
        assert list((world.shim.cache_dir / "tmp").iterdir()) == []
        # TorchServe refuses a URL whose file name it kept ("Model file already exists"): the
        # clean archive comes from another name.
        served["body"] = archive
        status, text = torchserve.register(url.replace(".mar", "-clean.mar"))
        assert status == 200, text
        assert torchserve.scale("echo_integrity")[0] == 200
        assert torchserve.predict("echo_integrity", b"intact") == (200, echo_reply(b"intact"))


@pytest.mark.dragonfly
def test_through_dragonfly_a_corrupt_peer_delivers_no_corrupt_object(
    s3rver: S3Server, tmp_path: Path
) -> None:
    """Node A's dfdaemon fetches a corrupted body from the origin and keeps it as the task;
    node B's dfdaemon gets that task's pieces from A, its headers (the MD5 ETag) from its own
    probe of the clean origin. Neither shim lets a client complete the corrupted object, nor
    does node A's when its dfdaemon hands it the corrupted task file itself (``link_dir``)."""
    require_dragonfly()
    bucket = f"{BUCKET}-p2p"
    body = os.urandom(9 << 20)  # several 4 MiB pieces
    put_object(s3_client(s3rver), bucket, "peer.bin", body)
    with contextlib.ExitStack() as stack:
        relay = stack.enter_context(Relay(s3rver.host, s3rver.port))
        scheduler = stack.enter_context(start_scheduler(tmp_path / "scheduler"))
        shims = []
        for node in ("a", "b"):
            dfdaemon = stack.enter_context(
                start_dfdaemon(
                    tmp_path / f"df{node}", name=node, scheduler=scheduler, proxy_rules=[]
                )
            )
            route = {"url": dfdaemon.proxy_url, "fallback": False}
            if node == "a":
                route["link_dir"] = str(tmp_path / "links-a")
            config = {"dfdaemon": route, "buckets": [s3_bucket_config(bucket, relay.endpoint)]}
            shims.append(stack.enter_context(start_shim(tmp_path / f"shim-{node}", config)))
        url = f"{relay.endpoint}/{bucket}/peer.bin"
        relay.corrupt_at_byte = FLIP_AT
        first = download(shims[0], url)
        # A's dfdaemon sent every byte (only the last was held back from the client): it has
        # the whole, corrupted task. B must take it from A: the origin only answers B's probe.
        relay.corrupt_at_byte = None
        relay.reset_counters()
        second = download(shims[1], url)
        assert relay.bytes_down < 64 * 1024
        for shim, outcome in zip(shims, (first, second), strict=True):
            assert isinstance(outcome, str), "a client completed a corrupted object"
            assert integrity(shim, "mismatch", "md5") == 1
        local = download(shims[0], url)
        assert isinstance(local, str), "a client completed a corrupted object"
        assert integrity(shims[0], "mismatch", "md5") == 2
        linked = 'shim_dfdaemon_requests_total{result="linked"}'
        assert shims[0].metrics()[linked] == 1
