"""``shim prefetch URL... [--from-file FILE] [--proxy HOST:PORT]``: the command's wiring from
its arguments and the config to the download (``shim.prefetch.client``) and its display
(``shim.prefetch.report``). Exit 0 when every object arrived whole, 1 when any failed (each
named), 2 for a usage or config error.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from shim._errors import ConfigError, RequestError
from shim.config import Settings, load_settings, split_host_port
from shim.prefetch.request import checked_urls, urls_from_lines

if TYPE_CHECKING:
    from shim.prefetch.client import Fetched, ProxyTarget

CA_FILE = "mitmproxy-ca-cert.pem"


def proxy_target(settings: Settings, proxy: str | None, env: dict[str, str]) -> ProxyTarget:
    """Where the proxy is and how to talk to it. ValueError / ConfigError say what is wrong."""
    host, port = split_host_port(proxy) if proxy else settings.listen_address
    host = _connectable(host)
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    auth = None
    if settings.proxy_auth is not None:
        credentials = settings.proxy_auth
        password = credentials.password.get_secret_value() if credentials.password else None
        if password is None and credentials.password_env:
            password = env.get(credentials.password_env)
        if not password:
            raise ConfigError(
                f"proxy_auth.password_env: environment variable {credentials.password_env!r} "
                "is not set"
            )
        auth = (credentials.username, password)
    ca_cert = settings.confdir / CA_FILE
    from shim.prefetch.client import ProxyTarget

    return ProxyTarget(url, auth, ca_cert if ca_cert.is_file() else None)


def _connectable(host: str) -> str:
    """Where to connect for a listener bound to ``host``: one listening on every address is
    reached on loopback."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if address.is_unspecified:
        return "::1" if address.version == 6 else "127.0.0.1"
    return host


def _urls(args: argparse.Namespace) -> list[str]:
    urls = list(args.urls)
    if args.from_file is not None:
        try:
            text = sys.stdin.read() if str(args.from_file) == "-" else args.from_file.read_text()
        except OSError as error:
            raise RequestError(f"--from-file {args.from_file}: {error.strerror}") from None
        urls += urls_from_lines(text)
    return checked_urls(urls)


def prefetch(args: argparse.Namespace) -> int:
    # Imported here: other subcommands need neither aiohttp nor rich.
    from rich.console import Console

    from shim.prefetch.client import prefetch_all
    from shim.prefetch.report import BarsReport, PlainReport, summary_table

    if args.parallel < 1:
        print("shim: --parallel: at least 1", file=sys.stderr)
        return 2
    try:
        settings = load_settings(args.config, env=os.environ, credentials=False)
        target = proxy_target(settings, args.proxy, dict(os.environ))
        urls = _urls(args)
    except (ConfigError, RequestError, ValueError) as error:
        print(f"shim: {error}", file=sys.stderr)
        return 2
    if target.ca_cert is None and any(url.startswith("https://") for url in urls):
        print(
            f"shim: shim's CA is not in {settings.confdir} (confdir): https URLs cannot be "
            "checked; give the running shim's --config",
            file=sys.stderr,
        )
        return 2
    console = Console(stderr=False)
    plain = not console.is_terminal
    if plain:
        # No terminal to fit: long URLs stay on one line each, for grep.
        console = Console(width=10_000, no_color=True, highlight=False)
    report = PlainReport(console, urls) if plain else BarsReport(console, urls)
    with report:
        results = asyncio.run(
            prefetch_all(urls, target, report, parallel=args.parallel, read_timeout=args.timeout)
        )
    console.print(summary_table(results, plain=plain))
    return _failures(results)


def _failures(results: list[Fetched]) -> int:
    failed = [fetched for fetched in results if fetched.error]
    for fetched in failed:
        print(f"shim: prefetch failed: {fetched.url}: {fetched.error}", file=sys.stderr)
    if failed:
        print(f"shim: {len(failed)} of {len(results)} object(s) failed", file=sys.stderr)
        return 1
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("urls", nargs="*", metavar="URL", help="an object URL, as clients ask")
    parser.add_argument(
        "--from-file", type=Path, metavar="FILE", help="more URLs, one a line ('-': stdin)"
    )
    parser.add_argument(
        "--proxy", metavar="HOST:PORT", help="the running shim (default: 'listen' of the config)"
    )
    parser.add_argument(
        "--config", type=Path, help="YAML config (default: $SHIM_CONFIG or built-in defaults)"
    )
    parser.add_argument(
        "--parallel", type=int, default=4, metavar="N", help="objects at once (default 4)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="give up on an object after this long without data (default 300)",
    )
