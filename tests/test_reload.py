"""Config reload: what needs a restart, what a reload says it changed, which signers carry
over, how a changed file is told, and ConfigReload driving the real addon (in-process)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons

from shim.addon import ShimAddon
from shim.config import Settings, load_settings, settings_from_mapping
from shim.reload import (
    RESTART_ONLY,
    ConfigReload,
    carry_signers,
    changes,
    file_state,
    needs_restart,
    watched_file,
)
from shim.signing import signers_for

SECRET = "wJalrXUtnFEMI-reload-unit-secret"


def creds(secret: str = "k") -> dict[str, Any]:
    return {"source": "static", "access_key_id": "AKIDRELOAD", "secret_access_key": secret}


def bucket(name: str, **extra: Any) -> dict[str, Any]:
    return {"provider": "s3", "bucket": name, "credentials": creds(), **extra}


BASE: dict[str, Any] = {
    "admin": "127.0.0.1:0",
    "dfdaemon": {"url": "http://127.0.0.1:4001", "tag": "t"},
    "buckets": [bucket("models")],
}


def settings(**change: Any) -> Settings:
    return settings_from_mapping({**BASE, **change}, env={})


# -- what needs a restart -------------------------------------------------------------------------

RESTART_CHANGES = {
    "listen": {"listen": "127.0.0.1:9"},
    "admin": {"admin": "127.0.0.1:9"},
    "transparent": {"transparent": "127.0.0.1:9"},
    "reverse": {"reverse": "127.0.0.1:9"},
    "s3_api.listen": {"s3_api": "127.0.0.1:9"},
    "confdir": {"confdir": "/elsewhere"},
    "cache.dir": {"cache": {"dir": "/elsewhere"}},
    "cache.max_size": {"cache": {"max_size": "1GiB"}},
    "cache.min_free": {"cache": {"min_free": "1MiB"}},
    "cache.high_watermark": {"cache": {"high_watermark": 0.95}},
    "cache.low_watermark": {"cache": {"low_watermark": 0.5}},
    "origin_timeout": {"origin_timeout": 5},
    "dfdaemon": {"dfdaemon": None},
    "dfdaemon.tag": {"dfdaemon": {"url": "http://127.0.0.1:4001", "tag": "other"}},
    "dfdaemon.keep_copy": {"dfdaemon": {**BASE["dfdaemon"], "keep_copy": True}},
    "dfdaemon.link_dir": {"dfdaemon": {**BASE["dfdaemon"], "link_dir": "/links"}},
}


def test_every_restart_only_setting_is_told_and_named() -> None:
    assert set(RESTART_CHANGES) == set(RESTART_ONLY)
    for name, change in RESTART_CHANGES.items():
        assert needs_restart(settings(), settings(**change)) == [name]
    both = settings(listen="127.0.0.1:9", cache={"dir": "/elsewhere"})
    assert needs_restart(settings(), both) == ["listen", "cache.dir"]
    assert needs_restart(settings(dfdaemon=None), settings()) == ["dfdaemon"]  # added


def test_everything_else_applies_live() -> None:
    live: dict[str, Any] = {
        "buckets": [bucket("models", credentials=creds("new")), bucket("more")],
        "passthrough": ["pypi.org"],
        "clients": ["10.0.0.0/8"],
        "proxy_auth": {"username": "u", "password": "p"},
        "headers": {"X-Team": "ml"},
        "filter": ["token"],
        "presign_expires": 600,
        "limits": {"request_head_timeout": 5},
        "shutdown_grace": 3,
        "reload_poll": 0,
        "log_format": "json",
        "metrics": {"top_objects": 5},
        "admin_token": "a-new-admin-token-0123",
        "cache": {"zero_copy_hits": False},
        "dfdaemon": {
            "url": "http://127.0.0.1:65001",
            "tag": "t",
            "application": "a",
            "priority": 2,
            "fallback": False,
            "connect_timeout": 1,
        },
    }
    assert needs_restart(settings(), settings(**live)) == []


# -- what a reload says it changed ----------------------------------------------------------------


def test_changes_are_named_never_their_values() -> None:
    old = settings(buckets=[bucket("models"), bucket("gone")])
    new = settings(
        buckets=[bucket("models", credentials=creds(SECRET)), bucket("new")],
        proxy_auth={"username": "u", "password": SECRET},
        headers={"Authorization": SECRET},
    )
    described = changes(old, new)
    assert described == ["buckets +new -gone ~models", "headers", "proxy_auth"]
    assert SECRET not in repr(described)
    assert changes(old, old) == []


# -- which signers carry over ---------------------------------------------------------------------


def test_unchanged_buckets_keep_their_signer_and_changed_ones_get_a_new_one() -> None:
    old = settings(buckets=[bucket("same"), bucket("rotated"), bucket("own", presign_expires=900)])
    running = signers_for(old.buckets, old.presign_expires)
    new = settings(
        presign_expires=old.presign_expires,
        buckets=[
            bucket("same"),
            bucket("rotated", credentials=creds("new")),
            bucket("own", presign_expires=900),
            bucket("added"),
        ],
    )
    carried = carry_signers(running, old, new)
    same, rotated, own, added = new.buckets
    assert list(carried) == list(new.buckets)
    assert carried[same] is running[old.buckets[0]]
    assert carried[own] is running[old.buckets[2]]
    assert carried[rotated] is not running[old.buckets[1]]
    assert added not in running

    # A new default URL lifetime: a new signer for each bucket that uses the default.
    longer = settings(
        presign_expires=7200, buckets=[bucket("same"), bucket("own", presign_expires=900)]
    )
    carried = carry_signers(running, old, longer)
    assert carried[same] is not running[old.buckets[0]]
    assert carried[own] is running[old.buckets[2]]


# -- the file watched, and how a change is told ---------------------------------------------------


def test_the_watched_file_is_the_one_load_settings_reads(tmp_path: Path) -> None:
    given, named, endpoint = tmp_path / "a.yaml", tmp_path / "b.yaml", tmp_path / "c.json"
    env = {"SHIM_CONFIG": str(named), "DRAGONFLY_ENDPOINT_CONFIG": str(endpoint)}
    assert watched_file(given, env) == given
    assert watched_file(None, env) == named
    assert watched_file(None, {"DRAGONFLY_ENDPOINT_CONFIG": str(endpoint)}) == endpoint
    assert watched_file(None, {}) is None


def test_a_write_in_place_an_editors_rename_and_a_configmap_swap_are_all_told(
    tmp_path: Path,
) -> None:
    config = tmp_path / "shim.yaml"
    config.write_text("a: 1\n")
    first = file_state(config)
    assert first is not None and file_state(config) == first

    config.write_text("a: 2\n")  # same size, in place
    os.utime(config, ns=(first.mtime_ns + 1, first.mtime_ns + 1))
    in_place = file_state(config)
    assert in_place is not None and in_place != first and in_place.inode == first.inode

    saved = tmp_path / ".shim.yaml.swp"  # an editor writes a new file and renames it over
    saved.write_text("a: 3\n")
    os.utime(saved, ns=(in_place.mtime_ns, in_place.mtime_ns))
    saved.replace(config)
    renamed = file_state(config)
    assert renamed is not None and renamed.inode != in_place.inode

    # A ConfigMap volume: shim.yaml -> ..data/shim.yaml, ..data -> the current version's dir.
    volume = tmp_path / "volume"
    for version in ("v1", "v2"):
        (volume / version).mkdir(parents=True)
        (volume / version / "shim.yaml").write_text("a: 1\n")
        os.utime(volume / version / "shim.yaml", ns=(first.mtime_ns, first.mtime_ns))
    (volume / "..data").symlink_to("v1")
    (volume / "shim.yaml").symlink_to("..data/shim.yaml")
    before = file_state(volume / "shim.yaml")
    (volume / "..data_tmp").symlink_to("v2")
    (volume / "..data_tmp").replace(volume / "..data")
    after = file_state(volume / "shim.yaml")
    assert before is not None and after is not None
    assert (before.size, before.mtime_ns) == (after.size, after.mtime_ns)
    assert after.resolved.endswith("v2/shim.yaml") and after != before

    config.unlink()
    assert file_state(config) is None
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert file_state(loop) is None


# -- ConfigReload with the real addon -------------------------------------------------------------


def write_config(path: Path, raw: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(raw))


@dataclass
class Running:
    addon: ShimAddon
    reload: ConfigReload
    config: Path
    loop: asyncio.AbstractEventLoop

    def run[T](self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    def rewrite(self, **change: Any) -> None:
        write_config(self.config, {**yaml.safe_load(self.config.read_text()), **change})

    def reloads(self, result: str) -> float:
        value = self.addon.metrics.registry.get_sample_value(
            "shim_config_reloads_total", {"result": result}
        )
        return value or 0.0

    def eventually(self, predicate: Callable[[], bool]) -> None:
        async def wait() -> None:
            async with asyncio.timeout(5):
                # Polled: a metric or a setting, which signal nothing when they change.
                while not predicate():  # noqa: ASYNC110
                    await asyncio.sleep(0.01)

        self.run(wait())


@contextlib.contextmanager
def running(
    tmp_path: Path, raw: dict[str, Any], overrides: dict[str, Any] | None = None
) -> Iterator[Running]:
    """The addon and a ConfigReload of a file holding ``raw``, loaded and running as
    ``shim run`` has them, on a loop of their own."""
    config = tmp_path / "shim.yaml"
    write_config(config, {"admin": "127.0.0.1:0", "cache": {"dir": str(tmp_path / "cache")}, **raw})
    overrides = overrides or {}
    addon = ShimAddon(load_settings(config, env={}, overrides=overrides))
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        with taddons.context(Proxyserver(), addon) as tctx:
            tctx.configure(addon)
            reload = ConfigReload(addon, config, env={}, overrides=overrides)
            state = Running(addon, reload, config, loop)
            loop.call_soon(reload.running)
            try:
                yield state
            finally:
                state.run(reload.done())
                state.run(addon.done())
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def test_a_good_config_is_applied_whole_and_unchanged_buckets_keep_their_signer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.INFO, logger="shim"),
        running(tmp_path, {"reload_poll": 0, "buckets": [bucket("models")]}) as shim,
    ):
        old = shim.addon.settings
        assert old is not None
        kept = shim.addon._signers[old.buckets[0]]
        shim.rewrite(buckets=[bucket("models"), bucket("added")], passthrough="all")
        assert shim.run(shim.reload.reload("SIGHUP")) == "applied"
        new = shim.addon.settings
        assert new is not None and new.passthrough == "all"
        assert [b.reverse_alias for b in new.buckets] == ["models", "added"]
        assert shim.addon._signers[new.buckets[0]] is kept
        assert shim.run(shim.reload.reload("SIGHUP")) == "unchanged"
        assert (shim.reloads("applied"), shim.reloads("unchanged")) == (1, 1)
    assert "config reloaded (SIGHUP): buckets +added; passthrough" in caplog.text
    assert "config reload (SIGHUP): nothing changed" in caplog.text


BROKEN: dict[str, tuple[dict[str, Any] | str | None, str]] = {
    "bad YAML": (f"buckets:\n- secret_access_key: {SECRET}: x\n", "not valid YAML at line 2"),
    "a schema error": (
        {"buckets": [{**bucket("models"), "credentials": [SECRET]}]},
        "buckets[0].credentials: Input should be a valid dictionary",
    ),
    "a restart-only change": (
        {"listen": "127.0.0.1:9", "buckets": [bucket("m", credentials=creds(SECRET))]},
        "listen cannot change while shim runs; restart it to apply them",
    ),
    "an unset variable": (
        {"buckets": [{**bucket("models"), "credentials": {"source": "env"}}]},
        "buckets[0].credentials",
    ),
    "no file": (None, "cannot read the config file"),
}


@pytest.mark.parametrize("broken", BROKEN)
def test_a_broken_config_is_refused_in_one_line_without_its_secrets_and_changes_nothing(
    broken: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    change, reason = BROKEN[broken]
    with (
        caplog.at_level(logging.INFO, logger="shim"),
        running(tmp_path, {"reload_poll": 0, "buckets": [bucket("models")]}) as shim,
    ):
        settings, signers = shim.addon.settings, shim.addon._signers
        if change is None:
            shim.config.unlink()
        elif isinstance(change, str):
            shim.config.write_text(change)
        else:
            shim.rewrite(**change)  # over the running admin and cache: only what is broken differs
        assert shim.run(shim.reload.reload("SIGHUP")) == "refused"
        assert shim.addon.settings is settings and shim.addon._signers is signers
        assert shim.reloads("refused") == 1
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == 1, caplog.text
    assert lines[0].startswith("config reload (SIGHUP) refused, the running config stays: ")
    assert reason in lines[0]
    assert SECRET not in caplog.text


def test_the_command_line_flags_stay_on_top_of_the_reloaded_file(tmp_path: Path) -> None:
    # As `shim run --listen 127.0.0.1:9`: the file's own listen never counts as a change.
    overrides = {"listen": "127.0.0.1:9"}
    with running(tmp_path, {"reload_poll": 0, "listen": "127.0.0.1:7"}, overrides) as shim:
        shim.rewrite(passthrough="all")
        assert shim.run(shim.reload.reload("SIGHUP")) == "applied"
        assert shim.addon.settings is not None and shim.addon.settings.listen == "127.0.0.1:9"


def test_the_watcher_reloads_a_changed_file_once_and_a_broken_one_is_not_retried(
    tmp_path: Path,
) -> None:
    with running(tmp_path, {"reload_poll": 0.02}) as shim:
        good = yaml.safe_load(shim.config.read_text())
        shim.rewrite(buckets=[bucket("added")])
        shim.eventually(lambda: shim.reloads("applied") == 1)
        shim.config.write_text("buckets: [\n")
        shim.eventually(lambda: shim.reloads("refused") == 1)
        shim.run(asyncio.sleep(0.3))  # many polls: the same broken file is not read again
        assert shim.reloads("refused") == 1
        write_config(shim.config, {**good, "reload_poll": 0})  # good, and the watch turned off
        shim.eventually(lambda: shim.reloads("applied") == 2)
        shim.rewrite(passthrough="all")
        shim.run(asyncio.sleep(0.3))
        assert shim.reloads("applied") == 2
        assert shim.addon.settings is not None and shim.addon.settings.passthrough == "none"


def test_an_unforeseen_failure_is_refused_by_its_type_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(*args: object) -> None:
        raise RuntimeError(f"an SDK quoting {SECRET}")

    with (
        caplog.at_level(logging.INFO, logger="shim"),
        running(tmp_path, {"reload_poll": 0}) as shim,
    ):
        monkeypatch.setattr("shim.addon.carry_signers", failing)
        settings = shim.addon.settings
        shim.rewrite(buckets=[bucket("added")])
        assert shim.run(shim.reload.reload("SIGHUP")) == "refused"
        assert shim.addon.settings is settings
    assert "config reload (SIGHUP) failed (RuntimeError), the running config stays" in caplog.text
    assert SECRET not in caplog.text
