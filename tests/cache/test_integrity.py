"""Which checksum each store's response offers, and the streaming verifier, against values the
stores' own SDKs compute (botocore, google-crc32c, oss2) and published check values (RFC 3720,
the RevEng CRC catalogue, AWS's CRC64NVME vectors)."""

from __future__ import annotations

import base64
import hashlib
import os
import random
import zlib

import google_crc32c
import oss2.utils  # type: ignore[import-untyped]
import pytest
from botocore.httpchecksum import Crc32Checksum, Sha1Checksum, Sha256Checksum
from multidict import CIMultiDict

from shim.cache.integrity import (
    Checksum,
    Kind,
    Mismatch,
    Outcome,
    Unchecked,
    Verified,
    Verifier,
    crc,
    offered,
)

BODY = os.urandom(3 * 1024 * 1024 + 17)
MD5 = hashlib.md5(BODY).digest()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def oss_crc64(data: bytes) -> int:
    running = oss2.utils.Crc64(0)
    running.update(data)
    return int(running.crc)


def verify(checksum: Checksum | Unchecked, body: bytes = BODY) -> Outcome:
    """Feed ``body`` to a verifier in chunks of random sizes, as an origin would send it."""
    assert isinstance(checksum, Checksum), checksum
    verifier = Verifier(checksum)
    rng = random.Random(7)
    position = 0
    while position < len(body):
        step = rng.randint(1, 300_000)
        verifier.update(body[position : position + step])
        position += step
    return verifier.outcome()


@pytest.mark.parametrize(
    ("kind", "data", "value"),
    [
        # RevEng catalogue check values (the CRC of b"123456789").
        (Kind.CRC32, b"123456789", 0xCBF43926),
        (Kind.CRC32C, b"123456789", 0xE3069283),
        (Kind.CRC64NVME, b"123456789", 0xAE8B14860A799888),
        (Kind.CRC64ECMA, b"123456789", 0x995DC9BBDF1939FA),
        # RFC 3720 appendix B.4 (iSCSI CRC32C).
        (Kind.CRC32C, bytes(32), 0x8A9136AA),
        (Kind.CRC32C, b"\xff" * 32, 0x62A8AB43),
        (Kind.CRC32C, bytes(range(32)), 0x46DD794E),
        (Kind.CRC32C, bytes(range(31, -1, -1)), 0x113FDB5C),
        # AWS SDKs' CRC64NVME vector: "Hello world" -> OOJZ0D8xKts= (base64, big-endian).
        (Kind.CRC64NVME, b"Hello world", int.from_bytes(base64.b64decode("OOJZ0D8xKts="))),
        (Kind.CRC64NVME, b"", 0),
    ],
)
def test_crcs_match_published_check_values(kind: Kind, data: bytes, value: int) -> None:
    assert crc(kind, data) == value


def test_crcs_match_the_sdks_on_a_large_body() -> None:
    assert crc(Kind.CRC32, BODY) == zlib.crc32(BODY)
    assert crc(Kind.CRC32C, BODY) == google_crc32c.value(BODY)
    assert crc(Kind.CRC64ECMA, BODY) == oss_crc64(BODY)


def s3_headers(**checksums: str) -> CIMultiDict[str]:
    headers = CIMultiDict({"ETag": f'"{MD5.hex()}"'})
    for name, value in checksums.items():
        headers[f"x-amz-checksum-{name}"] = value
    return headers


