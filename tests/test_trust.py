"""shim ca / shim env: the CA, the Java truststore and the JVM options."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from shim.cli import main
from shim.trust import TRUSTSTORE_PASSWORD, JvmProxy, find_jdk_cacerts, render_env


def test_jvm_options_route_http_and_https_with_timeouts() -> None:
    options = JvmProxy("10.0.0.5", 8790).options()
    assert "-Dhttp.proxyHost=10.0.0.5" in options
    assert "-Dhttps.proxyHost=10.0.0.5" in options
    assert "-Dhttp.proxyPort=8790" in options
    assert "-Dhttps.proxyPort=8790" in options
    assert "-Dhttp.nonProxyHosts=localhost|127.*|[::1]" in options
    assert any(o.startswith("-Dsun.net.client.defaultReadTimeout=") for o in options)
    assert not any("trustStore" in o for o in options)


def test_jvm_options_name_the_truststore_absolutely(tmp_path: Path) -> None:
    options = JvmProxy("h", 1, tmp_path / "ts.p12", non_proxy_hosts="").options()
    assert f"-Djavax.net.ssl.trustStore={tmp_path / 'ts.p12'}" in options
    assert f"-Djavax.net.ssl.trustStorePassword={TRUSTSTORE_PASSWORD}" in options
    assert "-Djavax.net.ssl.trustStoreType=PKCS12" in options
    assert "-Dhttp.nonProxyHosts=" in options


def test_env_prints_java_tool_options_vmargs_and_proxy_variables(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["env", "--proxy", "127.0.0.1:9999", "--non-proxy-hosts", ""]) == 0
    out = capsys.readouterr().out
    joined = " ".join(JvmProxy("127.0.0.1", 9999, non_proxy_hosts="").options())
    assert f"export JAVA_TOOL_OPTIONS='{joined}'" in out
    assert f"# vmargs={joined}" in out
    assert "HTTPS_PROXY=http://127.0.0.1:9999" in out
    assert out == render_env(JvmProxy("127.0.0.1", 9999, non_proxy_hosts=""))


def test_env_rejects_a_bad_proxy_address(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["env", "--proxy", "no-port"]) == 2
    assert "--proxy" in capsys.readouterr().err


# Java 17 is a prerequisite (README): without keytool this fails rather than skips.
@pytest.mark.slow
def test_ca_writes_the_ca_and_a_truststore_holding_jdk_and_shim_cas(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "shim.yaml"
    # A bucket whose credentials come from variables this step does not have: it signs nothing.
    config.write_text(
        f"confdir: {tmp_path / 'conf'}\n"
        "buckets: [{provider: s3, bucket: b, credentials: {source: env, "
        "access_key_id_env: SHIM_TEST_UNSET_KEY, secret_access_key_env: SHIM_TEST_UNSET}}]\n"
    )
    assert main(["ca", "--config", str(config), "--out", str(tmp_path / "out")]) == 0
    pem = (tmp_path / "out" / "shim-ca.pem").read_text()
    # The same CA the proxy will sign with, created in confdir.
    assert pem == (tmp_path / "conf" / "mitmproxy-ca-cert.pem").read_text()
    listing = subprocess.run(
        ["keytool", "-list", "-keystore", str(tmp_path / "out" / "truststore.p12"),
         "-storetype", "PKCS12", "-storepass", TRUSTSTORE_PASSWORD],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "shim-ca, " in listing
    jdk = subprocess.run(
        ["keytool", "-list", "-cacerts", "-storepass", TRUSTSTORE_PASSWORD],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    jdk_count = int(jdk.split("Your keystore contains ")[1].split()[0])
    count = int(listing.split("Your keystore contains ")[1].split()[0])
    assert count == jdk_count + 1
    # Run again: the same CA, a rewritten truststore.
    assert main(["ca", "--config", str(config), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "shim-ca.pem").read_text() == pem


def test_jdk_cacerts_found_under_java_home(tmp_path: Path) -> None:
    (tmp_path / "lib" / "security").mkdir(parents=True)
    (tmp_path / "lib" / "security" / "cacerts").write_bytes(b"x")
    assert find_jdk_cacerts(str(tmp_path), None) == tmp_path / "lib" / "security" / "cacerts"
