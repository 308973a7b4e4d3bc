"""Config reload of the real ``shim run``: on SIGHUP and on a change of the config file, new
buckets and credentials apply while a slow download in flight finishes untouched; a broken
config, or one that needs a restart, is refused in one log line (never a secret) and the
running config serves on."""

from __future__ import annotations

import concurrent.futures
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.test_shutdown import Download, until
from tests.support.http import via_proxy
from tests.support.relay import RelayFactory
from tests.support.servers import S3Server, put_objects
from tests.support.shim_process import ShimProcess, s3_bucket_config, start_shim

pytestmark = pytest.mark.slow

MIB = 1024 * 1024
RUNNING = "reload-running"  # its credentials change while a download from it is in flight
ADDED = "reload-added"  # in the new config only
FIXED = "reload-fixed"  # a wrong secret, corrected by the new config
WRONG_SECRET = "not-the-secret"
# In refused configs only: must never reach the log.
SECRET = "wJalrXUtnFEMI-K7MDENG-reload-secret"


@pytest.fixture(scope="module")
def objects(s3rver: S3Server) -> dict[str, bytes]:
    return put_objects(
        s3rver,
        {
            f"{RUNNING}/slow.bin": os.urandom(16 * MIB),
            f"{RUNNING}/later.bin": os.urandom(1000),
            f"{ADDED}/new.bin": os.urandom(3 * MIB),
            f"{FIXED}/fixed.bin": os.urandom(2000),
        },
    )


def get(shim: ShimProcess, endpoint: str, path: str) -> tuple[int, bytes]:
    reply = via_proxy(shim.proxy_port, f"{endpoint}/{path}")
    return reply.status, reply.body


def rewrite(shim: ShimProcess, change: dict[str, Any]) -> None:
    """Rewrite the config file in place with ``change`` on top of what it holds."""
    config = shim.workdir / "shim.yaml"
    config.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), **change}))


def configmap_layout(workdir: Path) -> None:
    """shim.yaml as a Kubernetes ConfigMap volume shows it: a symlink through ``..data``, a
    symlink to the directory of the current version."""
    (workdir / "v1").mkdir()
    (workdir / "..data").symlink_to("v1")
    (workdir / "shim.yaml").symlink_to("..data/shim.yaml")


def configmap_update(shim: ShimProcess, change: dict[str, Any]) -> None:
    """As the kubelet updates a ConfigMap volume: a new directory, then ``..data`` swapped to
    it by a rename; the old version's file is left as it was."""
    workdir = shim.workdir
    current = yaml.safe_load((workdir / "shim.yaml").read_text())
    (workdir / "v2").mkdir()
    (workdir / "v2" / "shim.yaml").write_text(yaml.safe_dump({**current, **change}))
    (workdir / "..data_tmp").symlink_to("v2")
    (workdir / "..data_tmp").replace(workdir / "..data")