@pytest.mark.parametrize(
    ("kind", "sdk_value"),
    [
        (Kind.SHA256, lambda: Sha256Checksum().handle(BODY)),
        (Kind.SHA1, lambda: Sha1Checksum().handle(BODY)),
        (Kind.CRC32, lambda: Crc32Checksum().handle(BODY)),
        (Kind.CRC32C, lambda: b64(google_crc32c.value(BODY).to_bytes(4, "big"))),
        (Kind.CRC64NVME, lambda: b64(crc(Kind.CRC64NVME, BODY).to_bytes(8, "big"))),
    ],
)
def test_s3_full_object_checksums_verify_and_catch_one_flipped_byte(
    kind: Kind, sdk_value: object
) -> None:
    assert callable(sdk_value)
    # Only the one checksum, and no ETag: it must be what is checked.
    headers = CIMultiDict(
        {f"x-amz-checksum-{kind}": sdk_value(), "x-amz-checksum-type": "FULL_OBJECT"}
    )
    checksum = offered(headers)
    assert isinstance(checksum, Checksum) and checksum.kind is kind
    assert verify(checksum) == Verified(kind)
    flipped = bytearray(BODY)
    flipped[len(BODY) // 2] ^= 0x01
    assert verify(checksum, bytes(flipped)) == Mismatch(kind, f"x-amz-checksum-{kind}")


def test_the_strongest_checksum_offered_is_checked() -> None:
    sha256 = Sha256Checksum().handle(BODY)
    crc64 = b64(crc(Kind.CRC64NVME, BODY).to_bytes(8, "big"))
    assert offered(s3_headers(sha256=sha256, crc64nvme=crc64)) == Checksum(
        Kind.SHA256, base64.b64decode(sha256), "x-amz-checksum-sha256"
    )
    # A digest before a CRC: the ETag's MD5 over S3's default CRC64NVME.
    assert offered(s3_headers(crc64nvme=crc64)) == Checksum(Kind.MD5, MD5, "ETag")


def test_s3_md5_etag_of_a_single_part_upload() -> None:
    checksum = offered(s3_headers())
    assert checksum == Checksum(Kind.MD5, MD5, "ETag")
    assert verify(checksum) == Verified(Kind.MD5)
    assert verify(checksum, BODY[:-1] + b"x") == Mismatch(Kind.MD5, "ETag")


@pytest.mark.parametrize(
    ("headers", "kind"),
    [
        ({"ETag": '"d41d8cd98f00b204e9800998ecf8427e-12"'}, "multipart_etag"),
        (
            {"ETag": '"d41d8cd98f00b204e9800998ecf8427e-2"', "x-amz-checksum-crc32c": "AAAAAA==-2"},
            "composite",
        ),
        (
            {"x-amz-checksum-sha256": b64(bytes(32)), "x-amz-checksum-type": "COMPOSITE"},
            "composite",
        ),
        ({"ETag": f'"{MD5.hex()}"', "x-amz-server-side-encryption": "aws:kms"}, "encrypted_etag"),
        (
            {"ETag": f'"{MD5.hex()}"', "x-amz-server-side-encryption-customer-algorithm": "AES256"},
            "encrypted_etag",
        ),
        ({"ETag": f'"{MD5.hex()}"', "x-obs-server-side-encryption": "kms"}, "encrypted_etag"),
        ({"ETag": '"0x8DC2F1E5A3B4C5D"'}, "none"),  # Azure's, without an MD5
        ({}, "none"),
        ({"Content-MD5": "not base64!"}, "malformed"),
        ({"x-oss-hash-crc64ecma": "-1"}, "malformed"),
    ],
)
def test_what_cannot_be_checked_says_why(headers: dict[str, str], kind: str) -> None:
    outcome = offered(CIMultiDict(headers))
    assert isinstance(outcome, Unchecked)
    assert outcome.kind == kind and outcome.reason


def test_sse_s3_keeps_the_md5_etag() -> None:
    headers = s3_headers()
    headers["x-amz-server-side-encryption"] = "AES256"  # SSE-S3: the ETag is still the MD5
    assert offered(headers) == Checksum(Kind.MD5, MD5, "ETag")


def test_gcs_x_goog_hash_one_header_each_or_both_in_one() -> None:
    crc32c = b64(google_crc32c.value(BODY).to_bytes(4, "big"))
    separate = CIMultiDict(
        [("x-goog-hash", f"crc32c={crc32c}"), ("x-goog-hash", f"md5={b64(MD5)}")]
    )
    joined = CIMultiDict({"x-goog-hash": f"crc32c={crc32c},md5={b64(MD5)}"})
    for headers in (separate, joined):
        checksum = offered(headers)
        assert checksum == Checksum(Kind.MD5, MD5, "x-goog-hash md5")
        assert verify(checksum) == Verified(Kind.MD5)
    # A composite object has a CRC32C only, and an ETag that is no MD5.
    composite = CIMultiDict({"x-goog-hash": f"crc32c={crc32c}", "ETag": '"CJCs7t6s/IkDEAE="'})
    checksum = offered(composite)
    assert checksum == Checksum(
        Kind.CRC32C, google_crc32c.value(BODY).to_bytes(4, "big"), "x-goog-hash crc32c"
    )
    assert verify(checksum) == Verified(Kind.CRC32C)
    assert verify(checksum, BODY[1:]) == Mismatch(Kind.CRC32C, "x-goog-hash crc32c")


def test_gcs_etag_is_never_taken_for_an_md5() -> None:
    headers = CIMultiDict({"ETag": f'"{bytes(16).hex()}"', "x-goog-generation": "1"})
    assert offered(headers) == Unchecked("none", "the origin sent no checksum")


def test_gcs_decompressive_transcoding_is_unchecked() -> None:
    headers = CIMultiDict(
        {"x-goog-hash": f"md5={b64(MD5)}", "x-goog-stored-content-encoding": "gzip"}
    )
    outcome = offered(headers)
    assert isinstance(outcome, Unchecked) and outcome.kind == "transcoded"


@pytest.mark.parametrize("header", ["Content-MD5", "x-ms-blob-content-md5"])
def test_azure_content_md5(header: str) -> None:
    headers = CIMultiDict({header: b64(MD5), "ETag": '"0x8DC2F1E5A3B4C5D"'})
    checksum = offered(headers)
    assert checksum == Checksum(Kind.MD5, MD5, header)
    assert verify(checksum) == Verified(Kind.MD5)


def test_oss_md5_etag_and_crc64() -> None:
    crc64 = str(oss_crc64(BODY))
    normal = CIMultiDict(
        {
            "ETag": f'"{MD5.hex().upper()}"',
            "x-oss-hash-crc64ecma": crc64,
            "x-oss-object-type": "Normal",
        }
    )
    assert offered(normal) == Checksum(Kind.MD5, MD5, "ETag")
    for object_type, etag in (
        ("Multipart", f'"{MD5.hex().upper()}-3"'),
        ("Appendable", f'"{MD5.hex()}"'),
    ):
        headers = CIMultiDict(
            {"ETag": etag, "x-oss-hash-crc64ecma": crc64, "x-oss-object-type": object_type}
        )
        checksum = offered(headers)
        assert checksum == Checksum(
            Kind.CRC64ECMA, int(crc64).to_bytes(8, "big"), "x-oss-hash-crc64ecma"
        )
        assert verify(checksum) == Verified(Kind.CRC64ECMA)
        assert verify(checksum, BODY + b"\0") == Mismatch(Kind.CRC64ECMA, "x-oss-hash-crc64ecma")


def test_an_empty_object_verifies() -> None:
    empty_md5 = hashlib.md5(b"").hexdigest()
    checksum = offered(CIMultiDict({"ETag": f'"{empty_md5}"'}))
    assert verify(checksum, b"") == Verified(Kind.MD5)
