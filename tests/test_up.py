"""`wasmq up`: one command runs everything, one instance per port and data directory,
and no process outlives it."""

from __future__ import annotations

import os
import signal
import site
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import psutil
import pytest
import requests

from tests.support import (
    INTSUM,
    ROOT,
    TUTORIAL_INPUT,
    Api,
    Child,
    child_env,
    copy_checkout,
    start_up,
    wait_until,
)
from wasmq.broker.redis_server import free_port


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def family(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def gone(procs: list[psutil.Process]) -> bool:
    return not [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def wasmq_cli(*args: str, timeout: float = 30, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wasmq", *args], cwd=ROOT,
                          env=child_env(**env), capture_output=True, text=True,
                          timeout=timeout)


def test_wasmq_up_serves_the_tutorial_says_where_it_logs_and_stops_cleanly(
        tmp_path: Path) -> None:
    up = start_up(tmp_path)
    try:
        api = Api(up.url)
        cfid = api.deploy(INTSUM.read_bytes(), name="intsum")
        assert api.call(cfid, TUTORIAL_INPUT).json()["result"] == '{"output": [55]}'
        assert (up.data_dir / "appendonlydir").exists() or any(up.data_dir.glob("*.aof*"))
        procs = family(up.proc.pid)
        names = " ".join(" ".join(p.cmdline()) for p in procs)
        assert "redis-server" in names and "gateway" in names and "worker" in names
        banner = up.output()
        assert banner.count("wasmq is up at") == 1
        assert f"workers: {up.data_dir / 'worker.log'}" in banner
        assert f"Redis {up.data_dir / 'redis.log'}" in banner
        assert "gateway: this terminal" in banner
        # Text logs (wasmq up's default): a tid only on lines about a task, once.
        tid = api.call(cfid, "[1,1]").json()["tid"]
        logs = (up.data_dir / "worker.log").read_text() + up.output()
        assert "ready" in logs
        for line in logs.splitlines():
            assert not line.rstrip().endswith("tid="), line
            assert line.count(tid) <= 1, line
        # `wasmq purge` finds this instance's Redis through its data directory.
        purged = wasmq_cli("purge", "--data-dir", str(up.data_dir))
        assert purged.stdout.startswith("cancelled 0 queued tasks"), purged.stderr
        assert up.stop() == 0
        assert wait_until(lambda: gone(procs), timeout=10, what="every child gone")
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{up.url}/healthz", timeout=1)
    finally:
        up.stop()


def installed_venv(tmp_path: Path, source: Path) -> Path:
    """A venv with `source` installed as a user's `pip install .` does (not editable),
    seeing this venv's packages for its dependencies (a plain path line, so this
    venv's own editable wasmq is not seen); its `bin` folder."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=60)
    purelib = sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)})
    (Path(purelib) / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin/python"),
                                "install", "--no-deps", "-q", str(source)],
                               capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr
    return venv / "bin"


def test_up_in_a_checkout_runs_the_installed_package_not_the_checkouts_folder(
        tmp_path: Path) -> None:
    """The checkout's own wasmq/ folder (without broker/) must not shadow the
    installed package in any child: gateway, workers, or the gateway's builds."""
    clone = copy_checkout(tmp_path / "clone")
    bin_dir = installed_venv(tmp_path, clone)
    port = free_port()
    proc = Child("wasmq up", [str(bin_dir / "wasmq"), "up", "--port", str(port), "--workers",
                              "1", "--data-dir", str(tmp_path / "data")],
                 child_env(), log=tmp_path / "up.log", cwd=clone).start()  # from the clone's root
    try:
        api = Api(f"http://127.0.0.1:{port}")
        wait_until(lambda: not proc.alive() or "wasmq is up at" in proc.output(), timeout=120,
                   what=f"wasmq up (see {proc.log})")
        assert "ModuleNotFoundError" not in proc.output(), proc.output()
        assert proc.alive(), proc.output()
        cfid = api.deploy(INTSUM.read_bytes(), name="intsum")
        assert api.call(cfid, TUTORIAL_INPUT).json()["result"] == '{"output": [55]}'
        children = " ".join(" ".join(p.cmdline()) for p in family(proc.pid))
        assert str(bin_dir / "python") in children
    finally:
        proc.signal(signal.SIGTERM, group=False)
        proc.stop()


def test_up_keeps_functions_across_a_restart(tmp_path: Path) -> None:
    up = start_up(tmp_path)
    try:
        api = Api(up.url)
        cfid = api.deploy(INTSUM.read_bytes())
        tid = api.call(cfid, "[2,3]").json()["tid"]
        time.sleep(1.5)  # appendfsync everysec
    finally:
        up.stop(signal.SIGINT)  # Ctrl-C: said when it starts and when it is done
    said = up.output().splitlines()
    assert "stopping..." in said and said[-1] == "stopped", said[-5:]
    up = start_up(tmp_path, data_dir=up.data_dir)
    try:
        api = Api(up.url)
        assert api.retrieve(tid).json()["result"] == '{"output": [5]}'
        body = api.call(cfid, "[4,4]").json()
        assert body["result"] == "{\"output\": [8]}", body
    finally:
        up.stop()


def test_a_second_instance_is_refused_on_a_taken_port_or_data_directory(
        tmp_path: Path) -> None:
    first = start_up(tmp_path / "first")
    try:
        api = Api(first.url)
        cfid = api.deploy(INTSUM.read_bytes(), name="intsum")
        port = first.url.rsplit(":", 1)[1]
        # The same port, another data directory: refused before anything starts.
        started = time.monotonic()
        same_port = wasmq_cli("up", "--port", port, "--workers", "1", "--data-dir",
                              str(tmp_path / "second"))
        assert same_port.returncode == 2, same_port.stderr
        assert f"port {port} is already in use" in same_port.stderr
        assert "wasmq is up" not in same_port.stdout and "Traceback" not in same_port.stderr
        assert time.monotonic() - started < 15
        assert not list((tmp_path / "second").glob("*.aof*"))
        assert not (tmp_path / "second" / "appendonlydir").exists()
        # `wasmq gateway` alone on that port: refused the same way.
        gateway = wasmq_cli("gateway", "--port", port)
        assert gateway.returncode == 2 and f"port {port} is already in use" in gateway.stderr
        # The same data directory, another port: refused, naming the running one.
        same_dir = wasmq_cli("up", "--port", str(free_port()), "--workers", "1",
                             "--data-dir", str(first.data_dir))
        assert same_dir.returncode == 2, same_dir.stderr
        assert f"in use by wasmq up (pid {first.proc.pid}) at {first.url}" in same_dir.stderr
        # The first instance alone still answers every call.
        for _ in range(6):
            assert [f["cfid"] for f in api.http.get(f"{api.url}/functions").json()
                    ["functions"]] == [cfid]
            assert api.call(cfid, "[1,2]").json()["result"] == '{"output": [3]}'
    finally:
        first.stop()


def test_a_port_held_by_something_else_is_refused_by_the_gateway(tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        result = wasmq_cli("gateway", "--port", str(port))
    assert result.returncode == 2
    assert f"port {port} is already in use" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("port", ["70000", "-1", "65536", "http"])
def test_ports_outside_1_to_65535_are_refused_at_once(port: str, tmp_path: Path) -> None:
    for command in (["up", "--data-dir", str(tmp_path / "data")], ["gateway"]):
        started = time.monotonic()
        result = wasmq_cli(*command, "--port", port)
        assert result.returncode == 2, result.stderr
        assert "Invalid value for '--port'" in result.stderr
        assert "Traceback" not in result.stderr
        assert time.monotonic() - started < 10
    assert not (tmp_path / "data" / "wasmq.lock").exists()


def test_port_0_serves_on_the_port_it_prints(tmp_path: Path) -> None:
    up = start_up(tmp_path, port=0, wait=False)
    try:
        line = wait_until(lambda: up.output().partition("wasmq is up at ")[2].split()[0],
                          timeout=90, what="the URL in the banner")
        assert not line.endswith(":0")
        assert requests.get(f"{line}/healthz", timeout=5).ok
    finally:
        up.stop()


def test_sigterm_during_start_up_stops_cleanly_without_saying_it_is_up(
        tmp_path: Path) -> None:
    up = start_up(tmp_path, wait=False)
    wait_until(lambda: any("gateway" in " ".join(p.cmdline()) for p in family(up.proc.pid)),
               timeout=30, what="the gateway starting")
    procs = family(up.proc.pid)
    assert up.stop() == 0
    assert "wasmq is up" not in up.output()
    assert "Traceback" not in up.output()
    assert wait_until(lambda: gone(procs), timeout=10, what="every child gone")


def test_no_process_outlives_up_after_its_gateway_or_itself_is_killed(tmp_path: Path) -> None:
    up = start_up(tmp_path)
    port = int(up.url.rsplit(":", 1)[1])
    try:
        gateway = next(p for p in family(up.proc.pid) if "gateway" in " ".join(p.cmdline()))
        servers = gateway.children(recursive=True)
        assert servers, "Granian runs its server in child processes"
        gateway.kill()  # its main process only
        # The server processes die with it, the port is free again, and up restarts it.
        assert wait_until(lambda: gone(servers), timeout=10, what="the server processes")
        wait_until(lambda: "gateway exited with -9; restarting" in up.output(), timeout=20)
        wait_until(lambda: requests.get(f"{up.url}/healthz", timeout=1).ok, timeout=60,
                   what="the gateway restarted")
        procs = family(up.proc.pid)
        assert up.stop() == 0
        assert wait_until(lambda: gone(procs), timeout=10, what="every child gone")
        assert not listening(port)
        # SIGKILL of up itself: its children follow it (PDEATHSIG), and its data
        # directory is free for the next one at once.
        up = start_up(tmp_path, data_dir=up.data_dir)
        procs = family(up.proc.pid)
        os.kill(up.proc.pid, signal.SIGKILL)
        assert wait_until(lambda: gone(procs), timeout=30, what="children of a killed up")
        assert not listening(int(up.url.rsplit(":", 1)[1]))
        up = start_up(tmp_path, data_dir=up.data_dir)
        assert requests.get(f"{up.url}/healthz", timeout=5).ok
    finally:
        up.stop()


def test_a_malformed_setting_is_reported_without_a_traceback() -> None:
    result = wasmq_cli("gateway", WASMQ_TASK_TIMEOUT="soon")
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
