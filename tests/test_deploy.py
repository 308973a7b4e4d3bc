"""Deployment artefacts (deploy/): scripts/validate-deploy lints the Dockerfile, renders the Helm
chart for every shape and validates each object against the Kubernetes schema. These tests run
it once, then check in the rendered manifests what each shape promises.

The first run builds helm from the Go module proxy (a few minutes); later runs take seconds.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "validate-deploy"
UID = 10001
# dragonfly-endpoint's config file, which shim reads when no config is given.
CONFIG_ENV_JSON = "DRAGONFLY_ENDPOINT_CONFIG"
PROXY_PORT, ADMIN_PORT, TRANSPARENT_PORT, REVERSE_PORT = 8790, 8791, 8792, 8793

# The cases scripts/validate-deploy renders (CASES there).
CASES = (
    "default",
    "sidecar",
    "sidecar-dfdaemon",
    "sidecar-plain-container",
    "transparent",
    "transparent-dfdaemon",
    "transparent-http-only",
    "standalone",
    "standalone-dfdaemon",
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
    if result.returncode != 0 and "invalid choice: 'env'" in result.stderr:
        pytest.skip("this shim has no `shim env` command yet")
    assert result.returncode == 0, result.stderr
    (line,) = [
        ln for ln in result.stdout.splitlines() if ln.startswith("export JAVA_TOOL_OPTIONS=")
    ]
    printed = shlex.split(line.removeprefix("export JAVA_TOOL_OPTIONS="))[0]
    assert java_tool_options(pod_spec(objects(rendered, "sidecar"))) == printed


def test_standalone_service_targets_the_reverse_port(rendered: Path) -> None:
    for case in ("standalone", "standalone-dfdaemon"):
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
        policy = one(objs, "NetworkPolicy")
        assert policy["spec"]["ingress"][0]["ports"] == [{"port": "reverse", "protocol": "TCP"}]
        assert policy["spec"]["ingress"][0]["from"]


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


def test_rendered_config_is_accepted_by_shim(rendered: Path) -> None:
    """Each shape's shim.yaml loads with shim's own settings model, once it knows these keys."""
    from shim.config import BucketConfig, Settings, settings_from_mapping

    missing = {"transparent", "reverse", "dfdaemon"} - set(Settings.model_fields)
    if missing or "alias" not in BucketConfig.model_fields:
        pytest.skip(f"shim.config does not have the deployment keys yet: {sorted(missing)}, alias")
    env = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "not-a-secret"}
    for case in CASES:
        data = one(objects(rendered, case), "ConfigMap")["data"]
        raw = yaml.safe_load(data["shim.yaml"].replace("${HOST_IP}", "10.0.0.7"))
        settings_from_mapping(raw, env=env, source=f"{case}: shim.yaml")
        # The CA step runs without the credentials' environment.
        settings_from_mapping(yaml.safe_load(data["ca.yaml"]), env={}, source=f"{case}: ca.yaml")
