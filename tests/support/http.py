"""A small HTTP client for tests: requests through a proxy, exactly as sent, fully read."""

from __future__ import annotations

import http.client
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def via_proxy(
    proxy_port: int,
    url: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    ca_cert: Path | None = None,
    timeout: float = 60.0,
) -> Reply:
    """Send one request for ``url`` through the proxy on loopback: absolute-form for http,
    CONNECT then TLS (trusting ``ca_cert``) for https. A short body raises IncompleteRead."""
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        context = ssl.create_default_context(cafile=str(ca_cert) if ca_cert else None)
        conn = http.client.HTTPSConnection(
            "127.0.0.1", proxy_port, context=context, timeout=timeout
        )
        conn.set_tunnel(parts.hostname or "", parts.port or 443)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", proxy_port, timeout=timeout)
        target = url
    try:
        conn.request(method, target, headers=headers or {})
        response = conn.getresponse()
        body = response.read()
        return Reply(response.status, response.headers, body)
    finally:
        conn.close()


def direct(
    url: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> Reply:
    """One request straight to ``url`` (no proxy), sent byte-exact."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=timeout)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, target, headers=headers or {})
        response = conn.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        conn.close()
