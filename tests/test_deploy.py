"""Deployment artefacts (deploy/): scripts/validate-deploy lints the Dockerfile, renders the Helm
chart for every shape and validates each object against the Kubernetes schema. These tests run
it once, then check in the rendered manifests what each shape promises, run the same helm on
the values the chart must refuse, load every rendered shim.yaml with shim's own loader, and
start a real TorchServe with the example's rendered config.properties.

The first run builds helm from the Go module proxy (a few minutes); later runs take seconds.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from shim._errors import ConfigError
from shim.config import load_settings
from tests.support.procs import free_port
from tests.support.torchserve import TorchServe, require_torchserve, torchserve_venv

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "validate-deploy"
CHART = ROOT / "deploy" / "helm" / "shim"
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
)
STANDALONE = tuple(case for case in CASES if case.startswith("standalone"))
# The cases with the chart's example TorchServe container.
WITH_TORCHSERVE = (
    "sidecar",
    "sidecar-dfdaemon",
    "sidecar-plain-container",
    "transparent",
    "transparent-dfdaemon",
    "transparent-http-only",
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


def pod_spec(objs: list[Obj]) -> Obj:
    spec: Obj = one(objs, "Deployment")["spec"]["template"]["spec"]
    return spec


def containers(spec: Obj) -> Iterator[tuple[str, Obj]]:
    for kind in ("initContainers", "containers"):
        for container in spec.get(kind) or []:
            yield kind, container


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
    assert {path.stem for path in rendered.glob("*.yaml")} == set(CASES)
    for case in CASES:
        objs = objects(rendered, case)
        assert {o["kind"] for o in objs} >= {"ConfigMap", "Deployment", "ServiceAccount"}, case
        assert (rendered / f"{case}.NOTES.txt").read_text(encoding="utf-8").strip(), case
        # Credentials come from an existing Secret or workload identity, never from the chart.
        assert all(o["kind"] != "Secret" for o in objs), case


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


def test_transparent_redirect_exempts_shim_uid(rendered: Path) -> None:
    for case, ports in (
        ("transparent", {80, 443, 9000}),
        ("transparent-dfdaemon", {80, 443, 9000}),
        ("transparent-http-only", {80, 9000}),
    ):
        objs = objects(rendered, case)
        script = "\n".join(container(pod_spec(objs), "iptables")["args"])
        assert f"! --uid-owner {UID} -j REDIRECT --to-ports {TRANSPARENT_PORT}" in script
        assert "-t nat -A OUTPUT" in script
        redirected = {
            int(line.split()[1])
            for line in script.splitlines()
            if line.strip().startswith("redirect ")
        }
        assert redirected == ports, case
        assert shim_config(objs)["transparent"] == f"127.0.0.1:{TRANSPARENT_PORT}"
        # No proxy settings for TorchServe, only the truststore when https is intercepted.
        options = java_tool_options(pod_spec(objs))
        assert "proxyHost" not in options
        assert ("javax.net.ssl.trustStore=" in options) == (443 in ports)
        torchserve = container(pod_spec(objs), "torchserve")
        assert torchserve["securityContext"]["runAsUser"] != UID


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
        # Read-only root: everything shim writes is a volume.
        mounts = {m["mountPath"]: m for m in container(spec, "shim")["volumeMounts"]}
        assert set(mounts) == {"/etc/shim", "/var/lib/shim", "/var/cache/shim", "/tmp"}, case
        assert mounts["/etc/shim"].get("readOnly") is True
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
        service = one(objs, "Service")
        deployment = one(objs, "Deployment")
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
        assert shim_config(objs)["admin"] == f"0.0.0.0:{ADMIN_PORT}"
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert shim[probe]["httpGet"] == {"path": "/healthz", "port": "admin"}, (case, probe)
        assert shim["resources"]["requests"] and shim["resources"]["limits"]


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
        return [
            {"from": [TORCHSERVE_PODS], "ports": [tcp("reverse")]},
            {"from": [PROMETHEUS], "ports": [tcp("admin")]},
        ]
    if case in WITH_TORCHSERVE:
        return [
            {"from": [PROMETHEUS], "ports": [tcp("admin"), tcp("ts-metrics")]},
            {"from": [ANY_POD], "ports": [tcp("inference")]},
        ]
    return [{"from": [PROMETHEUS], "ports": [tcp("admin")]}]


def test_network_policy_isolates_every_shape(rendered: Path) -> None:
    for case in CASES:
        objs = objects(rendered, case)
        if case == "standalone-no-networkpolicy":
            assert all(o["kind"] != "NetworkPolicy" for o in objs)
            continue
        policy = one(objs, "NetworkPolicy")
        labels = one(objs, "Deployment")["spec"]["template"]["metadata"]["labels"]
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
        service = one(objs, "Service")["spec"]
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


def test_a_pvc_cache_runs_one_replica_replaced_by_recreate(rendered: Path) -> None:
    for case in CASES:
        deployment = one(objects(rendered, case), "Deployment")
        volumes = {v["name"]: v for v in pod_spec(objects(rendered, case))["volumes"]}
        if case == "standalone-pvc":
            assert volumes["cache"]["persistentVolumeClaim"] == {"claimName": "shim-cache"}
            assert deployment["spec"]["replicas"] == 1
            assert deployment["spec"]["strategy"] == {"type": "Recreate"}
        else:
            assert "persistentVolumeClaim" not in volumes["cache"], case
            assert "strategy" not in deployment["spec"], case


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


def test_termination_grace_is_shim_grace_plus_five_seconds(rendered: Path) -> None:
    for case in CASES:
        objs = objects(rendered, case)
        grace = shim_config(objs)["shutdown_grace"]
        period = pod_spec(objs)["terminationGracePeriodSeconds"]
        assert period == math.ceil(grace) + 5, case
    assert pod_spec(objects(rendered, "default"))["terminationGracePeriodSeconds"] == 30


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
        path = tmp_path / f"{case}.shim.yaml"
        path.write_text(data["shim.yaml"].replace("${HOST_IP}", "10.0.0.7"), encoding="utf-8")
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
