"""Redaction: URLs in logs and errors, and origin error bodies passed to clients, never carry
a signature or credential. Pure."""

from __future__ import annotations

import re
from urllib.parse import unquote, unquote_plus, urlsplit, urlunsplit

from shim.providers import ALL_SIGNATURE_PARAMS, PUBLIC_SIGNATURE_PARAMS

REDACTED = "REDACTED"

# Elements of the stores' XML error documents that repeat what a request was signed with:
# SignatureDoesNotMatch's key ID, string-to-sign, canonical request and the signature itself,
# S3's ExpiredToken/InvalidToken session token (Token-0), Azure's AuthenticationErrorDetail
# (it quotes the string to sign). An element cut off by a truncated body is redacted to its end.
_SECRET_ELEMENTS = re.compile(
    rb"<(AWSAccessKeyId|OSSAccessKeyId|GoogleAccessId|StringToSign|StringToSignBytes"
    rb"|SignatureProvided|CanonicalRequest|CanonicalRequestBytes|AuthenticationErrorDetail"
    rb"|Token-\d+)>.*?(?:</\1>|\Z)",
    re.DOTALL,
)


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


# A token of free text with a query: a URL redact_url may need to clean.
_QUERIED = re.compile(r"[^\s'\"<>]*\?[^\s'\"<>]*")


def redact_urls(text: str) -> str:
    """``text`` (an error's message, say) with every URL in it redacted as by redact_url; a
    URL too broken to be parsed loses its whole query."""

    def redacted(match: re.Match[str]) -> str:
        try:
            return redact_url(match.group())
        except ValueError:
            return match.group().partition("?")[0] + "?" + REDACTED

    return _QUERIED.sub(redacted, text)


def signature_secrets(signed_url: str) -> frozenset[str]:
    """What of ``signed_url`` must not reach a client: each secret signature value as sent
    and decoded, and the access key ID heading a credential (``AKID/date/region/...``)."""
    secrets: set[str] = set()
    for piece in urlsplit(signed_url).query.split("&"):
        name, _, raw = piece.partition("=")
        name = unquote_plus(name)
        if name not in ALL_SIGNATURE_PARAMS or name in PUBLIC_SIGNATURE_PARAMS:
            continue
        for value in (raw, unquote(raw), unquote_plus(raw)):
            secrets.add(value)
            if name.lower().endswith("credential"):
                secrets.add(value.partition("/")[0])
    secrets.discard("")
    return frozenset(secrets)


def redact_error_body(body: bytes, signed_url: str) -> bytes:
    """An origin's error body with what it repeats of the request's signature redacted: the
    S3 elements that carry it, and any secret value of ``signed_url`` found anywhere else."""
    body = _SECRET_ELEMENTS.sub(rb"<\1>" + REDACTED.encode() + rb"</\1>", body)
    # Longest first, so a value is never left half-redacted by a shorter one inside it.
    for secret in sorted(signature_secrets(signed_url), key=len, reverse=True):
        body = body.replace(secret.encode(), REDACTED.encode())
    return body
