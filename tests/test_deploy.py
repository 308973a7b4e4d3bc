"""Deployment artefacts (deploy/): scripts/validate-deploy lints the Dockerfile, renders the Helm
chart for every shape (and the example chart that includes shim-lib) and validates each object
against the Kubernetes schema. These tests run it once, then check in the rendered manifests
what each shape promises, run the same helm on the values the chart must refuse, load every
rendered shim.yaml with shim's own loader, start a real TorchServe with the example's rendered
config.properties, and check that the image's dependency lock covers pyproject.toml.

The first run builds helm from the Go module proxy (a few minutes); later runs take seconds.
"""

from __future__ import annotations

import base64
import http.client
import http.server
import json
import math
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from shim._errors import ConfigError
from shim.config import load_settings
from tests.support.procs import free_port
from tests.support.torchserve import TorchServe, require_torchserve, torchserve_venv
from tests.test_shim_redirect import RENDERED_ENV

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "validate-deploy"
CHART = ROOT / "deploy" / "helm" / "shim"
LIB = ROOT / "deploy" / "helm" / "shim-lib"
EXAMPLE = ROOT / "deploy" / "helm" / "examples" / "my-torchserve"
UID = 10001
# dragonfly-endpoint's config file, which shim reads when no config is given.
CONFIG_ENV_JSON = "DRAGONFLY_ENDPOINT_CONFIG"
PROXY_PORT, ADMIN_PORT, TRANSPARENT_PORT, REVERSE_PORT = 8790, 8791, 8792, 8793
# The variable the chart gives shim the proxy_auth password in (from proxyAuth.existingSecret).
PROXY_PASSWORD_ENV = "SHIM_PROXY_AUTH_PASSWORD"

# The cases scripts/validate-deploy renders (CASES there).
CASES = (
    "default",
    "sidecar",
    "sidecar-dfdaemon",
    "sidecar-plain-container",
    "sidecar-own",
    "transparent",
    "transparent-dfdaemon",
    "transparent-http-only",
    "standalone",
    "standalone-dfdaemon",
    "standalone-loadbalancer",
    "standalone-nodeport",
    "standalone-pvc",
    "standalone-no-networkpolicy",
    "sidecar-ops",
    "transparent-exclusions",
    "standalone-persistent",
)
# The example chart of a user's own that includes shim-lib (rendered as EXAMPLE_CASE.yaml).
EXAMPLE_CASE = "example-my-torchserve"
# Where the admin token file is mounted (shim.yaml admin_token_file).
ADMIN_TOKEN_DIR = "/var/run/secrets/shim-admin"
STANDALONE = tuple(case for case in CASES if case.startswith("standalone"))
# The cases with the chart's example TorchServe container.
WITH_TORCHSERVE = (
    "sidecar",
    "sidecar-dfdaemon",
    "sidecar-plain-container",
    "transparent",
    "transparent-dfdaemon",
    "transparent-http-only",
    "sidecar-ops",
    "transparent-exclusions",
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

Obj = dict[str, Any]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("deploy-rendered")
    result = subprocess.run(
        [str(SCRIPT), str(out)], capture_output=True, text=True, timeout=1700, check=False
    )
    assert result.returncode == 0, (
        f"scripts/validate-deploy exited {result.returncode}:\n"
        f"{result.stdout[-4000:]}\n{result.stderr[-8000:]}"
    )
    return out


@dataclass(frozen=True)
class Helm:
    """The helm scripts/validate-deploy installed (OUT_DIR/tools.env), with state of its own."""

    binary: Path
    kube_version: str
    home: Path

    def template(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.binary), "template", "shim", str(CHART), "--namespace", "shim-test"]
        if "--kube-version" not in args:
            command += ["--kube-version", self.kube_version]
        env = {
            **os.environ,
            **{
                f"HELM_{kind}_HOME": str(self.home / kind.lower())
                for kind in ("CACHE", "CONFIG", "DATA")
            },
        }
        return subprocess.run(
            [*command, *args],
            cwd=CHART,
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )


