"""``shim cache ls|rm|stats|verify``: the cache directory of the config, while shim runs on it
or not (see ``shim.cache.inspect`` for why that is safe)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shim.cache.inspect import (
    SORT_KEYS,
    CacheEntry,
    CacheStats,
    NoSuchEntry,
    Result,
    cache_stats,
    find_entries,
    list_entries,
    remove_entry,
    sort_entries,
    verify_entries,
)
from shim.config import Settings, load_settings
from shim.units import format_size

# Characters of a key shown in the table (`shim cache rm` takes any unique prefix).
SHOWN_KEY = 16


def add_cache_commands(commands: Any) -> None:
    """Register ``shim cache`` and its subcommands on the ``shim`` parser's subparsers."""
    cache = commands.add_parser("cache", help="list, remove, count and verify cached objects")
    subcommands = cache.add_subparsers(dest="cache_command", required=True)

    def subcommand(name: str, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = subcommands.add_parser(name, help=help_text)
        parser.add_argument(
            "--config", type=Path, help="YAML config (default: $SHIM_CONFIG or built-in defaults)"
        )
        return parser

    ls = subcommand("ls", "list the cached objects")
    ls.add_argument("--json", action="store_true", help="print one JSON array")
    ls.add_argument(
        "--sort",
        choices=SORT_KEYS,
        default="used",
        help="key ascending, else largest, newest, most recently used (default) or most hit first",
    )
    ls.set_defaults(handler=_reporting_os_errors(_ls))
    rm = subcommand("rm", "remove a cached object; shim fetches it again when next asked")
    rm.add_argument(
        "entry",
        metavar="KEY|URL",
        help="its key (or a unique prefix of 8 characters or more), or its URL",
    )
    rm.set_defaults(handler=_reporting_os_errors(_rm))
    stats = subcommand("stats", "print the cache's totals and its disk's use")
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    stats.set_defaults(handler=_reporting_os_errors(_stats))
    verify = subcommand(
        "verify",
        "check every object against the BLAKE3 digest stored with it; bad ones are removed "
        "and named (exit 1)",
    )
    verify.add_argument("--dry-run", action="store_true", help="name bad objects, remove nothing")
    verify.set_defaults(handler=_reporting_os_errors(_verify))


def _reporting_os_errors(
    handler: Callable[[argparse.Namespace], int],
) -> Callable[[argparse.Namespace], int]:
    """``handler``, saying in one line why the cache directory could not be read (exit 2)."""

    def handle(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except OSError as error:
            where = error.filename or "the cache directory"
            print(f"shim: cannot read {where}: {error.strerror or error}", file=sys.stderr)
            return 2

    return handle


def _settings(args: argparse.Namespace) -> Settings:
    """Settings for a command that signs nothing: bucket credentials are not read. A broken
    config raises ConfigError, which ``shim``'s main says in one line (exit 2)."""
    return load_settings(args.config, env=os.environ, credentials=False)


def _ls(args: argparse.Namespace) -> int:
    settings = _settings(args)
    entries = sort_entries(list_entries(settings.cache.dir, settings.buckets), args.sort)
    if args.json:
        print(json.dumps([_entry_json(entry) for entry in entries], indent=1))
        return 0
    header = ("KEY", "BUCKET", "OBJECT", "SIZE", "STORED (UTC)", "LAST USED (UTC)", "HITS")
    rows = [
        (
            entry.key[:SHOWN_KEY],
            entry.bucket or "-",
            entry.object,
            format_size(entry.meta.size),
            _when(entry.meta.stored_at),
            _when(entry.last_used),
            str(entry.hits),
        )
        for entry in entries
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return 0


def _entry_json(entry: CacheEntry) -> dict[str, Any]:
    meta = entry.meta
    return {
        "key": meta.key,
        "url": meta.url,
        "bucket": entry.bucket,
        "object": entry.object,
        "size": meta.size,
        "stored": _iso(meta.stored_at),
        "last_used": _iso(entry.last_used),
        "hits": entry.hits,
        "etag": meta.etag,
        "content_type": meta.content_type,
        "blake3": meta.blake3,
    }


def _rm(args: argparse.Namespace) -> int:
    settings = _settings(args)
    root = settings.cache.dir
    try:
        found = find_entries(
            list_entries(root, settings.buckets), args.entry, settings.buckets, settings.filter
        )
    except NoSuchEntry as error:
        print(f"shim: {error}", file=sys.stderr)
        return 1
    for entry in found:
        if remove_entry(root, entry.key):
            print(f"removed {entry.key} {entry.meta.url}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    settings = _settings(args)
    cache = settings.cache
    stats = cache_stats(
        cache.dir, max_size=cache.max_size, min_free=cache.min_free, watermarks=cache.watermarks
    )
    if args.json:
        print(json.dumps(_stats_json(stats, settings)))
        return 0
    print(f"directory:  {cache.dir}")
    print(f"entries:    {stats.entries}")
    print(
        f"size:       {format_size(stats.bytes)} of max_size {format_size(stats.max_size)} "
        f"({stats.bytes} bytes)"
    )
    print(f"hits:       {stats.hits}")
    print(f"filling:    {stats.filling} ({format_size(stats.filling_bytes)} written so far)")
    if stats.disk is not None and stats.keep is not None:
        disk = stats.disk
        print(
            f"disk:       {100 * disk.used_fraction:.1f}% used, {format_size(disk.free)} free "
            f"of {format_size(disk.size)}"
        )
        marks = cache.watermarks
        evicts = (
            f"past {100 * marks.high:.0f}% used, down to {100 * marks.low:.0f}%"
            if marks
            else "into min_free"
        )
        print(
            f"keeps free: {format_size(stats.keep.floor)} "
            f"(min_free {format_size(cache.min_free)}); evicts {evicts}"
        )
    return 0


def _stats_json(stats: CacheStats, settings: Settings) -> dict[str, Any]:
    marks = settings.cache.watermarks
    disk = stats.disk
    return {
        "dir": str(settings.cache.dir),
        "entries": stats.entries,
        "bytes": stats.bytes,
        "hits": stats.hits,
        "max_size": stats.max_size,
        "filling": stats.filling,
        "filling_bytes": stats.filling_bytes,
        "disk_size": disk.size if disk else None,
        "disk_free": disk.free if disk else None,
        "min_free": settings.cache.min_free,
        "high_watermark": marks.high if marks else None,
        "low_watermark": marks.low if marks else None,
        "keep_free": stats.keep.floor if stats.keep else None,
    }


def _verify(args: argparse.Namespace) -> int:
    settings = _settings(args)
    counts = dict.fromkeys(Result, 0)
    for checked in verify_entries(settings.cache.dir, remove=not args.dry_run):
        counts[checked.result] += 1
        if checked.result is Result.BAD:
            what = "removed" if checked.removed else "kept (--dry-run)"
            print(f"bad: {checked.meta.key} {checked.meta.url}: {checked.reason}; {what}")
        elif checked.result is Result.CHANGED:
            print(f"skipped: {checked.meta.key} {checked.meta.url}: {checked.reason}")
    print(
        f"{sum(counts.values())} entries: {counts[Result.OK]} ok, {counts[Result.BAD]} bad, "
        f"{counts[Result.UNCHECKED]} without a digest (stored by an older shim: size checked), "
        f"{counts[Result.CHANGED]} changed while checked"
    )
    return 1 if counts[Result.BAD] else 0


def _when(stamp: float | None) -> str:
    return "-" if not stamp else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(stamp))


def _iso(stamp: float | None) -> str | None:
    return None if not stamp else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))
