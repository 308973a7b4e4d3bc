"""shim's record of verified bodies: offered only for the very version it was made for,
and bounded."""

from __future__ import annotations

import blake3

from shim.cache.integrity import Checksum, Kind, Unchecked, Verified, Verifier
from shim.cache.verified import VerifiedBodies

VERSION = ("http://bucket.example/models/a.mar", '"0123456789abcdef0123456789abcdef"', 5)


def test_a_recorded_version_is_offered_as_a_blake3_checksum() -> None:
    bodies = VerifiedBodies()
    assert bodies.offer(VERSION) is None
    verifier = Verifier(Checksum(Kind.MD5, b"\0" * 16, "ETag"), fingerprint=True)
    verifier.update(b"hello")
    fingerprint = verifier.fingerprint()
    assert fingerprint is not None
    bodies.record(VERSION, fingerprint)
    offer = bodies.offer(VERSION)
    assert offer is not None and offer.kind is Kind.BLAKE3
    again = Verifier(offer)
    again.update(b"hello")
    assert again.outcome() == Verified(Kind.BLAKE3)
    # Another ETag or size is another version: nothing to offer for it.
    assert bodies.offer((VERSION[0], '"other"', 5)) is None
    assert bodies.offer((VERSION[0], VERSION[1], 6)) is None


def test_a_fingerprint_is_the_body_s_blake3_whatever_the_offer() -> None:
    """Asked for, it is the body's BLAKE3 (what a kept entry stores), computed once when the
    offer is a BLAKE3 record; not asked for, there is none."""
    body = b"hello"
    offers: list[Checksum | Unchecked] = [
        Checksum(Kind.BLAKE3, blake3.blake3(body).digest(), "record"),
        Checksum(Kind.MD5, b"\0" * 16, "ETag"),
        Unchecked("none", "the origin sent no checksum"),
    ]
    for offer in offers:
        verifier = Verifier(offer, fingerprint=True)
        assert verifier.hashing
        verifier.update(body)
        assert verifier.fingerprint() == blake3.blake3(body).digest()
    assert Verifier(Checksum(Kind.MD5, b"", "ETag")).fingerprint() is None
    assert not Verifier(Unchecked("none", "no checksum")).hashing


def test_the_record_is_bounded() -> None:
    bodies = VerifiedBodies(maxsize=2)
    for size in range(3):
        bodies.record((VERSION[0], VERSION[1], size), b"d")
    assert len(bodies) == 2
    assert bodies.offer((VERSION[0], VERSION[1], 0)) is None  # the oldest went first