@pytest.mark.parametrize("trigger", ["SIGHUP", "file changed"])
def test_new_buckets_and_credentials_apply_while_a_download_in_flight_finishes(
    trigger: str,
    tmp_path: Path,
    s3rver: S3Server,
    objects: dict[str, bytes],
    relay_factory: RelayFactory,
) -> None:
    # The running bucket's origin is slowed: 16 MiB at 2 MB/s, about 8 s in flight.
    relay = relay_factory(s3rver.host, s3rver.port, rate_limit_bytes_per_s=2e6)
    running = s3_bucket_config(RUNNING, relay.endpoint)
    fixed = s3_bucket_config(FIXED, s3rver.endpoint, secret_key=WRONG_SECRET)
    # SIGHUP only, or a watch of the file (a ConfigMap) and no signal.
    watching = trigger == "file changed"
    if watching:
        configmap_layout(tmp_path)
    config = {"reload_poll": 1 if watching else 0, "buckets": [running, fixed]}
    shim = start_shim(tmp_path, config)
    with shim, concurrent.futures.ThreadPoolExecutor(1) as reader:
        assert get(shim, s3rver.endpoint, f"{FIXED}/fixed.bin")[0] == 403  # the origin's
        assert get(shim, s3rver.endpoint, f"{ADDED}/new.bin")[0] == 403  # shim's: no bucket
        download = Download(shim.proxy_port, f"{relay.endpoint}/{RUNNING}/slow.bin")
        assert download.response.status == 200
        rest = reader.submit(download.rest)

        new_buckets = [
            s3_bucket_config(RUNNING, relay.endpoint, secret_key=WRONG_SECRET),
            s3_bucket_config(FIXED, s3rver.endpoint),
            s3_bucket_config(ADDED, s3rver.endpoint),
        ]
        if watching:
            configmap_update(shim, {"buckets": new_buckets})
        else:
            rewrite(shim, {"buckets": new_buckets})
            os.kill(shim.pid, signal.SIGHUP)
        applied = f"config reloaded ({trigger}): buckets +{ADDED} ~{RUNNING} ~{FIXED}"
        assert until(lambda: applied in shim.output(), timeout=10), shim.output()

        added = get(shim, s3rver.endpoint, f"{ADDED}/new.bin")
        assert added == (200, objects[f"{ADDED}/new.bin"])
        assert get(shim, s3rver.endpoint, f"{FIXED}/fixed.bin") == (
            200,
            objects[f"{FIXED}/fixed.bin"],
        )
        # The running bucket's new (wrong) secret signs its new requests...
        assert get(shim, relay.endpoint, f"{RUNNING}/later.bin")[0] == 403
        assert not rest.done(), "the download should still be in flight after the reload"
        # ...while the download it signed before finishes, every byte right.
        assert rest.result(timeout=60) == objects[f"{RUNNING}/slow.bin"]
        download.close()
        assert shim.metrics()['shim_config_reloads_total{result="applied"}'] == 1
        output = shim.output()
    assert "Traceback" not in output


def test_a_broken_config_or_one_that_needs_a_restart_is_refused_and_the_old_one_serves(
    tmp_path: Path, s3rver: S3Server, objects: dict[str, bytes]
) -> None:
    running = s3_bucket_config(RUNNING, s3rver.endpoint)
    shim = start_shim(tmp_path, {"reload_poll": 0, "buckets": [running]})
    config = shim.workdir / "shim.yaml"
    good = config.read_text()
    with_secret = {
        **running,
        "credentials": {**running["credentials"], "secret_access_key": SECRET},
    }
    broken = {
        # The line holding the secret is the one that does not parse.
        "bad YAML": good + f"  secret_access_key: {SECRET}: more\n",
        "a schema error": yaml.safe_dump(
            {
                **yaml.safe_load(good),
                "buckets": [with_secret, {**with_secret, "bucket": ADDED, "credentials": [SECRET]}],
            }
        ),
        "a change that needs a restart": yaml.safe_dump(
            {**yaml.safe_load(good), "listen": "127.0.0.1:1", "buckets": [with_secret]}
        ),
    }
    expected = {
        "bad YAML": f"{config}: not valid YAML at line",
        "a schema error": f"{config}: buckets[1].credentials: Input should be a valid dict",
        "a change that needs a restart": "listen cannot change while shim runs; restart it",
    }
    with shim:
        for name, text in broken.items():
            config.write_text(text)
            os.kill(shim.pid, signal.SIGHUP)
            line = f"config reload (SIGHUP) refused, the running config stays: {expected[name]}"
            assert until(lambda line=line: line in shim.output(), timeout=10), (name, shim.output())
            # Still the running config: the bucket it had serves, with its secret.
            path = f"{RUNNING}/later.bin"
            assert get(shim, s3rver.endpoint, path) == (200, objects[path]), name
        refused = shim.metrics()['shim_config_reloads_total{result="refused"}']
        output = shim.output()
    assert refused == len(broken), output
    assert SECRET not in output
    assert sum("refused" in line for line in output.splitlines()) == len(broken)
    assert "Traceback" not in output
