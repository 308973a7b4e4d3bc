"""The running shim against azurite, which checks every SAS: clients send plain, unsigned blob
URLs through the explicit proxy or to the reverse listener, as TorchServe does; shim signs them.
"""

from __future__ import annotations

import base64
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.support.azurite import (
    ACCOUNT,
    ACCOUNT_KEY,
    AzuriteServer,
    ManagedIdentityEndpoint,
    put_blob,
    start_azurite,
)
from tests.support.http import direct, via_proxy
from tests.support.keys import AWKWARD_KEYS
from tests.support.procs import free_port
from tests.support.shim_process import ShimProcess, start_shim
from tests.support.tls import make_pki

pytestmark = pytest.mark.slow

CONTAINER = "models"
# A container shim signs for with a well-formed key that is not the account's.
WRONG_KEY_CONTAINER = "wrong-key"
WRONG_KEY = base64.b64encode(b"a well-formed key, not the account's").decode()

AWKWARD_NAMES = AWKWARD_KEYS


def azure_bucket_config(endpoint: str, container: str = CONTAINER, **fields: Any) -> dict[str, Any]:
    """A bucket for azurite's account, signing with its key unless ``credentials`` is given."""
    return {
        "provider": "azure",
        "account": ACCOUNT,
        "container": container,
        "endpoint": endpoint,
        "credentials": {"source": "static", "account_key": ACCOUNT_KEY},
        **fields,
    }


def blob_url(server: AzuriteServer, name: str, container: str = CONTAINER) -> str:
    return f"{server.endpoint}/{container}/{quote(name, safe='/')}"


def no_identity_env(home: Path) -> dict[str, str]:
    """An environment in which DefaultAzureCredential finds no identity and probes loopback
    only (the instance metadata service's address points at a closed port)."""
    home.mkdir(parents=True, exist_ok=True)
    return {
        "HOME": str(home),
        "AZURE_POD_IDENTITY_AUTHORITY_HOST": f"http://127.0.0.1:{free_port()}",
    }


def wait_for_output(shim: ShimProcess, pattern: str, timeout: float = 40.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        output = shim.output()
        if re.search(pattern, output):
            return output
        time.sleep(0.2)
    raise AssertionError(f"{pattern!r} not in shim's output:\n{shim.output()}")


@pytest.fixture(scope="module")
def reverse_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def shim(
    azurite: AzuriteServer, reverse_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ShimProcess]:
    config = {
        "reverse": f"127.0.0.1:{reverse_port}",
        "buckets": [
            azure_bucket_config(azurite.endpoint),
            azure_bucket_config(
                azurite.endpoint,
                WRONG_KEY_CONTAINER,
                credentials={"source": "static", "account_key": WRONG_KEY},
            ),
        ],
    }
    with start_shim(tmp_path_factory.mktemp("shim"), config) as process:
        yield process


def test_azurite_refuses_the_unsigned_url_clients_send(azurite: AzuriteServer) -> None:
    put_blob(azurite, CONTAINER, "private.mar", b"private")
    assert direct(blob_url(azurite, "private.mar")).status == 403


@pytest.mark.parametrize("name", AWKWARD_NAMES)
def test_awkward_names_download_byte_identical_through_the_proxy_and_the_reverse_listener(
    shim: ShimProcess, azurite: AzuriteServer, reverse_port: int, name: str
) -> None:
    body = os.urandom(70_000) + name.encode()
    put_blob(azurite, CONTAINER, name, body)
    proxied = via_proxy(shim.proxy_port, blob_url(azurite, name))
    assert proxied.status == 200, proxied.body[:300]
    assert (proxied.body, proxied.headers["X-Shim-Cache"]) == (body, "MISS")
    reverse = direct(f"http://127.0.0.1:{reverse_port}/{CONTAINER}/{quote(name, safe='/')}")
    assert reverse.status == 200, reverse.body[:300]
    assert (reverse.body, reverse.headers["X-Shim-Cache"]) == (body, "HIT")
    assert reverse.headers["X-Shim-Task-Id"] == proxied.headers["X-Shim-Task-Id"]


def test_two_downloads_are_one_cache_entry_and_one_origin_fetch(
    shim: ShimProcess, azurite: AzuriteServer
) -> None:
    body = os.urandom(1024 * 1024)
    put_blob(azurite, CONTAINER, "twice.mar", body)
    before = shim.metrics()
    url = blob_url(azurite, "twice.mar")
    first = via_proxy(shim.proxy_port, url)
    # A client pasting a SAS of its own: dropped, the blob signed again, the same entry.
    stale = "sv=2020-01-01&se=2020-01-01T00%3A00%3A00Z&sr=b&sp=r&sig=c3RhbGU%3D"
    second = via_proxy(shim.proxy_port, f"{url}?{stale}")
    after = shim.metrics()
    assert (first.status, second.status) == (200, 200)
    assert first.body == second.body == body
    assert (first.headers["X-Shim-Cache"], second.headers["X-Shim-Cache"]) == ("MISS", "HIT")
    assert first.headers["X-Shim-Task-Id"] == second.headers["X-Shim-Task-Id"]
    fetches = after["shim_origin_fetches_total"] - before["shim_origin_fetches_total"]
    origin_bytes = after["shim_origin_bytes_total"] - before["shim_origin_bytes_total"]
    assert (fetches, origin_bytes) == (1, len(body))
    task_id = first.headers["X-Shim-Task-Id"]
    assert (shim.cache_dir / "objects" / task_id[:2] / task_id).stat().st_size == len(body)


def test_writes_are_refused_and_never_signed(shim: ShimProcess, azurite: AzuriteServer) -> None:
    put_blob(azurite, CONTAINER, "keep.mar", b"keep")
    reply = via_proxy(shim.proxy_port, blob_url(azurite, "keep.mar"), method="DELETE")
    assert (reply.status, reply.headers["X-Shim-Error"]) == (403, "method")
    assert via_proxy(shim.proxy_port, blob_url(azurite, "keep.mar")).body == b"keep"


def test_the_log_and_error_bodies_hold_no_account_key_and_no_signature(
    shim: ShimProcess, azurite: AzuriteServer
) -> None:
    """Run after the downloads above: the log of all of them, and of two origin errors."""
    missing = via_proxy(shim.proxy_port, blob_url(azurite, "missing/blob.mar"))
    assert missing.status == 404
    put_blob(azurite, WRONG_KEY_CONTAINER, "model.mar", b"model")
    refused = via_proxy(shim.proxy_port, blob_url(azurite, "model.mar", WRONG_KEY_CONTAINER))
    assert refused.status == 403
    assert b"AuthorizationFailure" in refused.body
    output = shim.output()
    assert "origin answered 404" in output
    assert "origin answered 403" in output
    for text in (output, refused.body.decode(), missing.body.decode()):
        assert ACCOUNT_KEY not in text
        assert WRONG_KEY not in text
        assert not re.search(r"sig=(?!REDACTED)", text), text


def test_credentials_that_cannot_load_are_reported_at_start_up(
    azurite: AzuriteServer, tmp_path: Path
) -> None:
    broken_key = "not base64!" + ACCOUNT_KEY[11:]
    config = {
        "buckets": [
            # An identity's token goes over https only; no identity, so nothing listens there.
            azure_bucket_config(
                f"https://127.0.0.1:{free_port()}/{ACCOUNT}",
                "no-identity",
                credentials={"source": "default"},
            ),
            azure_bucket_config(
                azurite.endpoint,
                "broken-key",
                credentials={"source": "static", "account_key": broken_key},
            ),
        ]
    }
    env = no_identity_env(tmp_path / "home")
    with start_shim(tmp_path / "shim", config, env=env) as shim:
        # Before any download: the start-up check says which bucket and why.
        output = wait_for_output(shim, r"bucket 'no-identity' \(azure\): no Azure identity")
        output = wait_for_output(shim, r"bucket 'broken-key' \(azure\): .*not base64")
        assert "managed identity" in output
        assert broken_key not in output
        assert ACCOUNT_KEY[11:] not in output
        metrics = shim.metrics()
        for bucket in ("no-identity", "broken-key"):
            assert metrics[f'shim_bucket_credentials{{bucket="{bucket}",provider="azure"}}'] == 0


# -- a managed identity: user delegation SAS, signed without any account key ---------------------


@pytest.fixture(scope="module")
def oauth_azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteServer]:
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    data = tmp_path_factory.mktemp("azurite-oauth")
    with start_azurite(data, oauth_pki=(pki.ca_cert, pki.server_cert, pki.server_key)) as server:
        yield server


