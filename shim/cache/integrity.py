"""End-to-end integrity: which checksum of the object an origin's response offers, and a
verifier fed the body chunk by chunk. Pure: no I/O.

Each store says it in its own headers (the names never collide, so the headers alone tell
the store): S3 (and OBS, S3-compatible stores) full-object ``x-amz-checksum-*`` (base64)
and the ETag, which is the MD5 of a single-part upload; GCS ``x-goog-hash`` (base64
``crc32c=`` and ``md5=``); Azure ``Content-MD5`` / ``x-ms-blob-content-md5`` (base64);
OSS ``x-oss-hash-crc64ecma`` (decimal) and the ETag, the MD5 of a simple upload. The
strongest one offered is checked: a cryptographic digest before a CRC, since a CRC only
catches accidents, while a peer on the P2P network that wants to pass off other bytes
must also beat the digest.

What cannot be checked (a multipart ETag, a composite checksum, no checksum at all) is an
``Unchecked`` with the reason: reported, never trusted silently, never failed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import anycrc  # type: ignore[import-untyped]
import blake3
from multidict import MultiMapping


class Kind(StrEnum):
    """A checksum algorithm, strongest first."""

    BLAKE3 = "blake3"  # no store's: shim's record of a body it verified (shim.cache.verified)
    SHA256 = "sha256"
    SHA1 = "sha1"
    MD5 = "md5"
    CRC64NVME = "crc64nvme"  # S3's default since 2025 (CRC-64/NVME)
    CRC64ECMA = "crc64ecma"  # OSS (CRC-64/XZ: ECMA-182 polynomial, reflected, all ones)
    CRC32C = "crc32c"  # Castagnoli, RFC 3720 (S3, GCS)
    CRC32 = "crc32"  # ISO-HDLC, zlib's (S3)


STRENGTH = tuple(Kind)


class _Running(Protocol):
    def update(self, chunk: bytes | memoryview, /) -> object: ...

    def digest(self) -> bytes: ...


# anycrc's names for the CRCs (the RevEng catalogue's).
_CRC_MODELS = {
    Kind.CRC64NVME: "CRC64-NVME",
    Kind.CRC64ECMA: "CRC64-XZ",
    Kind.CRC32C: "CRC32-ISCSI",
    Kind.CRC32: "CRC32-ISO-HDLC",
}
_CRC_BYTES = {Kind.CRC64NVME: 8, Kind.CRC64ECMA: 8, Kind.CRC32C: 4, Kind.CRC32: 4}
_DIGESTS: dict[Kind, Callable[[], _Running]] = {
    Kind.BLAKE3: lambda: blake3.blake3(max_threads=1),  # the other core is the transfer's
    Kind.SHA256: hashlib.sha256,
    Kind.SHA1: hashlib.sha1,
    Kind.MD5: lambda: hashlib.md5(usedforsecurity=False),
}

_MD5_ETAG = re.compile(r'(?:W/)?"?([0-9a-fA-F]{32})"?')
_MULTIPART_ETAG = re.compile(r'"?[0-9a-fA-F]{32}-[0-9]+"?')
# x-amz-checksum-<kind>, strongest first; a "-N" suffix marks a checksum of part checksums.
_S3_CHECKSUMS = {
    Kind.SHA256: "x-amz-checksum-sha256",
    Kind.SHA1: "x-amz-checksum-sha1",
    Kind.CRC64NVME: "x-amz-checksum-crc64nvme",
    Kind.CRC32C: "x-amz-checksum-crc32c",
    Kind.CRC32: "x-amz-checksum-crc32",
}
# Server-side encryption whose ETag is not the MD5 of the object's bytes (S3, OBS).
_KMS_ENCRYPTION = {"aws:kms", "aws:kms:dsse", "kms"}


@dataclass(frozen=True, slots=True)
class Checksum:
    """The value a store gives for the whole object, and the header it came in."""

    kind: Kind
    expected: bytes
    header: str


@dataclass(frozen=True, slots=True)
class Verified:
    kind: Kind
    result: str = "verified"


@dataclass(frozen=True, slots=True)
class Mismatch:
    kind: Kind
    header: str
    result: str = "mismatch"

    def __str__(self) -> str:
        return f"the body does not match the origin's {self.kind} ({self.header})"


@dataclass(frozen=True, slots=True)
class Unchecked:
    """Nothing to check the body against: ``kind`` names why in the metric (composite,
    multipart_etag, ...), ``reason`` says it in the log."""

    kind: str
    reason: str
    result: str = "unchecked"


Outcome = Verified | Mismatch | Unchecked


class _Crc:
    """A running CRC with hashlib's shape: the value as big-endian bytes, as stores send it."""

    def __init__(self, kind: Kind) -> None:
        self._model = anycrc.Model(_CRC_MODELS[kind])
        self._size = _CRC_BYTES[kind]
        self._value: int = self._model.calc(b"")

    def update(self, chunk: bytes | memoryview) -> None:
        self._value = self._model.calc(chunk, init=self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(self._size, "big")


class Verifier:
    """Computes ``offer``'s algorithm over the body as it streams (nothing when the offer is
    Unchecked), and with ``fingerprint`` also the body's BLAKE3 (shim's record of a verified
    body, and the digest a cache entry keeps). ``update`` releases the GIL for large chunks
    (hashlib, blake3) or takes microseconds per MiB (the CRCs); feed it every chunk, in order."""

    def __init__(self, offer: Checksum | Unchecked, *, fingerprint: bool = False) -> None:
        self.offer = offer
        self._running: _Running | None = None
        self._fingerprint: _Running | None = None
        if isinstance(offer, Checksum):
            kind = offer.kind
            self._running = _DIGESTS[kind]() if kind in _DIGESTS else _Crc(kind)
        if fingerprint:
            # A BLAKE3 offer's running digest is the fingerprint already.
            blake3_offer = isinstance(offer, Checksum) and offer.kind is Kind.BLAKE3
            self._fingerprint = self._running if blake3_offer else _DIGESTS[Kind.BLAKE3]()

    @property
    def hashing(self) -> bool:
        """Whether ``update`` needs the body."""
        return self._running is not None or self._fingerprint is not None

    def update(self, chunk: bytes | memoryview) -> None:
        if self._running is not None:
            self._running.update(chunk)
        if self._fingerprint is not None and self._fingerprint is not self._running:
            self._fingerprint.update(chunk)

    def fingerprint(self) -> bytes | None:
        """The body's BLAKE3, when asked for."""
        return None if self._fingerprint is None else self._fingerprint.digest()

    def outcome(self) -> Outcome:
        offer = self.offer
        if isinstance(offer, Unchecked):
            return offer
        assert self._running is not None
        if hmac.compare_digest(self._running.digest(), offer.expected):
            return Verified(offer.kind)
        return Mismatch(offer.kind, offer.header)


def crc(kind: Kind, data: bytes) -> int:
    """The CRC ``kind`` of ``data``, as an integer (for tests and the benchmark)."""
    running = _Crc(kind)
    running.update(data)
    return int.from_bytes(running.digest(), "big")


def offered(headers: MultiMapping[str]) -> Checksum | Unchecked:
    """The strongest checksum of the whole object that ``headers`` (a 200's, case-insensitive)
    offer, or why there is none."""
    found: list[Checksum] = []
    reasons: list[Unchecked] = []
    for parse in (_s3_checksums, _goog_hash, _content_md5, _oss_crc64, _md5_etag):
        for item in parse(headers):
            if isinstance(item, Checksum):
                found.append(item)
            else:
                reasons.append(item)
    if found:
        return min(found, key=lambda checksum: STRENGTH.index(checksum.kind))
    return reasons[0] if reasons else Unchecked("none", "the origin sent no checksum")


def _b64(value: str, size: int) -> bytes | None:
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == size else None


_DIGEST_BYTES = {Kind.SHA256: 32, Kind.SHA1: 20, Kind.MD5: 16, **_CRC_BYTES}


def _s3_checksums(headers: MultiMapping[str]) -> list[Checksum | Unchecked]:
    items: list[Checksum | Unchecked] = []
    composite = headers.get("x-amz-checksum-type", "").upper() == "COMPOSITE"
    for kind, name in _S3_CHECKSUMS.items():
        value = headers.get(name)
        if value is None:
            continue
        expected = _b64(value, _DIGEST_BYTES[kind])
        if composite or re.search(r"-[0-9]+$", value):
            items.append(
                Unchecked("composite", f"{name} is a checksum of a multipart upload's parts")
            )
        elif expected is None:
            items.append(Unchecked("malformed", f"{name} is not a base64 {kind}"))
        else:
            items.append(Checksum(kind, expected, name))
    return items


def _goog_hash(headers: MultiMapping[str]) -> list[Checksum | Unchecked]:
    items: list[Checksum | Unchecked] = []
    stored = headers.get("x-goog-stored-content-encoding", "identity").lower()
    served = headers.get("Content-Encoding", "identity").lower()
    # One header per hash, or both in one, comma-separated.
    for value in ",".join(headers.getall("x-goog-hash", [])).split(","):
        name, _, encoded = value.strip().partition("=")
        kind = {"md5": Kind.MD5, "crc32c": Kind.CRC32C}.get(name.lower())
        if kind is None:
            continue
        expected = _b64(encoded, _DIGEST_BYTES[kind])
        if stored != served:
            # Decompressive transcoding: the hashes are of the stored (compressed) bytes.
            return [Unchecked("transcoded", "GCS decompressed the object it hashed as stored")]
        if expected is None:
            items.append(Unchecked("malformed", f"x-goog-hash {name} is not a base64 {kind}"))
        else:
            items.append(Checksum(kind, expected, f"x-goog-hash {name}"))
    return items


def _content_md5(headers: MultiMapping[str]) -> list[Checksum | Unchecked]:
    # Azure sends Content-MD5 for a whole blob, x-ms-blob-content-md5 for a range of one:
    # both are the MD5 of the whole blob.
    items: list[Checksum | Unchecked] = []
    for name in ("Content-MD5", "x-ms-blob-content-md5"):
        value = headers.get(name)
        if value is not None:
            expected = _b64(value, 16)
            if expected is None:
                items.append(Unchecked("malformed", f"{name} is not a base64 MD5"))
            else:
                items.append(Checksum(Kind.MD5, expected, name))
    return items


def _oss_crc64(headers: MultiMapping[str]) -> list[Checksum | Unchecked]:
    value = headers.get("x-oss-hash-crc64ecma")
    if value is None:
        return []
    if not (value.isascii() and value.isdigit() and int(value) < 1 << 64):
        return [Unchecked("malformed", "x-oss-hash-crc64ecma is not a 64-bit decimal")]
    return [Checksum(Kind.CRC64ECMA, int(value).to_bytes(8, "big"), "x-oss-hash-crc64ecma")]


def _md5_etag(headers: MultiMapping[str]) -> list[Checksum | Unchecked]:
    etag = headers.get("ETag")
    if etag is None:
        return []
    if _MULTIPART_ETAG.fullmatch(etag):
        return [Unchecked("multipart_etag", "multipart ETag (an MD5 of its parts' MD5s)")]
    match = _MD5_ETAG.fullmatch(etag)
    if match is None:
        return []  # an opaque ETag (Azure's, a composite GCS object's): no checksum
    if "x-goog-hash" in headers or "x-goog-generation" in headers:
        return []  # GCS: x-goog-hash is the authority, its ETag is not always the MD5
    encryption = {
        headers.get(name, "").lower()
        for name in ("x-amz-server-side-encryption", "x-obs-server-side-encryption")
    }
    customer_key = any(
        name in headers
        for name in (
            "x-amz-server-side-encryption-customer-algorithm",
            "x-obs-server-side-encryption-customer-algorithm",
        )
    )
    if encryption & _KMS_ENCRYPTION or customer_key:
        return [Unchecked("encrypted_etag", "the ETag of a KMS or SSE-C encrypted object")]
    object_type = headers.get("x-oss-object-type", "Normal")
    if object_type.lower() != "normal":
        return [Unchecked("other_etag", f"the ETag of an OSS {object_type} object")]
    return [Checksum(Kind.MD5, bytes.fromhex(match.group(1)), "ETag")]
