"""A whole wasmq stack as child processes on this machine: Redis, a gateway, workers.

The test session and the benchmark both need real processes started the same
way, each in its own process group with its output in a log file, so they
share these helpers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import requests

from wasmq.broker.redis_server import free_port, redis_command

ROOT = Path(__file__).resolve().parents[1]
WARM_LINE = "hot modules preloaded"  # what each pool process logs once it is warm


def wait_until(check: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05,
               what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except Exception as exc:  # the thing may not be up yet
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what or check}: {last!r}")


class Proc:
    """A child process in its own process group, with its output in a log file."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.argv, self.env, self.log = argv, env, log
        self.popen: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(self.argv, env=self.env, cwd=ROOT, stdout=out,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True)

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int, group: bool = True) -> None:
        try:
            if group:
                os.killpg(self.pid, sig)
            else:
                os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 15.0) -> None:
        if not self.alive():
            return
        self.signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)  # type: ignore[union-attr]
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.popen.wait()  # type: ignore[union-attr]

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def child_env(**overrides: str) -> dict[str, str]:
    """This environment without any WASMQ_ setting, running this checkout's code."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WASMQ_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides)
    return env


def start_redis(workdir: Path, port: int | None = None) -> tuple[Proc, str]:
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    proc = Proc(redis_command(workdir, port), child_env(), workdir / "redis.log")
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    wait_until(client.ping, what="redis-server")
    return proc, url


def wasmq(args: list[str], env: dict[str, str], log: Path) -> Proc:
    return Proc([sys.executable, "-m", "wasmq", *args], env, log)


def start_worker(env: dict[str, str], log: Path, concurrency: int = 2,
                 name: str = "worker@%h", heartbeat_file: Path | None = None) -> Proc:
    """A Celery worker, returned once it consumes and every pool process is warm."""
    before = log.read_text(errors="replace") if log.exists() else ""
    beat = ["--heartbeat-file", str(heartbeat_file)] if heartbeat_file else []
    worker = wasmq(["worker", "--concurrency", str(concurrency), "--name", name, *beat],
                   env, log)

    def up() -> bool:
        new = worker.output()[len(before):]
        return "ready." in new and new.count(WARM_LINE) >= concurrency

    wait_until(up, what="worker")
    return worker


@dataclass
class Stack:
    url: str
    redis_url: str
    gateway: Proc
    worker: Proc
    env: dict[str, str]
    workdir: Path

    def restart_worker(self, concurrency: int = 2) -> None:
        argv = self.worker.argv
        self.worker.stop()
        self.worker = start_worker(self.env, self.workdir / "worker.log", concurrency,
                                   argv[argv.index("--name") + 1], self.workdir / "heartbeat")

    def stop(self) -> None:
        self.worker.stop()
        self.gateway.stop()


def start_stack(workdir: Path, redis_url: str, concurrency: int = 2, **env: str) -> Stack:
    """A gateway on a free loopback port and a worker, both against `redis_url`."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    environment = child_env(WASMQ_REDIS_URL=redis_url, **env)
    gateway = wasmq(["gateway", "--port", str(port)], environment, workdir / "gateway.log")
    url = f"http://127.0.0.1:{port}"
    try:
        worker = start_worker(environment, workdir / "worker.log", concurrency, f"w{port}@%h",
                              workdir / "heartbeat")
    except AssertionError:  # leave no orphan behind when a part fails to start
        gateway.stop()
        raise
    try:
        wait_until(lambda: requests.get(f"{url}/healthz", timeout=1).ok, what="gateway")
    except AssertionError:
        worker.stop()
        gateway.stop()
        raise
    return Stack(url, redis_url, gateway, worker, environment, workdir)
