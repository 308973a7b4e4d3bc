"""Who may use the proxy: client networks and proxy credentials. Pure: no I/O.

mitmproxy's own ``proxyauth`` addon asks every listener for credentials, including the
transparent and reverse ones, whose clients (a redirected JVM, a model server fetching a URL)
cannot send any; so shim checks Basic credentials on the explicit proxy only, with mitmproxy's
parser and answer.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Iterable

from mitmproxy.addons.proxyauth import make_auth_required_response, parse_http_basic_auth
from mitmproxy.http import Response

from shim.config import ProxyAuth

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def client_allowed(peer_host: str, networks: Iterable[Network]) -> bool:
    """Whether a client at ``peer_host`` may connect; every client when no network is set."""
    networks = tuple(networks)
    if not networks:
        return True
    try:
        address = ipaddress.ip_address(peer_host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


def credentials_valid(header: str | None, auth: ProxyAuth) -> bool:
    """Whether a ``Proxy-Authorization`` value carries ``auth``'s user and password."""
    if not header:
        return False
    try:
        _, username, password = parse_http_basic_auth(header)
    except ValueError:
        return False
    assert auth.password is not None, "config resolves password_env at load"
    expected = auth.password.get_secret_value()
    # Both compared, in constant time: the answer must not tell which one was wrong.
    user_ok = secrets.compare_digest(username.encode(), auth.username.encode())
    password_ok = secrets.compare_digest(password.encode(), expected.encode())
    return user_ok and password_ok


def auth_required() -> Response:
    """407 with ``Proxy-Authenticate: Basic``, as mitmproxy's proxyauth answers."""
    return make_auth_required_response(is_proxy=True)
