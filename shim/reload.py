"""Config reload while ``shim run`` serves: on SIGHUP, or when the config file changes.

Both end in ``ConfigReload.reload``: the file is read and validated off the event loop (a
``source: env`` credential or a bucket's signer may do I/O), compared with the running
config, and then either applied whole, at once, or refused whole with one log line, the
previous config serving on. Transfers in flight are never touched: each holds the signed URL
and the route it started with.

A config is refused when it is broken (not YAML, fails validation, a signer cannot be made)
and when it changes a setting that only a restart can apply (``RESTART_ONLY``): the listeners
and the cache are bound at start, and the cache server's origin session and dfdaemon route
are built around the timeout, tag and storage options. Such a change is refused rather than
the rest applied: a config is validated as a whole (a listener open to the network must come
with ``clients``), and a running mix of the old listeners and the new guards was never
validated by anyone. The log line names what needs the restart.

Everything else applies: buckets added, removed or changed (credentials included), passthrough,
clients and proxy_auth (for new connections: an open one keeps what it was admitted with),
headers, filter, URL lifetimes, limits, and the dfdaemon's address, application, priority,
fallback and connect timeout. Buckets that did not change keep their signer, and with it the
signed URLs and credentials it holds.

The file is polled every ``reload_poll`` seconds by its resolved path, device, inode, mtime and
size: an in-place write, an editor's rename, and a Kubernetes ConfigMap update (which swaps a
``..data`` symlink to a new directory) all change one of them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, Protocol

from shim._errors import ShimError
from shim.config import Settings, load_settings
from shim.metrics import Metrics
from shim.providers import BucketConfig
from shim.signing import CachedSigner, signers_for

log = logging.getLogger("shim")

# Settings only a restart applies, as dotted paths into Settings. ``dfdaemon`` itself counts
# when one is added or removed; its other fields apply live.
RESTART_ONLY: Final = (
    "listen",
    "admin",
    "transparent",
    "reverse",
    "s3_api.listen",
    "confdir",
    "cache.dir",
    "cache.max_size",
    "cache.min_free",
    "cache.high_watermark",
    "cache.low_watermark",
    "origin_timeout",
    "dfdaemon",
    "dfdaemon.tag",
    "dfdaemon.keep_copy",
    "dfdaemon.link_dir",
)

# When no ``reload_poll`` is set (0): how often the watcher looks whether one was.
_IDLE_POLL_SECONDS: Final = 2.0

Result = Literal["applied", "unchanged", "refused"]


def _value(settings: Settings, path: str) -> Any:
    value: Any = settings
    for name in path.split("."):
        if value is None:
            return None
        value = getattr(value, name)
    return value


def needs_restart(old: Settings, new: Settings) -> list[str]:
    """The restart-only settings ``new`` changes, by name."""
    if (old.dfdaemon is None) != (new.dfdaemon is None):
        # Added or removed: the dfdaemon as a whole, not each of its fields.
        paths = [p for p in RESTART_ONLY if not p.startswith("dfdaemon.")]
    else:
        paths = [p for p in RESTART_ONLY if p != "dfdaemon"]
    return [p for p in paths if _value(old, p) != _value(new, p)]


def restart_message(names: list[str]) -> str:
    return f"{', '.join(names)} cannot change while shim runs; restart it to apply them"


def changes(old: Settings, new: Settings) -> list[str]:
    """What ``new`` changes, for a log line: names only, never a value (values hold secrets).
    Buckets by alias: ``+`` added, ``-`` removed, ``~`` changed (credentials, endpoint...)."""
    described = []
    for name in type(new).model_fields:
        if name == "buckets" or getattr(old, name) == getattr(new, name):
            continue
        described.append(name)
    before = {b.reverse_alias: b for b in old.buckets}
    after = {b.reverse_alias: b for b in new.buckets}
    buckets = [f"+{a}" for a in after if a not in before]
    buckets += [f"-{a}" for a in before if a not in after]
    buckets += [f"~{a}" for a in after if a in before and before[a] != after[a]]
    if buckets:
        described.insert(0, "buckets " + " ".join(buckets))
    return described


def _lifetime(bucket: BucketConfig, settings: Settings) -> int:
    return bucket.presign_expires or settings.presign_expires


def carry_signers(
    signers: Mapping[BucketConfig, CachedSigner], old: Settings, new: Settings
) -> dict[BucketConfig, CachedSigner]:
    """A signer for each bucket of ``new``: the running one where the bucket (credentials
    included) and its URL lifetime are unchanged, so its signed URLs and loaded credentials
    stay; a new one otherwise (may block: run it off the event loop)."""
    kept = {
        bucket
        for bucket in new.buckets
        if bucket in signers and _lifetime(bucket, old) == _lifetime(bucket, new)
    }
    fresh = signers_for((b for b in new.buckets if b not in kept), new.presign_expires)
    return {b: signers[b] if b in kept else fresh[b] for b in new.buckets}


def watched_file(path: Path | None, env: Mapping[str, str]) -> Path | None:
    """The file ``load_settings`` reads for ``path`` and ``env``; None: the defaults."""
    if path is not None:
        return path
    named = env.get("SHIM_CONFIG") or env.get("DRAGONFLY_ENDPOINT_CONFIG")
    return Path(named) if named else None


@dataclass(frozen=True, slots=True)
class FileState:
    """What tells one version of a file from the next."""

    resolved: str  # the path after every symlink: a ConfigMap update swaps one
    device: int
    inode: int
    mtime_ns: int
    size: int


def file_state(path: Path) -> FileState | None:
    """The state of the file at ``path`` (following symlinks); None when there is none."""
    try:
        resolved = path.resolve(strict=True)
        stat = resolved.stat()
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop
        return None
    return FileState(str(resolved), stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size)


class Reconfigurable(Protocol):
    """What reloading needs of the shim addon."""

    settings: Settings | None
    metrics: Metrics

    async def reconfigure(self, settings: Settings) -> None: ...


class ConfigReload:
    """A mitmproxy addon: reloads ``shim run``'s config on ``reload_soon`` (SIGHUP) and when the
    file changes. ``path`` and ``overrides`` are those the running config was loaded with."""

    def __init__(
        self,
        service: Reconfigurable,
        path: Path | None,
        *,
        env: Mapping[str, str],
        overrides: Mapping[str, Any],
    ) -> None:
        self._service = service
        self._path = path
        self._env = env
        self._overrides = overrides
        self._file = watched_file(path, env)
        # Taken now: the running config was read from this version of the file.
        self._seen = file_state(self._file) if self._file is not None else None
        self._lock = asyncio.Lock()  # one reload at a time, each against the config before
        self._tasks: set[asyncio.Task[Result]] = set()
        self._watcher: asyncio.Task[None] | None = None

    def running(self) -> None:
        if self._file is not None:
            self._watcher = asyncio.create_task(self._watch(self._file))

    async def done(self) -> None:
        for task in (self._watcher, *self._tasks):
            if task is not None:
                task.cancel()

    def reload_soon(self, trigger: str) -> None:
        """Reload in the background (from a signal handler). Not named after a hook: mitmproxy
        calls an addon's ``request`` for every request."""
        task = asyncio.create_task(self.reload(trigger))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reload(self, trigger: str) -> Result:
        async with self._lock:
            if self._file is not None:
                self._seen = file_state(self._file)  # what is read now; the watcher skips it
            try:
                result = await self._reload(trigger)
            except Exception as error:  # a bug, or an SDK failing unforeseen: the old config
                # and the watcher carry on. Its type only: an SDK's message may quote a secret.
                log.error(
                    "config reload (%s) failed (%s), the running config stays",
                    trigger,
                    type(error).__name__,
                )
                result = "refused"
        self._service.metrics.config_reloads.labels(result=result).inc()
        return result

    async def _reload(self, trigger: str) -> Result:
        current = self._service.settings
        assert current is not None, "configure() runs before any reload"
        try:
            new = await asyncio.to_thread(
                load_settings, self._path, env=self._env, overrides=self._overrides
            )
            if new == current:
                log.info("config reload (%s): nothing changed", trigger)
                return "unchanged"
            restart = needs_restart(current, new)
            if restart:
                raise ShimError(restart_message(restart))
            await self._service.reconfigure(new)
        except ShimError as error:  # messages name the key and the problem, never a value
            log.error("config reload (%s) refused, the running config stays: %s", trigger, error)
            return "refused"
        log.info("config reloaded (%s): %s", trigger, "; ".join(changes(current, new)))
        return "applied"

    async def _watch(self, file: Path) -> None:
        while True:
            settings = self._service.settings
            interval = settings.reload_poll if settings is not None else 0
            await asyncio.sleep(interval or _IDLE_POLL_SECONDS)
            if interval and file_state(file) != self._seen:
                await self.reload("file changed")
