"""Who may change state through the admin port: a bearer token. Pure: no I/O.

Read-only pages (``/healthz``, ``/metrics``, ``/status``) need nothing; everything that changes
state (prefetch, cache removal) needs ``Authorization: Bearer TOKEN`` with the configured
token, and is refused outright when none is configured. Neither answer repeats what was sent.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from pydantic import SecretStr

# RFC 6750 section 3: the challenge a 401 carries.
CHALLENGE = 'Bearer realm="shim-admin"'


@dataclass(frozen=True, slots=True)
class AdminRefusal:
    status: int
    message: str


NO_TOKEN_CONFIGURED = AdminRefusal(
    403,
    "this endpoint changes state and needs a token: configure admin_token or admin_token_file "
    "and send it as 'Authorization: Bearer TOKEN'",
)
BAD_TOKEN = AdminRefusal(401, "missing or wrong bearer token ('Authorization: Bearer TOKEN')")


def check_bearer(header: str | None, token: SecretStr | None) -> AdminRefusal | None:
    """None when ``header`` (the request's Authorization value) carries ``token``."""
    if token is None:
        return NO_TOKEN_CONFIGURED
    scheme, _, given = (header or "").strip().partition(" ")
    expected = token.get_secret_value().encode()
    # Compared in constant time whatever was sent, so timing tells nothing of the token.
    matches = secrets.compare_digest(given.strip().encode(errors="replace"), expected)
    if scheme.lower() != "bearer" or not matches:
        return BAD_TOKEN
    return None
