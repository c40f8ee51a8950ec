"""deploy/, docker-compose.yml and the README agree with the code.

No Docker engine or cluster runs here, so the files are parsed: every command
must be one the `wasmq` CLI accepts, every environment name a Settings field
with a valid value, and ports, names and limits must line up. The Redis config
is started for real.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

import click
import pytest
import redis
import yaml

from tests.support import ROOT, wait_until
from wasmq.broker.redis_server import free_port, redis_server_binary
from wasmq.broker.settings import Settings
from wasmq.cli import main as cli

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SETTING_NAMES = {f"WASMQ_{f.name.upper()}" for f in fields(Settings)}


def check_cli(argv: list[str]) -> click.Context:
    """Parse argv as the `wasmq` command line would, or fail naming the problem."""
    assert argv[0] == "wasmq", argv
    command = cli.commands.get(argv[1])
    assert command is not None, f"wasmq has no command {argv[1]!r}"
    try:
        return command.make_context(argv[1], list(argv[2:]))
    except click.UsageError as exc:
        raise AssertionError(f"{shlex.join(argv)}: {exc.format_message()}") from None


def check_env(env: dict[str, Any]) -> Settings:
    unknown = {k for k in env if k.startswith("WASMQ_")} - SETTING_NAMES
    assert not unknown, f"not settings: {sorted(unknown)}"
    return Settings.from_env({k: str(v) for k, v in env.items()})


def dockerfile_stages() -> list[list[str]]:
    stages: list[list[str]] = []
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


def instruction(stage: list[str], name: str) -> list[str]:
    return [line.split(None, 1)[1] for line in stage if line.split()[0].upper() == name]


def test_dockerfile_is_multi_stage_slim_and_runs_as_a_user() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2
    build, final = stages[0], stages[-1]
    assert "slim" in final[0] and " AS " not in final[0].upper()
    assert any("pip wheel" in r and "/wheels" in r for r in instruction(build, "RUN"))
    copies = instruction(build, "COPY")
    folders = tomllib.loads((ROOT / "pyproject.toml").read_text())[
        "tool"]["setuptools"]["package-dir"].values()
    for folder in folders:
        assert any(c.split()[0] == folder for c in copies), f"{folder}/ not copied"
    assert any(c.startswith("--from=") and "/wheels" in c for c in instruction(final, "COPY"))
    installs = " ".join(instruction(final, "RUN"))
    assert "--no-index" in installs and "--find-links /wheels" in installs
    assert "gcc" not in installs and "build-essential" not in installs
    user = instruction(final, "USER")[-1]
    assert user not in ("0", "root")
    assert f"--uid {user}" in " ".join(instruction(final, "RUN"))
    check_cli(yaml.safe_load(instruction(final, "CMD")[-1]))


def dockerfile_port() -> int:
    return int(instruction(dockerfile_stages()[-1], "EXPOSE")[-1])


def dockerfile_user() -> int:
    return int(instruction(dockerfile_stages()[-1], "USER")[-1])


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_runs_durable_redis_a_gateway_and_a_scalable_worker() -> None:
    services = compose()["services"]
    assert set(services) == {"redis", "gateway", "worker"}
    redis_svc = services["redis"]
    conf_mount = next(v for v in redis_svc["volumes"] if v.startswith("./deploy/redis.conf:"))
    assert conf_mount.split(":")[1] in redis_svc["command"]
    assert any(v.split(":")[1] == "/data" for v in redis_svc["volumes"])
    assert "redis-cli" in redis_svc["healthcheck"]["test"]

    for name in ("gateway", "worker"):
        svc = services[name]
        settings = check_env(svc["environment"])
        host_port = settings.redis_url.split("//")[1].split("/")[0]
        assert host_port == f"redis:{redis_port()}", settings.redis_url
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile"
        check_cli(svc["command"])

    gateway = check_cli(services["gateway"]["command"])
    assert services["gateway"]["ports"] == [f"{dockerfile_port()}:{gateway.params['port']}"]
    assert gateway.params["port"] == dockerfile_port()
    worker = services["worker"]
    assert "ports" not in worker and "container_name" not in worker, "would not scale"
    heartbeat = check_cli(worker["command"]).params["heartbeat_file"]
    probe = check_cli(worker["healthcheck"]["test"][1:]).params  # after "CMD"
    assert probe["heartbeat_file"] == heartbeat
    grace = int(worker["stop_grace_period"].rstrip("s"))
    assert grace > check_env(worker["environment"]).task_timeout


def redis_conf() -> dict[str, str]:
    out = {}
    for line in (DEPLOY / "redis.conf").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            out[key] = value.strip()
    return out


def redis_port() -> int:
    return int(redis_conf()["port"])


def test_redis_conf_is_durable_and_never_evicts() -> None:
    conf = redis_conf()
    assert conf["appendonly"] == "yes" and conf["appendfsync"] == "everysec"
    assert conf["maxmemory-policy"] == "noeviction"
    assert conf["dir"] == "/data"


def test_redis_conf_starts_a_real_redis_server(tmp_path: Path) -> None:
    # The same file with only its address and directory changed for this machine.
    text = (DEPLOY / "redis.conf").read_text()
    port = free_port()
    text = re.sub(r"^dir .*$", f"dir {tmp_path}", text, flags=re.M)
    text = re.sub(r"^port .*$", f"port {port}", text, flags=re.M)
    text = re.sub(r"^bind .*$", "bind 127.0.0.1", text, flags=re.M)
    (tmp_path / "redis.conf").write_text(text)
    proc = subprocess.Popen([redis_server_binary(), str(tmp_path / "redis.conf")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        client = redis.Redis(port=port, socket_connect_timeout=0.5)
        wait_until(client.ping, what="redis-server with deploy/redis.conf")
        assert client.config_get("appendonly")["appendonly"] == "yes"
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        client.set("k", "v")
    finally:
        proc.terminate()
        proc.wait(10)
    assert list(tmp_path.glob("wasmq.aof*")) or (tmp_path / "appendonlydir").exists()


def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    docs = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs[(doc["kind"], doc.get("metadata", {}).get("name", path.name))] = doc
    return docs


@pytest.fixture(scope="module")
def k8s() -> dict[tuple[str, str], dict[str, Any]]:
    return manifests()


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def container(k8s: dict, name: str) -> dict[str, Any]:
    spec = k8s[("Deployment", name)]["spec"]["template"]["spec"]
    assert len(spec["containers"]) == 1
    return spec["containers"][0]


def settings_from_configmap(k8s: dict) -> Settings:
    return check_env(k8s[("ConfigMap", "wasmq-config")]["data"])


def test_deployments_have_probes_limits_valid_commands_and_run_as_the_image_user(
        k8s: dict) -> None:
    for name in ("wasmq-gateway", "wasmq-worker"):
        pod = k8s[("Deployment", name)]["spec"]["template"]
        c = container(k8s, name)
        check_cli(c["command"])
        assert c["envFrom"] == [{"configMapRef": {"name": "wasmq-config"}}]
        assert c["livenessProbe"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), (name, kind)
        security = pod["spec"]["securityContext"]
        assert security["runAsNonRoot"] is True
        assert security["runAsUser"] == dockerfile_user()
        selector = k8s[("Deployment", name)]["spec"]["selector"]["matchLabels"]
        assert selector.items() <= pod["metadata"]["labels"].items()


def test_gateway_probes_and_service_use_the_port_it_listens_on(k8s: dict) -> None:
    c = container(k8s, "wasmq-gateway")
    listen = check_cli(c["command"]).params
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["http"] == listen["port"] == dockerfile_port()
    assert listen["host"] == "0.0.0.0"
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["livenessProbe"]["tcpSocket"]["port"] in ports
    service = k8s[("Service", "wasmq-gateway")]["spec"]
    labels = k8s[("Deployment", "wasmq-gateway")]["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= labels.items()
    assert service["ports"][0]["targetPort"] in ports


def test_worker_liveness_reads_the_heartbeat_it_writes_and_limits_fit_the_settings(
        k8s: dict) -> None:
    c = container(k8s, "wasmq-worker")
    worker = check_cli(c["command"]).params
    probe = check_cli(c["livenessProbe"]["exec"]["command"]).params
    assert probe["heartbeat_file"] == worker["heartbeat_file"]
    assert any(m["mountPath"] == str(worker["heartbeat_file"].parent)
               for m in c["volumeMounts"])
    settings = settings_from_configmap(k8s)
    memory = c["resources"]["limits"]["memory"]
    mib = int(memory[:-2]) * (1024 if memory.endswith("Gi") else 1)
    assert mib >= worker["concurrency"] * settings.max_memory_mb, "a module could OOM the pod"
    pod = k8s[("Deployment", "wasmq-worker")]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > settings.task_timeout


def test_redis_in_kubernetes_uses_the_same_config_and_port(k8s: dict) -> None:
    conf = k8s[("ConfigMap", "wasmq-redis-config")]["data"]["redis.conf"]
    assert conf == (DEPLOY / "redis.conf").read_text()
    service = k8s[("Service", "wasmq-redis")]["spec"]["ports"][0]
    assert service["port"] == redis_port()
    settings = settings_from_configmap(k8s)
    assert settings.redis_url == f"redis://wasmq-redis:{service['port']}/0"
    redis_container = k8s[("StatefulSet", "wasmq-redis")]["spec"]["template"]["spec"][
        "containers"][0]
    mount = next(m for m in redis_container["volumeMounts"] if m["name"] == "config")
    assert f"{mount['mountPath']}/redis.conf" in redis_container["command"]


def test_keda_scales_each_queue_s_workers_on_its_calls_waiting(k8s: dict) -> None:
    settings = settings_from_configmap(k8s)
    scaled = k8s[("ScaledObject", "wasmq-worker")]["spec"]
    assert ("Deployment", scaled["scaleTargetRef"]["name"]) in k8s
    assert scaled["scaleTargetRef"]["name"] == "wasmq-worker"
    assert scaled["minReplicaCount"] >= 1, "the default queue keeps a worker"
    for name, queue in (("wasmq-worker", settings.queue), ("wasmq-worker-big", "big")):
        trigger = k8s[("ScaledObject", name)]["spec"]["triggers"][0]
        assert trigger["type"] == "metrics-api"
        service = k8s[("Service", "wasmq-gateway")]["spec"]["ports"][0]["port"]
        assert trigger["metadata"]["url"] == \
            f"http://wasmq-gateway:{service}/metrics/queues"  # GET /metrics/queues
        assert trigger["metadata"]["valueLocation"] == f"{queue}.queued"
        assert int(trigger["metadata"]["targetValue"]) > 0
    assert k8s[("ScaledObject", "wasmq-worker-big")]["spec"]["minReplicaCount"] == 0


def cluster_section() -> str:
    text = (ROOT / "docs" / "operators.md").read_text()
    start = text.index("## Running a cluster")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def test_the_operator_manuals_cluster_section_matches_the_files() -> None:
    section = cluster_section()
    for needed in ("docker compose up --build --scale worker=", "kubectl apply -k deploy/k8s",
                   "deploy/redis.conf", "deploy/Dockerfile", "at-least-once", "everysec"):
        assert needed in section.lower() if needed.islower() else needed in section, needed
    for manifest in K8S.glob("*.yaml"):
        if manifest.name != "kustomization.yaml":
            assert f"`{manifest.name}`" in section, manifest.name
    for line in re.findall(r"^\s*(wasmq \S+.*)$", section, re.M):
        check_cli(shlex.split(line.split("#")[0]))
    readme = (ROOT / "README.md").read_text()
    config = readme[readme.index("## Configuration"):]
    config = config[:config.index("\n## ")]
    names = set(re.findall(r"\bWASMQ_[A-Z_]+\b", section + config))
    assert names <= SETTING_NAMES, sorted(names - SETTING_NAMES)


def sentinel_conf() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in (DEPLOY / "sentinel.conf").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            words = line.split()
            key = " ".join(words[:2]) if words[0] == "sentinel" else words[0]
            out[key] = words[2:] if words[0] == "sentinel" else words[1:]
    return out


def test_the_sentinel_compose_file_follows_the_primary_of_the_main_one() -> None:
    base = compose()["services"]
    override = yaml.safe_load((DEPLOY / "sentinel.compose.yml").read_text())["services"]
    conf = sentinel_conf()
    name, host, port, quorum = conf["sentinel monitor"]
    assert (host, int(port)) == ("redis", redis_port()) and "redis" in base
    sentinels = [s for s, svc in override.items()
                 if "--sentinel" in " ".join(svc.get("command", []))]
    assert len(sentinels) >= 3 and len(sentinels) // 2 < int(quorum) <= len(sentinels)
    replica = override["redis-replica"]["command"]
    assert replica[replica.index("--replicaof") + 1:] == ["redis", str(redis_port())]
    for service in ("gateway", "worker"):
        settings = check_env({**base[service]["environment"],
                              **override[service]["environment"]})
        assert settings.redis_master == name
        assert sorted(h for h, _ in settings.sentinels) == sorted(sentinels)
        assert {p for _, p in settings.sentinels} == {int(conf["port"][0])}
        assert set(override[service]["depends_on"]) == set(sentinels)


def test_sentinel_conf_starts_a_real_sentinel(tmp_path: Path) -> None:
    # The same file, watching a real Redis on this machine instead of `redis`.
    redis_port_here, sentinel_port = free_port(), free_port()
    primary = subprocess.Popen([redis_server_binary(), "--port", str(redis_port_here),
                                "--bind", "127.0.0.1", "--save", ""],
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    text = (DEPLOY / "sentinel.conf").read_text()
    text = re.sub(r"^port .*$", f"port {sentinel_port}\nbind 127.0.0.1\ndir {tmp_path}",
                  text, flags=re.M)
    text = text.replace("wasmq redis 6379", f"wasmq 127.0.0.1 {redis_port_here}")
    (tmp_path / "sentinel.conf").write_text(text)
    sentinel = subprocess.Popen([redis_server_binary(), str(tmp_path / "sentinel.conf"),
                                 "--sentinel"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.STDOUT)
    try:
        client = redis.Redis(port=sentinel_port, socket_connect_timeout=0.5)
        master = sentinel_conf()["sentinel monitor"][0]
        address = wait_until(lambda: client.sentinel_get_master_addr_by_name(master),
                             what="the sentinel watching the primary")
        assert int(address[1]) == redis_port_here
    finally:
        for proc in (sentinel, primary):
            proc.terminate()
            proc.wait(10)
