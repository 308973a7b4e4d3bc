"""``shim prefetch``'s wiring: where the proxy is, its credentials, shim's CA, and usage errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from shim._errors import ConfigError
from shim.cli import main
from shim.config import settings_from_mapping
from shim.prefetch.command import proxy_target


def test_the_proxy_defaults_to_listen_and_a_wildcard_is_reached_on_loopback(
    tmp_path: Path,
) -> None:
    settings = settings_from_mapping({"confdir": str(tmp_path)}, env={})
    assert proxy_target(settings, None, {}).url == "http://127.0.0.1:8790"
    anywhere = settings_from_mapping(
        {"listen": "0.0.0.0:9000", "clients": ["10.0.0.0/8"], "confdir": str(tmp_path)}, env={}
    )
    assert proxy_target(anywhere, None, {}).url == "http://127.0.0.1:9000"
    assert proxy_target(settings, "[::1]:9100", {}).url == "http://[::1]:9100"
    assert proxy_target(settings, None, {}).ca_cert is None  # no CA in confdir yet
    (tmp_path / "mitmproxy-ca-cert.pem").write_text("pem")
    assert proxy_target(settings, None, {}).ca_cert == tmp_path / "mitmproxy-ca-cert.pem"


def test_proxy_credentials_come_from_the_config_or_its_variable(tmp_path: Path) -> None:
    inline = settings_from_mapping(
        {"proxy_auth": {"username": "u", "password": "p4ss"}}, env={}, credentials=False
    )
    assert proxy_target(inline, None, {}).auth == ("u", "p4ss")
    by_env = settings_from_mapping(
        {"proxy_auth": {"username": "u", "password_env": "PROXY_PW"}}, env={}, credentials=False
    )
    assert proxy_target(by_env, None, {"PROXY_PW": "from-env"}).auth == ("u", "from-env")
    with pytest.raises(ConfigError, match="'PROXY_PW' is not set"):
        proxy_target(by_env, None, {})


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["prefetch"], "shim: no URL to prefetch\n"),
        (["prefetch", "--proxy", "nope", "http://h/a"], "shim: expected HOST:PORT"),
        (["prefetch", "--parallel", "0", "http://h/a"], "shim: --parallel: at least 1\n"),
        (["prefetch", "--from-file", "/nonexistent/list"], "shim: --from-file /nonexistent/list"),
    ],
)
def test_usage_errors_exit_2_before_any_download(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "shim.yaml"
    config.write_text(f"confdir: {tmp_path}\n")
    assert main([*argv, "--config", str(config)]) == 2
    assert capsys.readouterr().err.startswith(message)


def test_https_urls_need_shims_ca(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "shim.yaml"
    config.write_text(f"confdir: {tmp_path}\n")
    assert main(["prefetch", "--config", str(config), "https://h/a"]) == 2
    assert f"shim's CA is not in {tmp_path}" in capsys.readouterr().err