@pytest.fixture(scope="module")
def helm(rendered: Path, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    tools = dict(
        line.split("=", 1)
        for line in (rendered / "tools.env").read_text(encoding="utf-8").splitlines()
    )
    return Helm(Path(tools["HELM"]), tools["KUBE_VERSION"], tmp_path_factory.mktemp("helm-home"))


def objects(out: Path, case: str) -> list[Obj]:
    with (out / f"{case}.yaml").open(encoding="utf-8") as file:
        return [doc for doc in yaml.safe_load_all(file) if doc]


def one(objs: list[Obj], kind: str) -> Obj:
    found = [o for o in objs if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def workload(objs: list[Obj]) -> Obj:
    found = [o for o in objs if o["kind"] in ("Deployment", "StatefulSet")]
    assert len(found) == 1, f"expected one workload, found {len(found)}"
    return found[0]


def pod_spec(objs: list[Obj]) -> Obj:
    spec: Obj = workload(objs)["spec"]["template"]["spec"]
    return spec


def containers(spec: Obj) -> Iterator[tuple[str, Obj]]:
    for kind in ("initContainers", "containers"):
        for container in spec.get(kind) or []:
            yield kind, container


def by_name(objs: list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r}, found {len(found)}"
    return found[0]


def container(spec: Obj, name: str) -> Obj:
    found = [c for _, c in containers(spec) if c["name"] == name]
    assert len(found) == 1, f"expected one container {name!r}, found {len(found)}"
    return found[0]


def shim_config(objs: list[Obj]) -> Obj:
    config: Obj = yaml.safe_load(one(objs, "ConfigMap")["data"]["shim.yaml"])
    return config


def java_tool_options(spec: Obj) -> str:
    env = {e["name"]: e.get("value") for e in container(spec, "torchserve").get("env", [])}
    value: str = env["JAVA_TOOL_OPTIONS"]
    return value


def added_capabilities(c: Obj) -> set[str]:
    return set((c.get("securityContext") or {}).get("capabilities", {}).get("add") or [])


def test_validate_deploy_renders_every_case(rendered: Path) -> None:
    assert {path.stem for path in rendered.glob("*.yaml")} == {*CASES, EXAMPLE_CASE}
    for case in CASES:
        objs = objects(rendered, case)
        assert {o["kind"] for o in objs} >= {"ConfigMap", "ServiceAccount"}, case
        assert workload(objs)["kind"] == (
            "StatefulSet" if case.endswith("persistent") else "Deployment"
        )
        assert (rendered / f"{case}.NOTES.txt").read_text(encoding="utf-8").strip(), case
        # Credentials come from an existing Secret or workload identity, never from the chart:
        # the one Secret it may make is the random admin token (admin.token.create).
        secrets = [o for o in objs if o["kind"] == "Secret"]
        assert [s["metadata"]["name"] for s in secrets] == (
            ["shim-admin-token"] if case == "sidecar-ops" else []
        ), case


def test_net_admin_only_in_the_transparent_init_container(rendered: Path) -> None:
    for case in CASES:
        spec = pod_spec(objects(rendered, case))
        privileged = [(kind, c) for kind, c in containers(spec) if added_capabilities(c)]
        if not case.startswith("transparent"):
            assert privileged == [], f"{case}: containers with added capabilities"
            continue
        assert len(privileged) == 1, case
        kind, init = privileged[0]
        assert (kind, init["name"]) == ("initContainers", "iptables"), case
        assert init.get("restartPolicy") is None, f"{case}: the iptables step must exit"
        # NET_RAW only for iptables-legacy's raw socket (the http-only case uses it).
        legacy = case == "transparent-http-only"
        assert added_capabilities(init) == ({"NET_ADMIN", "NET_RAW"} if legacy else {"NET_ADMIN"})
        assert init["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert init["securityContext"]["allowPrivilegeEscalation"] is False
        # It runs first: nothing else in the pod starts before the redirect exists.
        assert spec["initContainers"][0]["name"] == "iptables"


def redirect_env(spec: Obj) -> dict[str, str]:
    init = container(spec, "iptables")
    assert init["command"] == ["shim-redirect"]
    return {e["name"]: e["value"] for e in init["env"]}


def test_transparent_redirect_exempts_shim_uid(rendered: Path) -> None:
    for case, ports in (
        ("transparent", "80,443,9000"),
        ("transparent-dfdaemon", "80,443,9000"),
        ("transparent-http-only", "80,9000"),
        ("transparent-exclusions", "80,443,9000,8000:8100"),
    ):
        objs = objects(rendered, case)
        env = redirect_env(pod_spec(objs))
        assert env["SHIM_REDIRECT_EXEMPT_UID"] == str(UID), case
        assert env["SHIM_REDIRECT_TO_PORT"] == str(TRANSPARENT_PORT), case
        assert env["SHIM_REDIRECT_PORTS"] == ports, case
        backend = "iptables-legacy" if case == "transparent-http-only" else "iptables"
        assert env["SHIM_REDIRECT_IPTABLES"] == backend, case
        assert shim_config(objs)["transparent"] == f"127.0.0.1:{TRANSPARENT_PORT}"
        # No proxy settings for TorchServe, only the truststore when https is intercepted.
        options = java_tool_options(pod_spec(objs))
        assert "proxyHost" not in options
        assert ("javax.net.ssl.trustStore=" in options) == ("443" in ports.split(","))
        torchserve = container(pod_spec(objs), "torchserve")
        assert torchserve["securityContext"]["runAsUser"] != UID
    # The exclusions as given: what tests/test_shim_redirect.py runs in a network namespace.
    env = redirect_env(pod_spec(objects(rendered, "transparent-exclusions")))
    assert {k: v for k, v in env.items() if k != "SHIM_REDIRECT_IPTABLES"} == RENDERED_ENV
    env = redirect_env(pod_spec(objects(rendered, "transparent")))
    assert (env["SHIM_REDIRECT_EXCLUDE_CIDRS"], env["SHIM_REDIRECT_EXCLUDE_PORTS"]) == ("", "")
    assert env["SHIM_REDIRECT_IPV6"] == "auto"


def test_every_shim_container_runs_as_uid_10001_locked_down(rendered: Path) -> None:
    for case in CASES:
        spec = pod_spec(objects(rendered, case))
        shim_containers = [
            c for _, c in containers(spec) if c["name"] in {"shim", "shim-ca", "render-config"}
        ]
        assert any(c["name"] == "shim" for c in shim_containers), case
        for c in shim_containers:
            sc = c["securityContext"]
            assert sc["runAsUser"] == UID, (case, c["name"])
            assert sc["runAsGroup"] == UID, (case, c["name"])
            assert sc["runAsNonRoot"] is True
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]}
        # Read-only root: everything shim writes is a volume; the rest is mounted read-only.
        mounts = {m["mountPath"]: m for m in container(spec, "shim")["volumeMounts"]}
        writable = {path for path, m in mounts.items() if not m.get("readOnly")}
        assert writable == {"/var/lib/shim", "/var/cache/shim", "/tmp"}, case
        assert mounts["/etc/shim"].get("readOnly") is True
        # Volumes written on the node's disk are owned by shim's GID without a recursive chown
        # at every start (a persistent cache holds many files).
        assert spec["securityContext"]["fsGroup"] == UID
        assert spec["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"
        config = shim_config(objects(rendered, case))
        assert config["confdir"] == "/var/lib/shim"
        assert config["cache"]["dir"] == "/var/cache/shim"


def test_sidecar_sets_java_tool_options_for_the_explicit_proxy(rendered: Path) -> None:
    for case in ("sidecar", "sidecar-dfdaemon", "sidecar-plain-container"):
        objs = objects(rendered, case)
        spec = pod_spec(objs)
        options = java_tool_options(spec).split()
        for option in (
            "-Dhttp.proxyHost=127.0.0.1",
            f"-Dhttp.proxyPort={PROXY_PORT}",
            "-Dhttps.proxyHost=127.0.0.1",
            f"-Dhttps.proxyPort={PROXY_PORT}",
            "-Djavax.net.ssl.trustStore=/etc/shim-trust/truststore.p12",
            "-Djavax.net.ssl.trustStorePassword=changeit",
            "-Djavax.net.ssl.trustStoreType=PKCS12",
        ):
            assert option in options, (case, option)
        assert shim_config(objs)["listen"] == f"127.0.0.1:{PROXY_PORT}"
        # The truststore comes from the shim-ca init container through an emptyDir...
        ca = container(spec, "shim-ca")
        assert ca["args"] == ["ca", "--config", "/etc/shim/ca.yaml", "--out", "/etc/shim-trust"]
        assert "envFrom" not in ca, "the CA step needs no bucket credentials"
        ca_mounts = {m["name"]: m["mountPath"] for m in ca["volumeMounts"]}
        assert ca_mounts["trust"] == "/etc/shim-trust"
        volumes = {v["name"]: v for v in spec["volumes"]}
        (ca_config,) = [n for n, path in ca_mounts.items() if path == "/etc/shim"]
        assert "configMap" in volumes[ca_config], "ca.yaml comes from the ConfigMap itself"
        ca_yaml = yaml.safe_load(one(objs, "ConfigMap")["data"]["ca.yaml"])
        assert ca_yaml == {"confdir": "/var/lib/shim"}
        assert "emptyDir" in volumes["trust"]
        # ...which TorchServe reads, while the CA's private key (confdir) stays with shim.
        ts_mounts = {m["name"]: m for m in container(spec, "torchserve")["volumeMounts"]}
        assert ts_mounts["trust"]["mountPath"] == "/etc/shim-trust"
        assert ts_mounts["trust"]["readOnly"] is True
        assert "confdir" not in ts_mounts
        assert ca_mounts["confdir"] == "/var/lib/shim"
        # shim is running before TorchServe starts (native sidecar), after the CA exists.
        init_names = [c["name"] for c in spec.get("initContainers", [])]
        if case == "sidecar-plain-container":
            assert "shim" in [c["name"] for c in spec["containers"]]
        else:
            assert init_names.index("shim-ca") < init_names.index("shim")
            assert container(spec, "shim")["restartPolicy"] == "Always"


def test_sidecar_java_tool_options_are_what_shim_env_prints(rendered: Path) -> None:
    truststore = "/etc/shim-trust/truststore.p12"
    env = {k: v for k, v in os.environ.items() if k not in {"SHIM_CONFIG", CONFIG_ENV_JSON}}
    command = [sys.executable, "-m", "shim", "env", "--proxy", f"127.0.0.1:{PROXY_PORT}"]
    result = subprocess.run(
        [*command, "--truststore", truststore],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (line,) = [
        ln for ln in result.stdout.splitlines() if ln.startswith("export JAVA_TOOL_OPTIONS=")
    ]
    printed = shlex.split(line.removeprefix("export JAVA_TOOL_OPTIONS="))[0]
    assert java_tool_options(pod_spec(objects(rendered, "sidecar"))) == printed


def test_standalone_service_targets_the_reverse_port(rendered: Path) -> None:
    for case in STANDALONE:
        objs = objects(rendered, case)
        service = by_name(objs, "Service", "shim")
        deployment = workload(objs)
        spec = pod_spec(objs)
        (port,) = service["spec"]["ports"]
        assert port["port"] == REVERSE_PORT
        assert port["targetPort"] == "reverse"
        named = {p["name"]: p["containerPort"] for p in container(spec, "shim")["ports"]}
        assert named["reverse"] == REVERSE_PORT
        assert shim_config(objs)["reverse"] == f"0.0.0.0:{REVERSE_PORT}"
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
        # No CA and no TorchServe in this shape: clients speak plain http to the Service.
        names = {c["name"] for _, c in containers(spec)}
        assert names == {"shim"}


def test_probes_use_healthz_on_the_admin_listener(rendered: Path) -> None:
    for case in CASES:
        objs = objects(rendered, case)
        shim = container(pod_spec(objs), "shim")
        named = {p["name"]: p["containerPort"] for p in shim["ports"]}
        assert named["admin"] == ADMIN_PORT
        admin = shim_config(objs)["admin"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if case == "sidecar-ops":
                # Opened for the scrapers (admin.address=0.0.0.0): the kubelet asks it too.
                assert admin == f"0.0.0.0:{ADMIN_PORT}"
                assert shim[probe]["httpGet"] == {"path": "/healthz", "port": "admin"}
                continue
            # On the pod's loopback by default, out of the kubelet's reach: the probe asks
            # from inside the container, with the image's Python (the slim image has no curl).
            assert admin == f"127.0.0.1:{ADMIN_PORT}", case
            command = shim[probe]["exec"]["command"]
            assert command[:2] == ["python", "-c"], (case, probe)
            assert f"urlopen('http://127.0.0.1:{ADMIN_PORT}/healthz'" in command[2], (case, probe)
            assert f"timeout={shim[probe]['timeoutSeconds']})" in command[2]
        assert shim["resources"]["requests"] and shim["resources"]["limits"]


def test_loopback_probe_command_asks_a_real_healthz(rendered: Path) -> None:
    """The rendered exec probe, run as the kubelet runs it (its port moved to a free one):
    exit 0 while /healthz answers 200, non-zero on a 503 and once nothing listens."""
    probe = container(pod_spec(objects(rendered, "default")), "shim")["readinessProbe"]
    status = {"healthz": 200}

    class Healthz(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status["healthz"] if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Healthz)
    command = [
        part.replace(f"127.0.0.1:{ADMIN_PORT}", f"127.0.0.1:{server.server_address[1]}")
        for part in probe["exec"]["command"]
    ]
    assert command != probe["exec"]["command"]
    # The image's `python`; here the tests' own.
    assert command[0] == "python"
    command[0] = sys.executable

    def run() -> int:
        timeout = probe["timeoutSeconds"] + 30
        return subprocess.run(command, capture_output=True, timeout=timeout).returncode

    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert run() == 0
        status["healthz"] = 503
        assert run() != 0
    finally:
        server.shutdown()
        server.server_close()
    assert run() != 0


def test_dfdaemon_address_only_when_enabled(rendered: Path) -> None:
    for case in CASES:
        objs = objects(rendered, case)
        config = shim_config(objs)
        spec = pod_spec(objs)
        init_names = {c["name"] for c in spec.get("initContainers", [])}
        if case in ("sidecar-dfdaemon", "transparent-dfdaemon"):
            # The node's own dfdaemon (Dragonfly client DaemonSet, hostNetwork) via the
            # downward API, written into the config by an init container.
            assert config["dfdaemon"]["url"] == "http://${HOST_IP}:4001"
            render = container(spec, "render-config")
            env = {e["name"]: e for e in render["env"]}
            assert env["HOST_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
            volumes = {v["name"]: v for v in spec["volumes"]}
            assert "emptyDir" in volumes["config"]
            assert "configMap" in volumes["config-template"]
        elif case == "standalone-dfdaemon":
            assert config["dfdaemon"] == {
                "url": "http://dragonfly-client-local.dragonfly-system.svc:4001"
            }
            assert "render-config" not in init_names
        else:
            assert "dfdaemon" not in config, case
            assert "render-config" not in init_names, case


def test_every_volume_has_exactly_one_source(rendered: Path) -> None:
    for case in CASES:
        for volume in pod_spec(objects(rendered, case))["volumes"]:
            sources = set(volume) - {"name"}
            assert len(sources) == 1, (case, volume)


def ingress_rules(objs: list[Obj]) -> list[Obj]:
    rules: list[Obj] = one(objs, "NetworkPolicy")["spec"]["ingress"]
    return rules


def rule_ports(rule: Obj) -> set[str | int]:
    return {port["port"] for port in rule["ports"]}


# --- the example TorchServe, locked down -------------------------------------------------------


def torchserve_properties(objs: list[Obj]) -> dict[str, str]:
    text: str = one(objs, "ConfigMap")["data"]["torchserve.properties"]
    return dict(
        line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#")
    )


def test_example_torchserve_keeps_token_auth_and_a_loopback_management_api(
    rendered: Path,
) -> None:
    for case in WITH_TORCHSERVE:
        objs = objects(rendered, case)
        spec = pod_spec(objs)
        torchserve = container(spec, "torchserve")
        args = torchserve["args"]
        assert "--disable-token-auth" not in args, case
        config = args[args.index("--ts-config") + 1]
        mounts = {m["mountPath"]: m["name"] for m in torchserve["volumeMounts"]}
        assert mounts[str(Path(config).parent)] == "torchserve-config", case
        (volume,) = [v for v in spec["volumes"] if v["name"] == "torchserve-config"]
        assert volume["configMap"]["items"] == [
            {"key": "torchserve.properties", "path": Path(config).name}
        ]
        properties = torchserve_properties(objs)
        assert properties["management_address"] == "http://127.0.0.1:8081", case
        assert properties["grpc_management_address"] == "127.0.0.1", case
        assert properties["disable_token_authorization"] == "false", case
        assert properties["enable_model_api"] == "true", case
        # Nothing advertises the management port outside the pod.
        assert "management" not in {p["name"] for p in torchserve["ports"]}, case
        assert all(8081 not in rule_ports(rule) for rule in ingress_rules(objs)), case
        # /ping asks for the inference key once token auth is on: the probe cannot use it.
        assert torchserve["readinessProbe"]["tcpSocket"] == {"port": "inference"}, case
        # TorchServe writes key_file.json into its working directory; NOTES reads it there.
        assert torchserve["workingDir"] == "/home/model-server", case
        notes = (rendered / f"{case}.NOTES.txt").read_text(encoding="utf-8")
        assert "/home/model-server/key_file.json" in notes, case
        assert (
            'curl -H "Authorization: Bearer $TOKEN" -X POST "http://127.0.0.1:8081/models' in notes
        )


def _loopback_copy(
    properties: dict[str, str], workdir: Path
) -> tuple[dict[str, str], dict[str, int]]:
    """The rendered properties, with every listener moved to a free loopback port (tests send
    nothing beyond 127.0.0.0/8) and the model store under `workdir`; the rest as rendered."""
    ports: dict[str, int] = {}
    while len(set(ports.values())) < 5:
        ports = {
            name: free_port()
            for name in ("inference", "management", "metrics", "grpc_inference", "grpc_management")
        }
    copy = dict(properties)
    for name in ("inference", "management", "metrics"):
        scheme, _, rest = copy[f"{name}_address"].partition("://")
        host = rest.rsplit(":", 1)[0]
        assert host in {"0.0.0.0", "127.0.0.1"}, copy
        copy[f"{name}_address"] = f"{scheme}://127.0.0.1:{ports[name]}"
    copy["grpc_inference_port"] = str(ports["grpc_inference"])
    copy["grpc_management_port"] = str(ports["grpc_management"])
    copy["model_store"] = str(workdir / "model_store")
    copy["number_of_gpu"] = "0"
    return copy, ports


def _get(port: int, method: str, path: str, token: str | None = None) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


@pytest.mark.torchserve
def test_example_torchserve_config_asks_a_real_torchserve_for_tokens(
    rendered: Path, tmp_path: Path
) -> None:
    """TorchServe 0.12 started as the chart starts it (its args, its config.properties, ports
    moved to loopback) refuses management calls without the key it wrote to key_file.json."""
    require_torchserve()
    venv = torchserve_venv()
    objs = objects(rendered, "sidecar")
    torchserve = container(pod_spec(objs), "torchserve")
    properties, ports = _loopback_copy(torchserve_properties(objs), tmp_path)
    for sub in ("model_store", "tmp", "logs", "metrics"):
        (tmp_path / sub).mkdir()
    config = tmp_path / "config.properties"
    config.write_text("".join(f"{key}={value}\n" for key, value in properties.items()))
    args = list(torchserve["args"])
    args[args.index("--ts-config") + 1] = str(config)
    assert torchserve["command"] == ["torchserve"]
    env = {
        **os.environ,
        "TMPDIR": str(tmp_path / "tmp"),
        "TEMP": str(tmp_path / "tmp"),
        "LOG_LOCATION": str(tmp_path / "logs"),
        "METRICS_LOCATION": str(tmp_path / "metrics"),
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "VIRTUAL_ENV": str(venv),
    }
    output = (tmp_path / "torchserve.out").open("w+b")
    launcher = subprocess.Popen(
        [str(venv / "bin" / "torchserve"), *args],
        cwd=tmp_path,  # the pod's workingDir: where TorchServe writes key_file.json
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT,
    )
    server = TorchServe(
        launcher=launcher,
        workdir=tmp_path,
        api_host="127.0.0.1",
        inference_port=ports["inference"],
        management_port=ports["management"],
        metrics_port=ports["metrics"],
        grpc_inference_port=ports["grpc_inference"],
        grpc_management_port=ports["grpc_management"],
        _output=output,
    )
    try:
        key_file = tmp_path / "key_file.json"
        deadline = time.monotonic() + 120
        while not _accepts(ports["management"]):
            assert launcher.poll() is None, f"TorchServe exited:\n{server.output()}"
            assert time.monotonic() < deadline, f"TorchServe did not start:\n{server.output()}"
            time.sleep(0.2)
        # TorchServe writes the keys before it opens its ports.
        assert key_file.is_file(), "no key_file.json: TorchServe runs without token authorization"
        keys = json.loads(key_file.read_text(encoding="utf-8"))
        assert key_file.stat().st_mode & 0o077 == 0, "the keys are the owner's only"

        register = "/models?url=absent.mar"
        status, body = _get(ports["management"], "POST", register)
        assert status == 400 and "Token Authorization failed" in body, (status, body)
        status, body = _get(ports["management"], "GET", "/models", keys["management"]["key"])
        assert status == 200, body
        # With the key, the model API is on: an unknown archive is a 404, not a 405.
        status, body = _get(ports["management"], "POST", register, keys["management"]["key"])
        assert status == 404, (status, body)
        # The inference API wants its own key, even for /ping; the chart's probe only connects.
        assert _get(ports["inference"], "GET", "/ping")[0] == 400
        assert _get(ports["inference"], "GET", "/ping", keys["inference"]["key"])[0] == 200
        assert _accepts(ports["inference"])
    finally:
        server.stop()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


# --- NetworkPolicy: on in every shape, scoped ---------------------------------------------------


def tcp(port: str) -> Obj:
    return {"port": port, "protocol": "TCP"}


# The chart's default scrapers: one namespace's Prometheus pods, not every namespace.
PROMETHEUS = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
}
# ci/standalone-values.yaml's networkPolicy.allowFrom.
TORCHSERVE_PODS = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "torchserve"}}}
# The example TorchServe's inference API, by default: any pod of the cluster.
ANY_POD = {"namespaceSelector": {}}


def expected_ingress(case: str) -> list[Obj]:
    if case == "sidecar-own":
        # metricsFrom: [] leaves the admin port to the node's own traffic (the kubelet's
        # probes); networkPolicy.extraIngress opens the own TorchServe's port.
        return [{"ports": [{"port": 8080, "protocol": "TCP"}]}]
    if case.startswith("standalone"):
        return [{"from": [TORCHSERVE_PODS], "ports": [tcp("reverse")]}]
    if case == "sidecar-ops":
        # admin.address=0.0.0.0 for the metrics Service: the scrapers reach shim's admin port.
        return [
            {"from": [PROMETHEUS], "ports": [tcp("admin"), tcp("ts-metrics")]},
            {"from": [ANY_POD], "ports": [tcp("inference")]},
        ]
    if case in WITH_TORCHSERVE:
        # shim's admin port is on the pod's loopback: only TorchServe's metrics port is open.
        return [
            {"from": [PROMETHEUS], "ports": [tcp("ts-metrics")]},
            {"from": [ANY_POD], "ports": [tcp("inference")]},
        ]
    return []


def test_network_policy_isolates_every_shape(rendered: Path) -> None:
    for case in CASES:
        objs = objects(rendered, case)
        if case == "standalone-no-networkpolicy":
            assert all(o["kind"] != "NetworkPolicy" for o in objs)
            continue
        policy = one(objs, "NetworkPolicy")
        labels = workload(objs)["spec"]["template"]["metadata"]["labels"]
        assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items(), case
        assert policy["spec"]["policyTypes"] == ["Ingress"], case
        assert ingress_rules(objs) == expected_ingress(case), case
        # The proxy listeners of the pod shapes are on loopback: no rule names them.
        config = shim_config(objs)
        assert config["listen"].startswith("127.0.0.1:"), case
        assert config.get("transparent", "127.0.0.1:").startswith("127.0.0.1:"), case


def test_network_policy_notes_say_what_enters(rendered: Path) -> None:
    notes = (rendered / "sidecar-own.NOTES.txt").read_text(encoding="utf-8")
    assert "  - the rules of networkPolicy.extraIngress\n" in notes
    assert "  - the pod's own node (the kubelet's probes), always\n" in notes
    assert "networkPolicy.metricsFrom" not in notes
    notes = (rendered / "standalone.NOTES.txt").read_text(encoding="utf-8")
    assert "  - networkPolicy.allowFrom, to the reverse port\n" in notes


# --- the standalone shape: clients, exposure ---------------------------------------------------


def test_standalone_names_its_clients_and_exposes_them_their_own_address(rendered: Path) -> None:
    for case in STANDALONE:
        objs = objects(rendered, case)
        assert shim_config(objs)["clients"] == ["10.244.0.0/16"], case
        service = by_name(objs, "Service", "shim")["spec"]
        if case == "standalone-loadbalancer":
            assert service["type"] == "LoadBalancer"
            assert service["loadBalancerSourceRanges"] == ["203.0.113.0/24"]
        elif case == "standalone-nodeport":
            assert service["type"] == "NodePort"
            assert "loadBalancerSourceRanges" not in service
        else:
            assert service["type"] == "ClusterIP", case
            assert "externalTrafficPolicy" not in service, case
            continue
        # No SNAT to a node's address: `clients` and the policy see who is asking.
        assert service["externalTrafficPolicy"] == "Local", case
    notes = (rendered / "standalone-no-networkpolicy.NOTES.txt").read_text(encoding="utf-8")
    assert "WARNING: networkPolicy is off" in notes


def test_update_strategy_fits_the_cache_volume(rendered: Path) -> None:
    for case in CASES:
        objs = objects(rendered, case)
        deployment = workload(objs)
        volumes = {v["name"]: v for v in pod_spec(objs)["volumes"]}
        if case == "standalone-pvc":
            # One claim for the Deployment: the old pod lets go of it before the new one starts.
            assert volumes["cache"]["persistentVolumeClaim"] == {"claimName": "shim-cache"}
            assert deployment["spec"]["replicas"] == 1
            assert deployment["spec"]["strategy"] == {"type": "Recreate"}
        elif case == "standalone-persistent":
            # A claim per replica, kept across updates: a StatefulSet replaces one pod at a time
            # and reattaches its claim; no cache volume in the pod, the template holds it.
            spec = deployment["spec"]
            assert deployment["kind"] == "StatefulSet"
            assert "cache" not in volumes
            (claim,) = spec["volumeClaimTemplates"]
            assert claim["metadata"]["name"] == "cache"
            assert claim["spec"]["resources"]["requests"]["storage"] == "100Gi"
            assert claim["spec"]["storageClassName"] == "fast-ssd"
            assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
            assert spec["updateStrategy"] == {"type": "RollingUpdate"}
            assert spec["podManagementPolicy"] == "Parallel"
            mounts = {
                m["name"]: m["mountPath"] for m in container(pod_spec(objs), "shim")["volumeMounts"]
            }
            assert mounts["cache"] == "/var/cache/shim"
            headless = by_name(objs, "Service", spec["serviceName"])
            assert headless["spec"]["clusterIP"] == "None"
            assert (
                headless["spec"]["selector"].items()
                <= spec["template"]["metadata"]["labels"].items()
            )
        else:
            # Each pod has its own cache: the new pod starts beside the old, which serves on.
            assert "persistentVolumeClaim" not in volumes["cache"], case
            assert deployment["spec"]["strategy"] == {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            }, case


# --- shim.yaml: the chart's values, shim's own loader ------------------------------------------


def test_shim_options_map_onto_shim_yaml_keys(rendered: Path) -> None:
    default = shim_config(objects(rendered, "default"))
    assert default["passthrough"] == "none"
    assert default["shutdown_grace"] == 25
    assert default["cache"]["min_free"] == "1GiB"
    assert "clients" not in default and "proxy_auth" not in default

    objs = objects(rendered, "sidecar-own")
    config = shim_config(objs)
    assert config["passthrough"] == ["pypi.org", "files.pythonhosted.org:443"]
    assert config["shutdown_grace"] == 55
    assert config["cache"]["min_free"] == "5GiB"
    assert config["proxy_auth"] == {"username": "models", "password_env": PROXY_PASSWORD_ENV}
    # The password itself only ever travels from the Secret into shim's environment.
    env = {e["name"]: e for e in container(pod_spec(objs), "shim")["env"]}
    assert env[PROXY_PASSWORD_ENV]["valueFrom"]["secretKeyRef"] == {
        "name": "shim-proxy",
        "key": "password",
    }


def test_termination_grace_covers_the_pre_stop_delay_and_shim_grace(rendered: Path) -> None:
    for case in CASES:
        objs = objects(rendered, case)
        grace = shim_config(objs)["shutdown_grace"]
        spec = pod_spec(objs)
        shim = container(spec, "shim")
        delay = 10 if case == "standalone-persistent" else 5
        assert spec["terminationGracePeriodSeconds"] == delay + math.ceil(grace) + 5, case
        pre_stop = (shim.get("lifecycle") or {}).get("preStop")
        if shim.get("restartPolicy") == "Always":
            # A native sidecar is stopped after the pod's other containers: nothing to wait for.
            assert pre_stop is None, case
        else:
            # The endpoints stop sending new connections, then SIGTERM and shim drains.
            assert pre_stop == {"exec": {"command": ["sleep", str(delay)]}}, case
    assert pod_spec(objects(rendered, "default"))["terminationGracePeriodSeconds"] == 35


def test_rendered_config_loads_with_shim(rendered: Path, tmp_path: Path) -> None:
    """Each case's shim.yaml, as the pod mounts it, starts shim's loader without an error:
    listeners, the exposed-listener guard, clients, proxy_auth, passthrough, sizes."""
    env = {
        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "not-a-secret",
        PROXY_PASSWORD_ENV: "not-a-password",
    }
    for case in CASES:
        data = one(objects(rendered, case), "ConfigMap")["data"]
        config = yaml.safe_load(data["shim.yaml"].replace("${HOST_IP}", "10.0.0.7"))
        # The token file is the Secret's mount in the pod (test_admin_token_comes_from_a_secret
        # checks where it points); here a file of the same kind stands in its place.
        if "admin_token_file" in config:
            token = tmp_path / f"{case}.token"
            token.write_text("a-token-from-the-chart-secret\n", encoding="utf-8")
            token.chmod(0o440)
            config["admin_token_file"] = str(token)
        path = tmp_path / f"{case}.shim.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        settings = load_settings(path, env=env)
        assert settings.cache.max_size > settings.cache.min_free, case
        if case.startswith("standalone"):
            assert [str(net) for net in settings.clients] == ["10.244.0.0/16"], case
        # The CA step runs without the credentials' environment.
        ca = tmp_path / f"{case}.ca.yaml"
        ca.write_text(data["ca.yaml"], encoding="utf-8")
        load_settings(ca, env={}, credentials=False)


def test_shim_refuses_the_standalone_config_without_clients(rendered: Path, tmp_path: Path) -> None:
    """What the chart refuses to render (standalone without clients) shim refuses to start."""
    config = shim_config(objects(rendered, "standalone"))
    del config["clients"]
    path = tmp_path / "shim.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    env = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "not-a-secret"}
    with pytest.raises(ConfigError, match=r"reverse 0\.0\.0\.0:8793 is reachable from other hosts"):
        load_settings(path, env=env)


# --- what the chart refuses at helm template time ----------------------------------------------

# helm runs in the chart's directory.
STANDALONE_VALUES = "ci/standalone-values.yaml"
PVC_CACHE = '{"persistentVolumeClaim":{"claimName":"shim-cache"}}'

REFUSALS = {
    # values.schema.json: unknown keys anywhere, wrong types and shapes.
    "unknown shape": ("--set shape=sideways", "at '/shape'"),
    "unknown top-level key": (
        "--set terminationGracePeriodSeconds=60",
        "additional properties 'terminationGracePeriodSeconds' not allowed",
    ),
    "misspelt nested key": (
        "--set cache.maxsize=10GiB",
        "at '/cache': additional properties 'maxsize' not allowed",
    ),
    "the old place of the NetworkPolicy values": (
        "--set standalone.networkPolicy.enabled=true",
        "at '/standalone': additional properties 'networkPolicy' not allowed",
    ),
    "a secret key in values": (
        "--set 'buckets[0].provider=s3' --set 'buckets[0].bucket=b'"
        " --set 'buckets[0].credentials.secret_access_key=x'",
        "at '/buckets/0/credentials'",
    ),
    "a client that is no network": ("--set 'clients={models}'", "at '/clients/0'"),
    "an unknown passthrough policy": ("--set passthrough=some", "at '/passthrough'"),
    "a negative shutdown grace": ("--set shutdownGrace=-1", "at '/shutdownGrace'"),
    "a size shim cannot read": ("--set 'cache.minFree=1GB!'", "at '/cache/minFree'"),
    # The standalone shape: an allow-list, a scoped policy, no open exposure.
    "standalone without clients": (
        "--set shape=standalone",
        "standalone: set clients to the networks (CIDRs) of the model servers",
    ),
    "standalone with an empty allowFrom": (
        f"--values {STANDALONE_VALUES} --set-json 'networkPolicy.allowFrom=[]'",
        "networkPolicy.allowFrom must list at least one peer",
    ),
    "a LoadBalancer without source ranges": (
        f"--values {STANDALONE_VALUES} --set standalone.service.type=LoadBalancer",
        "set standalone.service.loadBalancerSourceRanges to the client networks",
    ),
    # proxy_auth only where clients can send it.
    "proxyAuth without its Secret": (
        "--set proxyAuth.username=models",
        "proxyAuth needs both username and existingSecret",
    ),
    "proxyAuth in the transparent shape": (
        "--set shape=transparent"
        " --set proxyAuth.username=models --set proxyAuth.existingSecret=shim-proxy",
        "proxyAuth cannot work in the transparent shape",
    ),
    "proxyAuth with the example TorchServe": (
        "--set torchserve.enabled=true"
        " --set proxyAuth.username=models --set proxyAuth.existingSecret=shim-proxy",
        "proxyAuth cannot work with the example TorchServe: its JVM sends no proxy credentials",
    ),
    # The cache volume.
    "two standalone replicas on one PVC": (
        f"--values {STANDALONE_VALUES} --set-json 'cache.volume={PVC_CACHE}'",
        "cache.volume.persistentVolumeClaim is one volume for the whole Deployment, "
        "which cannot serve 2 replicas",
    ),
    "three sidecar pods on one PVC": (
        f"--set workload.replicas=3 --set-json 'cache.volume={PVC_CACHE}'",
        "which cannot serve 3 replicas",
    ),
    "maxSize above the emptyDir's sizeLimit": (
        "--set cache.maxSize=21GiB",
        "cache.maxSize (21GiB) is above the cache volume's size (20Gi)",
    ),
    "maxSize above the ephemeral claim": (
        f"--values {STANDALONE_VALUES} --set cache.maxSize=51GiB",
        "cache.maxSize (51GiB) is above the cache volume's size (50Gi)",
    ),
    "maxSize above an emptyDir volume": (
        '--set cache.maxSize=10GiB --set-json \'cache.volume={"emptyDir":{"sizeLimit":"5Gi"}}\'',
        "cache.maxSize (10GiB) is above the cache volume's size (5Gi)",
    ),
    "a volume size the chart cannot compare": (
        '--set-json \'cache.volume={"emptyDir":{"sizeLimit":"5e9"}}\'',
        'the cache volume\'s size: cannot read "5e9" as a size',
    ),
    # Keys the chart writes itself are not taken from elsewhere.
    "the example TorchServe's management API elsewhere": (
        "--set torchserve.properties.management_address=http://0.0.0.0:8081",
        "torchserve.properties.management_address is the chart's",
    ),
    "the example TorchServe without token auth": (
        "--set-string torchserve.properties.disable_token_authorization=true",
        "torchserve.properties.disable_token_authorization is the chart's",
    ),
    "cache.max_size in extraConfig": (
        "--set extraConfig.cache.max_size=1GiB",
        "extraConfig.cache.max_size is written by the chart: set cache.maxSize instead",
    ),
    # Combinations that cannot work.
    "TorchServe with shim's UID in transparent": (
        "--set shape=transparent --set torchserve.enabled=true"
        " --set torchserve.securityContext.runAsUser=10001",
        "runAsUser must differ from uid",
    ),
    "dfdaemon address mode without address": (
        "--set dfdaemon.enabled=true --set dfdaemon.mode=address",
        "dfdaemon.address is required",
    ),
    "native sidecar before Kubernetes 1.29": (
        "--kube-version 1.28.0 --set torchserve.enabled=true",
        "sidecar.native needs Kubernetes 1.29",
    ),
    # Images.
    "a digest that is no sha256": ("--set image.digest=latest", "at '/image/digest'"),
    "a registry with a scheme": (
        "--set global.imageRegistry=https://registry.example.com",
        "at '/global/imageRegistry'",
    ),
    # The persistent standalone cache.
    "persistence with a cache volume too": (
        f"--values {STANDALONE_VALUES} --set standalone.persistence.enabled=true",
        "standalone.persistence.enabled gives each replica its own cache claim: "
        "leave cache.volume empty",
    ),
    "persistence outside the standalone shape": (
        "--set standalone.persistence.enabled=true",
        "standalone.persistence is for the standalone shape",
    ),
    "maxSize above the persistent claim": (
        "--values ci/standalone-persistent-values.yaml --set cache.maxSize=101GiB",
        "cache.maxSize (101GiB) is above the cache volume's size (100Gi)",
    ),
    # Metrics and the admin port.
    "metrics with the admin port on loopback": (
        "--set metrics.enabled=true",
        "metrics.enabled needs the admin listener on the pod's address: set admin.address=0.0.0.0",
    ),
    "a ServiceMonitor without the metrics Service": (
        "--set metrics.serviceMonitor.enabled=true",
        "metrics.serviceMonitor.enabled needs metrics.enabled",
    ),
    "a ServiceMonitor without its CRD": (
        "--set admin.address=0.0.0.0 --set metrics.enabled=true"
        " --set metrics.serviceMonitor.enabled=true",
        "the cluster has no monitoring.coreos.com/v1 ServiceMonitor",
    ),
    "an admin address that is no address": (
        "--set admin.address=0.0.0.0:8791",
        "at '/admin/address'",
    ),
    "the admin token both made and given": (
        "--set admin.token.create=true --set admin.token.existingSecret=mine",
        "admin.token: set existingSecret or create, not both",
    ),
    "admin_token_file in extraConfig": (
        "--set extraConfig.admin_token_file=/tmp/token",
        "extraConfig.admin_token_file is written by the chart: set admin.token instead",
    ),
    "admin_token in extraConfig": (
        "--set extraConfig.admin_token=secret",
        "extraConfig.admin_token is written by the chart: set admin.token instead",
    ),
    # Disruption budget, spread, extras.
    "a disruption budget with both bounds": (
        "--set podDisruptionBudget.minAvailable=1",
        "podDisruptionBudget: set minAvailable or maxUnavailable, not both",
    ),
    "a spread constraint without a topology key": (
        "--set-json 'topologySpreadConstraints=["
        '{"maxSkew":1,"whenUnsatisfiable":"DoNotSchedule"}]\'',
        "at '/topologySpreadConstraints/0'",
    ),
    "an extra mount without a path": (
        '--set-json \'extraVolumeMounts=[{"name":"x"}]\'',
        "at '/extraVolumeMounts/0'",
    ),
    "a negative preStop delay": ("--set preStopDelay=-1", "at '/preStopDelay'"),
    # The transparent redirect's values become iptables arguments.
    "an excluded CIDR that is no CIDR": (
        "--set shape=transparent --set-json 'transparent.excludeCIDRs=[\"10.0.0.0\"]'",
        "at '/transparent/excludeCIDRs/0'",
    ),
    "an excluded port range with a rule in it": (
        "--set shape=transparent --set-json 'transparent.excludePorts=[\"80 -j ACCEPT\"]'",
        "at '/transparent/excludePorts/0'",
    ),
    "an IPv6 setting that is none": (
        "--set shape=transparent --set transparent.ipv6=maybe",
        "at '/transparent/ipv6'",
    ),
}


@pytest.mark.parametrize(("args", "message"), REFUSALS.values(), ids=REFUSALS.keys())
def test_chart_refuses(helm: Helm, args: str, message: str) -> None:
    result = helm.template(*shlex.split(args))
    assert result.returncode != 0, f"the chart rendered {args}"
    assert message in result.stderr, result.stderr


def test_chart_refuses_every_shim_key_it_writes_in_extra_config(helm: Helm, rendered: Path) -> None:
    written = set().union(*(shim_config(objects(rendered, case)) for case in CASES))
    assert written >= {
        "listen",
        "reverse",
        "clients",
        "proxy_auth",
        "passthrough",
        "shutdown_grace",
    }
    for key in sorted(written - {"cache"}):
        result = helm.template(
            "--set-json", f"extraConfig.{key}=null", "--set", f"extraConfig.{key}=x"
        )
        assert result.returncode != 0, key
        assert f"extraConfig.{key} is written by the chart" in result.stderr, (key, result.stderr)


@pytest.mark.parametrize(
    ("max_size", "size_limit"),
    [
        ("20GiB", "20Gi"),  # equal: accepted
        ("21474836480", "20Gi"),  # the same in bytes
        ("21GB", "20Gi"),  # 21e9 < 20 * 2**30
        ("500MB", "500M"),
        ("1.5GiB", "1536Mi"),
    ],
)
def test_chart_accepts_a_max_size_within_the_volume(
    helm: Helm, max_size: str, size_limit: str
) -> None:
    result = helm.template(
        "--set-string", f"cache.maxSize={max_size}", "--set", f"cache.sizeLimit={size_limit}"
    )
    assert result.returncode == 0, result.stderr
    (config_map,) = [d for d in yaml.safe_load_all(result.stdout) if d and d["kind"] == "ConfigMap"]
    assert yaml.safe_load(config_map["data"]["shim.yaml"])["cache"]["max_size"] == max_size


@pytest.mark.parametrize(
    ("max_size", "size_limit"),
    [("21474836481", "20Gi"), ("22GB", "20Gi"), ("501MB", "500M"), ("1.6GiB", "1536Mi")],
)
def test_chart_refuses_a_max_size_one_step_above_the_volume(
    helm: Helm, max_size: str, size_limit: str
) -> None:
    result = helm.template(
        "--set-string", f"cache.maxSize={max_size}", "--set", f"cache.sizeLimit={size_limit}"
    )
    assert result.returncode != 0
    assert (
        f"cache.maxSize ({max_size}) is above the cache volume's size ({size_limit})"
        in result.stderr
    )


# --- images ------------------------------------------------------------------------------------


def images(spec: Obj) -> dict[str, str]:
    return {c["name"]: c["image"] for _, c in containers(spec)}


def test_images_by_registry_repository_tag_and_digest(rendered: Path) -> None:
    app_version = yaml.safe_load((LIB / "Chart.yaml").read_text(encoding="utf-8"))["appVersion"]
    assert app_version == yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    default = images(pod_spec(objects(rendered, "sidecar")))
    assert default == {
        "shim-ca": f"shim-ca:{app_version}",
        "shim": f"shim:{app_version}",
        "torchserve": "pytorch/torchserve:0.12.0-cpu",
    }
    assert images(pod_spec(objects(rendered, "transparent")))["iptables"] == (
        f"shim-netinit:{app_version}"
    )
    digest = "sha256:" + "0123456789abcdef" * 4
    ops = images(pod_spec(objects(rendered, "sidecar-ops")))
    assert ops == {
        # global.imageRegistry for every image without a registry of its own; the digest pins
        # the content, the tag stays to say which version it is.
        "shim": f"registry.example.com/mirror/shim:{app_version}@{digest}",
        "shim-ca": "ghcr.io/example/shim-ca:0.1.0-jre17",
        "torchserve": "registry.example.com/mirror/pytorch/torchserve:0.12.0-cpu",
    }


# --- shim-lib: the chart's pod pieces, shared with charts of your own --------------------------


def test_library_defaults_are_the_charts_values() -> None:
    """A chart that includes shim-lib and names only what it changes gets the shim chart's
    defaults: shim-lib's `shim.lib.defaults` and the chart's values.yaml say the same."""
    text = (LIB / "templates" / "_values.tpl").read_text(encoding="utf-8")
    block = text.split('{{- define "shim.lib.defaults" -}}\n', 1)[1].split("{{- end }}", 1)[0]
    defaults = yaml.safe_load(block)
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    assert set(defaults) <= set(values)
    for key, value in defaults.items():
        assert values[key] == value, key
    # Every value the library templates read is among its defaults.
    read = {
        key
        for path in (LIB / "templates").glob("*.tpl")
        for key in re.findall(r"(?:\$v|\.values)\.([A-Za-z]+)", path.read_text(encoding="utf-8"))
    }
    assert read <= set(defaults), read - set(defaults)


def test_example_chart_attaches_the_same_shim_as_the_chart(
    rendered: Path, helm: Helm, tmp_path: Path
) -> None:
    """The example chart of your own (deploy/helm/examples/my-torchserve) and the shim chart
    given the same shim settings render the same shim containers, init containers, volumes and
    shim.yaml: both are shim-lib's templates, not two copies."""
    example = {o["kind"]: o for o in objects(rendered, EXAMPLE_CASE)}
    settings = yaml.safe_load((EXAMPLE / "values.yaml").read_text(encoding="utf-8"))["shim"]
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(settings), encoding="utf-8")
    # The example's release is "shim" and it names its shim objects RELEASE-shim.
    result = helm.template(
        "--values", str(values), "--set", "fullnameOverride=shim-shim",
        "--set", "torchserve.enabled=true", "--set", "networkPolicy.enabled=false",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    chart = {o["kind"]: o for o in yaml.safe_load_all(result.stdout) if o}
    ours, theirs = pod_spec(list(chart.values())), pod_spec(list(example.values()))
    assert ours["initContainers"] == theirs["initContainers"]
    assert [c["name"] for c in theirs["initContainers"]] == ["iptables", "shim-ca", "shim"]
    assert [c["name"] for c in theirs["containers"]] == ["torchserve"]
    for key in ("securityContext", "terminationGracePeriodSeconds"):
        assert ours[key] == theirs[key], key
    assert [v for v in ours["volumes"] if v["name"] != "torchserve-config"] == theirs["volumes"]
    assert chart["ConfigMap"]["data"]["shim.yaml"] == example["ConfigMap"]["data"]["shim.yaml"]
    assert chart["ConfigMap"]["data"]["ca.yaml"] == example["ConfigMap"]["data"]["ca.yaml"]
    assert java_tool_options(ours) == java_tool_options(theirs)
    (mount,) = container(theirs, "torchserve")["volumeMounts"]
    assert mount == {"name": "trust", "mountPath": "/etc/shim-trust", "readOnly": True}
    # The example's own admin token Secret, mounted only into shim.
    assert example["Secret"]["metadata"]["name"] == "shim-shim-admin-token"
    config = yaml.safe_load(example["ConfigMap"]["data"]["shim.yaml"])
    assert config["admin_token_file"] == f"{ADMIN_TOKEN_DIR}/token"
    env = redirect_env(theirs)
    assert env["SHIM_REDIRECT_EXCLUDE_CIDRS"] == "10.96.0.0/12"
    # No template of the shim chart defines a pod piece of its own: they all come from shim-lib.
    for path in (CHART / "templates").glob("*"):
        body = path.read_text(encoding="utf-8")
        for piece in ("name: shim-ca", "name: iptables", "name: render-config", "- name: shim\n"):
            assert piece not in body, (path.name, piece)


# --- resources, disruption, spread -------------------------------------------------------------


def mebibytes(quantity: str) -> int:
    assert quantity.endswith("Mi"), quantity
    return int(quantity.removesuffix("Mi"))


def test_ephemeral_storage_request_matches_the_cache(rendered: Path) -> None:
    # /tmp (256Mi) and confdir (16Mi) always; the cache when it is an emptyDir on the node.
    small = 256 + 16
    for case in CASES:
        spec = pod_spec(objects(rendered, case))
        requests = container(spec, "shim")["resources"]["requests"]
        cache = {v["name"]: v for v in spec["volumes"]}.get("cache", {})
        if "emptyDir" in cache:
            size = cache["emptyDir"]["sizeLimit"]
            assert size == "20Gi", case
            assert mebibytes(requests["ephemeral-storage"]) == 20 * 1024 + small, case
        else:
            # A claim (ephemeral, PVC or the StatefulSet's) is not the node's ephemeral storage.
            assert mebibytes(requests["ephemeral-storage"]) == small, case


def test_disruption_budget_and_topology_spread(rendered: Path) -> None:
    for case in CASES:
        objs = objects(rendered, case)
        pdb = one(objs, "PodDisruptionBudget")["spec"]
        labels = workload(objs)["spec"]["template"]["metadata"]["labels"]
        assert pdb["selector"]["matchLabels"].items() <= labels.items(), case
        if case == "sidecar-ops":
            assert pdb == {"minAvailable": 2, "selector": pdb["selector"]}
        else:
            assert pdb == {"maxUnavailable": 1, "selector": pdb["selector"]}, case
    spec = pod_spec(objects(rendered, "sidecar-ops"))
    host, zone = spec["topologySpreadConstraints"]
    # A constraint without a selector gets the release's pod labels; one with its own keeps it.
    assert host["labelSelector"] == {
        "matchLabels": {"app.kubernetes.io/name": "shim", "app.kubernetes.io/instance": "shim"}
    }
    assert host["topologyKey"] == "kubernetes.io/hostname"
    assert zone["labelSelector"] == {"matchLabels": {"app.kubernetes.io/name": "shim"}}
    assert "topologySpreadConstraints" not in pod_spec(objects(rendered, "default"))


# --- metrics, admin token, extras --------------------------------------------------------------


def test_metrics_service_and_service_monitor_select_the_admin_port(rendered: Path) -> None:
    objs = objects(rendered, "sidecar-ops")
    service = by_name(objs, "Service", "shim-metrics")
    (port,) = service["spec"]["ports"]
    assert (port["name"], port["targetPort"], port["port"]) == ("metrics", "admin", ADMIN_PORT)
    labels = workload(objs)["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    monitor = one(objs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["shim-test"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics")
    # Only the metrics Service matches: not the standalone Service nor a headless one.
    for case in CASES:
        others = [
            o
            for o in objects(rendered, case)
            if o["kind"] == "Service" and o["metadata"]["name"] != "shim-metrics"
        ]
        for other in others:
            assert (
                not monitor["spec"]["selector"]["matchLabels"].items()
                <= other["metadata"]["labels"].items()
            ), (case, other["metadata"]["name"])
        if case != "sidecar-ops":
            kinds = {o["kind"] for o in objects(rendered, case)}
            assert "ServiceMonitor" not in kinds, case
            names = {o["metadata"]["name"] for o in objects(rendered, case)}
            assert "shim-metrics" not in names, case


def test_admin_token_comes_from_a_secret(rendered: Path) -> None:
    for case, secret, key in (
        ("sidecar-ops", "shim-admin-token", "token"),
        ("standalone-persistent", "shim-admin", "admin-token"),
    ):
        objs = objects(rendered, case)
        spec = pod_spec(objs)
        volume = {v["name"]: v for v in spec["volumes"]}["admin-token"]
        assert volume["secret"] == {
            "secretName": secret,
            "defaultMode": 0o440,
            "items": [{"key": key, "path": key}],
        }, case
        mounts = {m["name"]: m for m in container(spec, "shim")["volumeMounts"]}
        assert mounts["admin-token"] == {
            "name": "admin-token",
            "mountPath": ADMIN_TOKEN_DIR,
            "readOnly": True,
        }
        assert shim_config(objs)["admin_token_file"] == f"{ADMIN_TOKEN_DIR}/{key}"
        # Only shim mounts it; the token never travels in shim.yaml or the environment.
        for _, c in containers(spec):
            if c["name"] != "shim":
                assert "admin-token" not in {m["name"] for m in c.get("volumeMounts", [])}
        assert "admin_token" not in shim_config(objs)
    made = one(objects(rendered, "sidecar-ops"), "Secret")
    assert made["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    token = base64.b64decode(made["data"]["token"])
    assert len(token) == 48 and token.isalnum()
    for case in CASES:
        if case not in ("sidecar-ops", "standalone-persistent"):
            assert "admin_token_file" not in shim_config(objects(rendered, case)), case
    notes = (rendered / "default.NOTES.txt").read_text(encoding="utf-8")
    assert "State-changing admin calls (prefetch, cache rm) are refused" in notes


def test_extra_env_mounts_and_lifecycle_reach_the_shim_container(rendered: Path) -> None:
    spec = pod_spec(objects(rendered, "sidecar-ops"))
    shim = container(spec, "shim")
    env = {e["name"]: e for e in shim["env"]}
    assert env["HTTPS_PROXY"] == {"name": "HTTPS_PROXY", "value": "http://egress.example.com:3128"}
    mounts = {m["name"]: m for m in shim["volumeMounts"]}
    assert mounts["extra-ca"] == {
        "name": "extra-ca",
        "mountPath": "/etc/ssl/corporate",
        "readOnly": True,
    }
    assert {"name": "extra-ca", "configMap": {"name": "corporate-ca"}} in spec["volumes"]
    persistent = container(pod_spec(objects(rendered, "standalone-persistent")), "shim")
    assert persistent["lifecycle"] == {"preStop": {"exec": {"command": ["sleep", "10"]}}}


# --- the image's dependencies -------------------------------------------------------------------


def locked_versions(path: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            requirement = Requirement(line.rstrip(" \\"))
            (spec,) = requirement.specifier
            assert spec.operator == "==", line
            pins[canonicalize_name(requirement.name)] = spec.version
    return pins


def lock_hashes(path: Path) -> dict[str, int]:
    """How many --hash lines each pin of a lock file has."""
    counts: dict[str, int] = {}
    name = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            name = canonicalize_name(line.split("==", 1)[0])
            counts[name] = 0
        elif line.strip().startswith("--hash=sha256:"):
            counts[name] += 1
    return counts


def test_lock_covers_pyproject_runtime_dependencies() -> None:
    """deploy/requirements.lock pins a version, with hashes, of every runtime dependency
    pyproject.toml names, within its range (`make lock` regenerates it after a change)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    runtime = ROOT / "deploy" / "requirements.lock"
    build = ROOT / "deploy" / "build-requirements.lock"
    pins = locked_versions(runtime)
    for text in project["project"]["dependencies"]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not in {runtime.name}: run `make lock`"
        assert requirement.specifier.contains(pins[name]), (
            f"{name}=={pins[name]} in {runtime.name} is outside {requirement.specifier}: "
            "run `make lock`"
        )
    build_pins = locked_versions(build)
    for text in project["build-system"]["requires"]:
        requirement = Requirement(text)
        assert requirement.specifier.contains(build_pins[canonicalize_name(requirement.name)])
    for path in (runtime, build):
        counts = lock_hashes(path)
        assert counts and all(n > 0 for n in counts.values()), path.name


def test_dockerfile_installs_the_locks_with_hashes_before_the_source() -> None:
    lines = [
        line.strip()
        for line in (ROOT / "deploy" / "Dockerfile").read_text(encoding="utf-8").splitlines()
    ]
    copy_locks = lines.index(
        "COPY deploy/build-requirements.lock deploy/requirements.lock ./deploy/"
    )
    copy_source = lines.index("COPY shim ./shim")
    install = "\n".join(lines[copy_locks:copy_source])
    assert install.count("--require-hashes --no-deps") == 2
    assert "-r deploy/build-requirements.lock" in install
    assert "--no-build-isolation -r deploy/requirements.lock" in install
    # shim itself: nothing more resolved or fetched.
    assert "--no-deps --no-build-isolation /src \\" in "\n".join(lines[copy_source:])
    ignore = (ROOT / "deploy" / "Dockerfile.dockerignore").read_text(encoding="utf-8")
    for path in (
        "deploy/requirements.lock",
        "deploy/build-requirements.lock",
        "deploy/netinit/shim-redirect",
    ):
        assert f"!{path}\n" in ignore
