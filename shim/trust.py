"""What clients need to trust and reach the proxy: the interception CA, a Java truststore that
holds the JDK's own CAs plus shim's, and the JVM options for TorchServe.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from shim._errors import ShimError

# mitmproxy names its CA files after this basename inside confdir.
CA_BASENAME = "mitmproxy"
CA_KEY_SIZE = 2048
TRUSTSTORE_PASSWORD = "changeit"  # noqa: S105 (a truststore holds no secret; Java's default)
# Where JDKs and distributions keep the default CA store, most specific first.
_JDK_CACERTS = ("lib/security/cacerts", "jre/lib/security/cacerts")
_SYSTEM_CACERTS = Path("/etc/ssl/certs/java/cacerts")
# Java's own default for http.nonProxyHosts; "" sends even localhost through the proxy.
JAVA_NON_PROXY_HOSTS = "localhost|127.*|[::1]"


class TrustError(ShimError):
    """The CA or truststore could not be written (no keytool, no JDK CA store...)."""


def ensure_ca(confdir: Path) -> Path:
    """Create shim's interception CA in ``confdir`` if it is not there; return its certificate
    (PEM). The proxy uses the same files, so a CA made here is the one it signs with."""
    from mitmproxy.certs import CertStore  # heavy; only this command needs it

    CertStore.from_store(confdir, CA_BASENAME, CA_KEY_SIZE)
    return confdir / f"{CA_BASENAME}-ca-cert.pem"


def find_jdk_cacerts(java_home: str | None, java_binary: str | None) -> Path:
    """The JDK's default CA store: under $JAVA_HOME, beside the ``java`` on PATH, or the
    distribution's shared one."""
    homes = [Path(java_home)] if java_home else []
    if java_binary:
        homes.append(Path(java_binary).resolve().parent.parent)
    for home in homes:
        for relative in _JDK_CACERTS:
            if (home / relative).is_file():
                return home / relative
    if _SYSTEM_CACERTS.is_file():
        return _SYSTEM_CACERTS
    raise TrustError("cannot find the JDK's cacerts: set JAVA_HOME or pass --jdk-cacerts")


def write_truststore(ca_cert: Path, jdk_cacerts: Path, out: Path, keytool: str) -> None:
    """A PKCS12 truststore with the JDK's CAs plus ``ca_cert``, written atomically to ``out``."""
    temp = out.with_name(f".{out.name}.tmp")
    temp.unlink(missing_ok=True)
    commands = [
        [
            keytool, "-importkeystore", "-noprompt",
            "-srckeystore", str(jdk_cacerts), "-srcstorepass", TRUSTSTORE_PASSWORD,
            "-destkeystore", str(temp), "-deststoretype", "PKCS12",
            "-deststorepass", TRUSTSTORE_PASSWORD,
        ],
        [
            keytool, "-importcert", "-noprompt", "-trustcacerts", "-alias", "shim-ca",
            "-file", str(ca_cert), "-keystore", str(temp), "-storetype", "PKCS12",
            "-storepass", TRUSTSTORE_PASSWORD,
        ],
    ]  # fmt: skip
    for command in commands:
        result = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603 (fixed argv, no shell)
        if result.returncode != 0:
            temp.unlink(missing_ok=True)
            raise TrustError(f"keytool failed: {(result.stderr or result.stdout).strip()}")
    temp.replace(out)


def export_trust(confdir: Path, out_dir: Path, jdk_cacerts: Path | None) -> tuple[Path, Path]:
    """Write ``shim-ca.pem`` and ``truststore.p12`` into ``out_dir``; return both paths."""
    keytool = shutil.which("keytool")
    if keytool is None:
        raise TrustError("keytool not found on PATH: install a JDK or JRE")
    cacerts = jdk_cacerts or find_jdk_cacerts(os.environ.get("JAVA_HOME"), shutil.which("java"))
    ca_cert = ensure_ca(confdir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pem, truststore = out_dir / "shim-ca.pem", out_dir / "truststore.p12"
    shutil.copyfile(ca_cert, pem)
    write_truststore(ca_cert, cacerts, truststore, keytool)
    return pem, truststore


@dataclass(frozen=True, slots=True)
class JvmProxy:
    host: str
    port: int
    truststore: Path | None = None
    non_proxy_hosts: str = JAVA_NON_PROXY_HOSTS
    connect_timeout_ms: int = 30_000
    read_timeout_ms: int = 300_000

    def options(self) -> list[str]:
        """JVM system properties that send HttpURLConnection (TorchServe's downloads) through
        the proxy, with timeouts, trusting shim's CA when a truststore is given."""
        props = [
            f"-Dhttp.proxyHost={self.host}",
            f"-Dhttp.proxyPort={self.port}",
            f"-Dhttps.proxyHost={self.host}",
            f"-Dhttps.proxyPort={self.port}",
            f"-Dhttp.nonProxyHosts={self.non_proxy_hosts}",
            f"-Dsun.net.client.defaultConnectTimeout={self.connect_timeout_ms}",
            f"-Dsun.net.client.defaultReadTimeout={self.read_timeout_ms}",
        ]
        if self.truststore is not None:
            props += [
                f"-Djavax.net.ssl.trustStore={self.truststore.resolve()}",
                f"-Djavax.net.ssl.trustStorePassword={TRUSTSTORE_PASSWORD}",
                "-Djavax.net.ssl.trustStoreType=PKCS12",
            ]
        return props


def render_env(proxy: JvmProxy) -> str:
    """The lines ``shim env`` prints: for TorchServe's JVM, then for everything else."""
    joined = " ".join(proxy.options())
    url = f"http://{proxy.host}:{proxy.port}"
    return "\n".join(
        [
            "# TorchServe: export before `torchserve --start` (any JVM reads it) ...",
            f"export JAVA_TOOL_OPTIONS='{joined}'",
            "# ... or put this line in its config.properties instead:",
            f"# vmargs={joined}",
            "# Other clients (curl, Python, Go):",
            f"export HTTP_PROXY={url} HTTPS_PROXY={url} http_proxy={url} https_proxy={url}",
            "",
        ]
    )
