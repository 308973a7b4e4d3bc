"""The admin port's bearer token: every way a request can carry it, right or wrong."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from shim.admin_auth import BAD_TOKEN, NO_TOKEN_CONFIGURED, check_bearer

TOKEN = SecretStr("s3cr3t-admin-token-0123456789")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Bearer s3cr3t-admin-token-0123456789", None),
        ("bearer s3cr3t-admin-token-0123456789", None),  # the scheme is case-insensitive
        ("  Bearer s3cr3t-admin-token-0123456789  ", None),
        (None, BAD_TOKEN),
        ("", BAD_TOKEN),
        ("Bearer", BAD_TOKEN),
        ("Bearer ", BAD_TOKEN),
        ("Bearer s3cr3t-admin-token-012345678", BAD_TOKEN),  # a prefix
        ("Bearer s3cr3t-admin-token-0123456789x", BAD_TOKEN),
        ("Bearer S3CR3T-ADMIN-TOKEN-0123456789", BAD_TOKEN),  # the token is not
        ("Basic s3cr3t-admin-token-0123456789", BAD_TOKEN),
        ("s3cr3t-admin-token-0123456789", BAD_TOKEN),
        ("Bearer s3cr3t-admin-token-0123456789 extra", BAD_TOKEN),
        ("Bearer s3cr3t-admin-token-0123456789\u00e9", BAD_TOKEN),
    ],
)
def test_only_the_configured_bearer_token_passes(header: str | None, expected: object) -> None:
    assert check_bearer(header, TOKEN) == expected


@pytest.mark.parametrize("header", [None, "Bearer s3cr3t-admin-token-0123456789"])
def test_without_a_configured_token_everything_is_refused_403(header: str | None) -> None:
    refusal = check_bearer(header, None)
    assert refusal == NO_TOKEN_CONFIGURED
    assert refusal is not None and refusal.status == 403
    assert "admin_token or admin_token_file" in refusal.message


def test_refusals_never_repeat_the_token() -> None:
    for refusal in (BAD_TOKEN, NO_TOKEN_CONFIGURED):
        assert TOKEN.get_secret_value() not in refusal.message
