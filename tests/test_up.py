"""`wasmq up`: one command runs everything; SIGTERM leaves no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import requests

from tests.support import INTSUM, ROOT, TUTORIAL_INPUT, Api, child_env, wait_until
from wasmq.broker.redis_server import free_port


def test_wasmq_up_serves_the_tutorial_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    log = open(tmp_path / "up.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "wasmq", "up", "--port", str(port),
                             "--workers", "1", "--data-dir", str(tmp_path / "data")],
                            cwd=ROOT, env=child_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: f"wasmq is up at {url}" in (tmp_path / "up.log").read_text(),
                   timeout=60, what="wasmq up banner")
        api = Api(url)
        cfid = api.deploy(INTSUM.read_bytes(), name="intsum")
        assert api.call(cfid, TUTORIAL_INPUT).json()["result"] == '{"output": [55]}'
        assert (tmp_path / "data" / "appendonlydir").exists() or \
            any((tmp_path / "data").glob("*.aof*"))
        family = psutil.Process(proc.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in family)
        assert "redis-server" in names and "gateway" in names and "worker" in names
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0
        time.sleep(0.5)
        assert not [p for p in family if p.is_running() and p.status() != "zombie"]
        try:
            requests.get(f"{url}/healthz", timeout=1)
            raise AssertionError("gateway still answers after SIGTERM")
        except requests.ConnectionError:
            pass
    finally:
        if proc.poll() is None:
            os.killpg(os.getpgid(proc.pid), signal.SIGKILL)
        log.close()


def test_up_keeps_functions_across_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"

    def start() -> tuple[subprocess.Popen, Api]:
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "wasmq", "up", "--port", str(port),
                                 "--workers", "1", "--data-dir", str(data)], cwd=ROOT,
                                env=child_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        api = Api(f"http://127.0.0.1:{port}")
        wait_until(lambda: requests.get(f"{api.url}/healthz", timeout=1).ok, timeout=60,
                   what="wasmq up")
        return proc, api

    proc, api = start()
    cfid = api.deploy(INTSUM.read_bytes())
    tid = api.call(cfid, "[2,3]").json()["tid"]
    time.sleep(1.5)  # appendfsync everysec
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=40)
    proc, api = start()
    try:
        assert api.retrieve(tid).json()["result"] == '{"output": [5]}'
        body = api.call(cfid, "[4,4]").json()
        assert body["result"] == "{\"output\": [8]}", body
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=40)


def test_a_malformed_setting_is_reported_without_a_traceback() -> None:
    result = subprocess.run([sys.executable, "-m", "wasmq", "gateway"], cwd=ROOT,
                            env=child_env(WASMQ_TASK_TIMEOUT="soon"), capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 2
    assert "WASMQ_TASK_TIMEOUT='soon' is not a valid float" in result.stderr
    assert "Traceback" not in result.stderr


def test_process_counts_follow_a_container_cpu_quota(tmp_path: Path, monkeypatch) -> None:
    from wasmq.broker import settings

    cpu_max = tmp_path / "cpu.max"
    monkeypatch.setattr(settings, "CGROUP_CPU_MAX", cpu_max)
    cores = len(os.sched_getaffinity(0))
    assert settings.available_cores() == cores  # no quota file
    cpu_max.write_text("max 100000\n")
    assert settings.available_cores() == cores
    cpu_max.write_text("50000 100000\n")  # half a core still gets one process
    assert settings.available_cores() == 1
    assert settings.Settings().gateway_processes == 1
