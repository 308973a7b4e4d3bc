"""The ``shim`` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shim._errors import ConfigError, RequestError, SigningError
from shim.cache.cli import add_cache_commands
from shim.config import (
    Settings,
    load_settings,
    preheat_manager,
    split_host_port,
)
from shim.freshness import names_version, versioned_tag
from shim.identity import TaskIdentity, filtered_params, identify
from shim.prefetch import command as prefetch_command
from shim.providers import PROVIDERS
from shim.taskid import go_task_id, rust_task_id
from shim.trust import (
    JAVA_NON_PROXY_HOSTS,
    TRUSTSTORE_PASSWORD,
    JvmProxy,
    TrustError,
    export_trust,
    render_env,
)

if TYPE_CHECKING:
    from shim.recognize import ObjectRef


def _run(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {
        key: getattr(args, key)
        for key in ("listen", "admin", "transparent", "reverse", "s3_api")
        if getattr(args, key)
    }
    try:
        settings = load_settings(args.config, env=os.environ, overrides=overrides)
    except ConfigError as error:
        print(f"shim: {error}", file=sys.stderr)
        return 2
    # As mitmproxy's own entry point does: its TermLog handler filters by verbosity.
    logging.getLogger().setLevel(logging.DEBUG)
    for noisy in ("asyncio", "hpack", "aiohttp", "botocore", "boto3", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Python's warnings from here on as log lines too (JSON ones under log_format: json).
    logging.captureWarnings(True)
    return asyncio.run(_serve(settings, args.config, overrides))


async def _serve(settings: Settings, config: Path | None, overrides: dict[str, Any]) -> int:
    # Imported here: mitmproxy is heavy, and other subcommands do not need it.
    from mitmproxy import options
    from mitmproxy.tools.dump import DumpMaster

    from shim.addon import ShimAddon
    from shim.lifecycle import GracefulShutdown
    from shim.reload import ConfigReload

    opts = options.Options()
    master = DumpMaster(opts, with_termlog=True, with_dumper=False)
    shim = ShimAddon(settings)
    # Reloads what `settings` came from, with the same command-line flags on top.
    reload = ConfigReload(shim, config, env=os.environ, overrides=overrides)
    master.addons.add(shim, GracefulShutdown(shim), reload)  # type: ignore[no-untyped-call]
    # Addons declare most options, so they are set once the addons are in.
    opts.update(  # type: ignore[no-untyped-call]
        mode=settings.mitmproxy_modes(),
        confdir=str(settings.confdir),
        connection_strategy="lazy",
    )
    loop = asyncio.get_running_loop()
    # Until the proxy runs; from then on GracefulShutdown drains transfers in flight first.
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, master.shutdown)
    loop.add_signal_handler(signal.SIGHUP, reload.reload_soon, "SIGHUP")
    await master.run()
    return 0


def _settings_or_exit(args: argparse.Namespace) -> Settings | None:
    """Settings for a command that signs nothing: bucket credentials are not read."""
    try:
        return load_settings(args.config, env=os.environ, credentials=False)
    except ConfigError as error:
        print(f"shim: {error}", file=sys.stderr)
        return None


def _ca(args: argparse.Namespace) -> int:
    settings = _settings_or_exit(args)
    if settings is None:
        return 2
    try:
        pem, truststore = export_trust(settings.confdir, args.out, args.jdk_cacerts)
    except TrustError as error:
        print(f"shim: {error}", file=sys.stderr)
        return 1
    print(f"CA certificate: {pem}")
    print(f"truststore:     {truststore} (PKCS12, password {TRUSTSTORE_PASSWORD})")
    return 0


def _env(args: argparse.Namespace) -> int:
    settings = _settings_or_exit(args)
    if settings is None:
        return 2
    try:
        host, port = split_host_port(args.proxy) if args.proxy else settings.listen_address
    except ValueError as error:
        print(f"shim: --proxy: {error}", file=sys.stderr)
        return 2
    proxy = JvmProxy(host, port, args.truststore, non_proxy_hosts=args.non_proxy_hosts)
    print(render_env(proxy), end="")
    return 0


def _task_id(args: argparse.Namespace) -> int:
    if args.filter is None:
        filtered = filtered_params(args.provider)  # what shim sends for a signed URL
    else:
        filtered = tuple(name for name in args.filter.split(",") if name)
    try:
        rust = rust_task_id(args.url, filtered=filtered, tag=args.tag)
        rust_0_2 = rust_task_id(args.url, filtered=filtered, tag=args.tag, client="0.2.28")
    except ValueError as error:
        print(f"shim: cannot compute a task ID: {error}", file=sys.stderr)
        return 2
    go = go_task_id(args.url, filtered=filtered, tag=args.tag)
    print(f"rust dfdaemon (dragonfly-client 1.5):    {rust}")
    print(f"rust dfdaemon (dragonfly-client 0.2.28): {rust_0_2}")
    print(f"go dfdaemon (dfget 2.3.4 and earlier):   {go}")
    return 0


# The origin directly, whatever proxy the environment names.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _signed(settings: Settings, url: str, method: str) -> tuple[ObjectRef, str, TaskIdentity]:
    """``url`` signed for ``method`` as shim signs it, and its task identity. RequestError
    when it names no object of a configured bucket."""
    # Imported here: the stores' SDKs are heavy, and other subcommands do not need them.
    from shim.recognize import recognize
    from shim.signing import signers_for

    ref = recognize(url, settings.buckets)
    if ref is None:
        raise RequestError(
            "the URL names no object of a configured bucket: shim would pass it "
            "through unsigned (if 'passthrough' allows its host) or refuse it"
        )
    signer = signers_for([ref.bucket], settings.presign_expires)[ref.bucket]
    signed = signer.sign(ref, method)
    return ref, signed, identify(signed, filtered_params(ref.bucket.provider, settings.filter))


def _task_tag(tag: str, identity: TaskIdentity, signed_get_url: str | None) -> str | None:
    """The tag of the dfdaemon task shim asks for: the configured ``tag``, with the object's
    current ETag (fetched with ``signed_get_url``) unless the URL names a version (see
    freshness.py); None when that ETag is unknown."""
    if names_version(identity.url):
        return tag
    etag = _current_etag(signed_get_url) if signed_get_url else None
    return None if etag is None else versioned_tag(tag, etag)


def _sign(args: argparse.Namespace) -> int:
    from shim.redact import redact_url

    try:
        settings = load_settings(args.config, env=os.environ)
        ref, signed, identity = _signed(settings, args.url, args.method)
    except (ConfigError, RequestError, SigningError) as error:
        print(f"shim: {error}", file=sys.stderr)
        return 1 if isinstance(error, SigningError | RequestError) else 2
    print(f"provider:   {ref.bucket.provider}")
    print(f"bucket:     {ref.bucket.name} (alias {ref.bucket.reverse_alias})")
    print(f"key:        {ref.key}")
    print(f"signed URL: {signed if args.show_signature else redact_url(signed)}")
    print(f"identity:   {identity.url}")
    print(f"cache key:  {identity.task_id}")
    dfdaemon = settings.dfdaemon
    if dfdaemon is not None:
        tag = _task_tag(dfdaemon.tag, identity, signed if args.method == "GET" else None)
        if tag is None:
            print("dfdaemon task ID: unknown (the origin answered with no ETag: is it there?)")
            return 0
        task = rust_task_id(identity.url, tag=tag, application=dfdaemon.application)
        print(f"dfdaemon task ID (tag {tag!r}, application {dfdaemon.application!r}): {task}")
    return 0


def _current_etag(signed_url: str) -> str | None:
    """The object's ETag, from its first byte fetched with the signed URL (a GET URL: a HEAD
    would need a signature of its own); None when the origin does not answer with one."""
    request = urllib.request.Request(signed_url, headers={"Range": "bytes=0-0"})  # noqa: S310
    try:
        with _DIRECT.open(request, timeout=30) as response:
            etag: str | None = response.headers.get("ETag")
            return etag
    except (OSError, ValueError):
        return None


def _preheat(args: argparse.Namespace) -> int:
    from shim.preheat import JobOptions, ManagerClient, ManagerError, Target, run
    from shim.redact import redact_url

    try:
        settings = load_settings(args.config, env=os.environ)
        manager = preheat_manager(
            settings, url=args.manager, token_file=args.token_file, scope=args.scope
        )
    except ConfigError as error:
        print(f"shim: {error}", file=sys.stderr)
        return 2
    # The task's tag and application are the nodes': preheat with their config.
    dfdaemon = settings.dfdaemon
    tag, application = (dfdaemon.tag, dfdaemon.application) if dfdaemon else ("", "")
    targets = []
    for url in args.urls:
        try:
            ref, signed, identity = _signed(settings, url, "GET")
        except (RequestError, SigningError) as error:
            print(f"shim: {redact_url(url)}: {error}", file=sys.stderr)
            return 1
        task_tag = _task_tag(tag, identity, signed)
        if task_tag is None:
            print(
                f"shim: {redact_url(url)}: the origin answered with no ETag (is the object "
                "there, and may the bucket's credentials read it?)",
                file=sys.stderr,
            )
            return 1
        task = rust_task_id(identity.url, tag=task_tag, application=application)
        filtered = filtered_params(ref.bucket.provider, settings.filter)
        targets.append(Target(url, signed, filtered, task_tag, task))
    assert manager.token is not None
    options = JobOptions(application, manager.scope, manager.scheduler_cluster_ids, manager.timeout)
    try:
        problems = run(
            ManagerClient(manager.url, manager.token),
            targets,
            options,
            interval=args.poll_interval,
            say=lambda line: print(line, flush=True),
        )
    except ManagerError as error:
        print(f"shim: {error}", file=sys.stderr)
        return 1
    for problem in problems:
        print(f"shim: {problem}", file=sys.stderr)
    return 1 if problems else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shim",
        description="Caching proxy that signs object-storage downloads for model servers.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the proxy in the foreground")
    run.add_argument(
        "--config", type=Path, help="YAML config (default: $SHIM_CONFIG or built-in defaults)"
    )
    run.add_argument(
        "--listen", metavar="HOST:PORT", help="proxy listener (default 127.0.0.1:8790)"
    )
    run.add_argument("--admin", metavar="HOST:PORT", help="admin listener (default 127.0.0.1:8791)")
    run.add_argument(
        "--transparent", metavar="HOST:PORT", help="also listen in transparent mode (iptables)"
    )
    run.add_argument("--reverse", metavar="HOST:PORT", help="also serve http://HOST:PORT/ALIAS/KEY")
    run.add_argument(
        "--s3-api", metavar="HOST:PORT", help="also serve a read-only S3 API on HOST:PORT"
    )
    run.set_defaults(handler=_run)
    ca = commands.add_parser(
        "ca", help="write the interception CA and a Java truststore (JDK CAs + shim's) to DIR"
    )
    ca.add_argument("--config", type=Path, help="YAML config (for confdir)")
    ca.add_argument("--out", type=Path, required=True, metavar="DIR")
    ca.add_argument("--jdk-cacerts", type=Path, help="the JDK CA store to start from")
    ca.set_defaults(handler=_ca)
    env = commands.add_parser("env", help="print the settings that send TorchServe through shim")
    env.add_argument("--config", type=Path, help="YAML config (for the listener)")
    env.add_argument("--proxy", metavar="HOST:PORT", help="address clients reach the proxy at")
    env.add_argument("--truststore", type=Path, help="truststore written by `shim ca`")
    env.add_argument(
        "--non-proxy-hosts",
        default=JAVA_NON_PROXY_HOSTS,
        help="http.nonProxyHosts (default: Java's own; '' proxies localhost too)",
    )
    env.set_defaults(handler=_env)
    task_id = commands.add_parser(
        "task-id", help="print the Dragonfly task IDs both dfdaemon generations compute for URL"
    )
    task_id.add_argument("url")
    task_id.add_argument(
        "--filter",
        default=None,
        help="comma-separated query parameters to drop (default: the signature parameters "
        "of --provider, which shim sends in its filter headers; '' for none)",
    )
    task_id.add_argument(
        "--tag",
        default="",
        help="the task's X-Dragonfly-Tag; shim sends TAG;etag=ETAG (the object's current "
        "version) unless the URL names a version",
    )
    task_id.add_argument(
        "--provider",
        choices=sorted(PROVIDERS),
        default="s3",
        help="the store whose signature parameters are dropped (default: s3)",
    )
    task_id.set_defaults(handler=_task_id)
    sign = commands.add_parser(
        "sign",
        help="print the signed URL shim would fetch for URL, its provider and task ID "
        "(signature redacted unless --show-signature)",
    )
    sign.add_argument("url", help="the URL a client would request through shim")
    sign.add_argument("--config", type=Path, help="YAML config (default: $SHIM_CONFIG)")
    sign.add_argument("--method", choices=("GET", "HEAD"), default="GET")
    sign.add_argument(
        "--show-signature",
        action="store_true",
        help="print the signature too (it grants access to the object until it expires)",
    )
    sign.set_defaults(handler=_sign)
    prefetch = commands.add_parser(
        "prefetch",
        help="download objects through the running shim (its cache, its dfdaemon) so that "
        "later requests hit; exit 1 naming each failure",
    )
    prefetch_command.add_arguments(prefetch)
    prefetch.set_defaults(handler=prefetch_command.prefetch)
    add_cache_commands(commands)
    preheat = commands.add_parser(
        "preheat",
        help="have Dragonfly's manager put objects on the cluster's peers (a preheat job with "
        "the task IDs shim's downloads use) and follow the job to its end",
    )
    preheat.add_argument("urls", nargs="+", metavar="URL", help="a URL clients request")
    preheat.add_argument("--config", type=Path, help="YAML config (default: $SHIM_CONFIG)")
    preheat.add_argument("--manager", metavar="URL", help="the manager's REST API (manager.url)")
    preheat.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help="a file holding the manager's personal access token (manager.token_file)",
    )
    preheat.add_argument(
        "--scope",
        choices=("all_peers", "all_seed_peers", "single_seed_peer"),
        help="which peers download each object (manager.scope; default all_peers)",
    )
    preheat.add_argument(
        "--poll-interval",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="how often to ask the manager about the job (default 5)",
    )
    preheat.set_defaults(handler=_preheat)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = args.handler
    result: int = handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
