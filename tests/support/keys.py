"""Object keys every store's tests send through shim: each character class escapes differently
in each SDK, URL shape and store."""

from __future__ import annotations

AWKWARD_KEYS: tuple[str, ...] = (
    "plain.mar",
    "with space.mar",
    "plus+sign.mar",
    "percent%25and%.mar",
    "equals=and&amp.mar",
    "naïve-模型-ü.mar",
    "nested/dir with space/model.mar",
    "question?mark.mar",
    "tilde~quote'paren(1)*!$,;:@.mar",
)
