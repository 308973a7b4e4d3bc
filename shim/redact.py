"""Redaction: URLs in logs and errors never carry a signature or credential. Pure."""

from __future__ import annotations

from urllib.parse import unquote_plus, urlsplit, urlunsplit

from shim.providers import ALL_SIGNATURE_PARAMS


def redact_url(url: str) -> str:
    """``url`` with the value of every signature parameter replaced by ``REDACTED``."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    pieces = []
    for piece in parts.query.split("&"):
        name, eq, _ = piece.partition("=")
        # Decoded as recognize() decodes names, so X%2DAmz%2DSignature is caught too.
        secret = eq and unquote_plus(name) in ALL_SIGNATURE_PARAMS
        pieces.append(f"{name}=REDACTED" if secret else piece)
    return urlunsplit(parts._replace(query="&".join(pieces)))
