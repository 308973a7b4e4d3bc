"""access: client networks and proxy Basic credentials."""

from __future__ import annotations

import base64
import ipaddress

import pytest
from pydantic import SecretStr

from shim.access import auth_required, client_allowed, credentials_valid
from shim.config import ProxyAuth

NETWORKS = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))
AUTH = ProxyAuth(username="model-server", password=SecretStr("pa:ss wörd"))


@pytest.mark.parametrize(
    ("peer", "allowed"),
    [
        ("10.1.2.3", True),
        ("::ffff:10.1.2.3", True),
        ("fd00::1", True),
        ("127.0.0.1", False),
        ("11.0.0.1", False),
        ("not-an-address", False),
    ],
)
def test_client_networks(peer: str, allowed: bool) -> None:
    assert client_allowed(peer, NETWORKS) is allowed


def test_no_networks_allow_every_client() -> None:
    assert client_allowed("203.0.113.9", ())


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    ("header", "valid"),
    [
        (basic("model-server", "pa:ss wörd"), True),
        (basic("model-server", "pa:ss word"), False),
        (basic("other", "pa:ss wörd"), False),
        (basic("model-server", ""), False),
        ("Bearer abc", False),
        ("Basic !!!", False),
        ("Basic", False),
        ("", False),
        (None, False),
    ],
)
def test_credentials(header: str | None, valid: bool) -> None:
    assert credentials_valid(header, AUTH) is valid


def test_the_challenge_is_a_407_basic() -> None:
    response = auth_required()
    assert response.status_code == 407
    assert response.headers["Proxy-Authenticate"].startswith("Basic ")