@pytest.fixture
def delegating_shim(
    oauth_azurite: AzuriteServer, tmp_path: Path
) -> Iterator[tuple[ShimProcess, ManagedIdentityEndpoint]]:
    """shim with a `source: default` bucket, on a host whose managed identity (App Service's
    endpoint, on loopback) is all it has; it trusts azurite's CA as requests does."""
    assert oauth_azurite.ca_cert is not None
    config = {
        "buckets": [azure_bucket_config(oauth_azurite.endpoint, credentials={"source": "default"})]
    }
    with ManagedIdentityEndpoint() as identity:
        env = {
            **no_identity_env(tmp_path / "home"),
            **identity.environment(),
            "REQUESTS_CA_BUNDLE": str(oauth_azurite.ca_cert),
            "SSL_CERT_FILE": str(oauth_azurite.ca_cert),
        }
        with start_shim(tmp_path / "shim", config, env=env) as shim:
            yield shim, identity


def test_a_managed_identity_is_checked_at_start_up(
    delegating_shim: tuple[ShimProcess, ManagedIdentityEndpoint],
) -> None:
    shim, identity = delegating_shim
    key = f'shim_bucket_credentials{{bucket="{CONTAINER}",provider="azure"}}'
    deadline = time.monotonic() + 40
    while key not in shim.metrics() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert shim.metrics()[key] == 1, shim.output()
    assert identity.requests == 1


def test_a_delegation_sas_downloads_through_the_proxy(
    delegating_shim: tuple[ShimProcess, ManagedIdentityEndpoint], oauth_azurite: AzuriteServer
) -> None:
    shim, _ = delegating_shim
    body = os.urandom(200_000)
    put_blob(oauth_azurite, CONTAINER, "delegated model.mar", body)
    url = blob_url(oauth_azurite, "delegated model.mar")
    first = via_proxy(shim.proxy_port, url, ca_cert=shim.ca_cert)
    assert first.status == 200, first.body[:300]
    assert first.body == body
    again = via_proxy(shim.proxy_port, url, ca_cert=shim.ca_cert)
    assert (again.headers["X-Shim-Cache"], again.body) == ("HIT", body)
