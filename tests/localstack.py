"""A whole wasmq stack as child processes on this machine: Redis, a gateway, workers,
or `wasmq up` itself. Test and bench scaffolding (it does not ship in the wheel):
the test session and the benchmark both need real processes started the same way,
each in its own process group (wasmq/process.py) with its output in a log file.

Readiness is read from the parts themselves: Redis answers PING, a gateway its
`/healthz`, a worker node its readiness file (workers/readiness.py), and
`wasmq up` the lock file it publishes once all of its parts are up.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import redis
import requests

from wasmq.broker.redis_server import free_port, redis_command
from wasmq.instance import read_instance
from wasmq.process import Child
from wasmq.workers.readiness import Readiness

ROOT = Path(__file__).resolve().parents[1]


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


def spawn(argv: list[str], env: dict[str, str], log: Path, name: str = "") -> Child:
    """Start `argv` from the checkout's root, in its own process group."""
    return Child(name or Path(argv[0]).name, argv, env, log=log, cwd=ROOT).start()


def child_env(**overrides: str) -> dict[str, str]:
    """This environment without any WASMQ_ setting, running this checkout's code."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WASMQ_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides)
    return env


def healthy(url: str) -> bool:
    return requests.get(f"{url}/healthz", timeout=1).ok


def start_redis(workdir: Path, port: int | None = None) -> tuple[Child, str]:
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    proc = spawn(redis_command(workdir, port), child_env(), workdir / "redis.log", "redis")
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    wait_until(client.ping, what="redis-server")
    return proc, url


def wasmq(args: list[str], env: dict[str, str], log: Path) -> Child:
    return spawn([sys.executable, "-m", "wasmq", *args], env, log, f"wasmq {args[0]}")


def worker_ready(worker: Child, ready_file: Path, concurrency: int) -> bool:
    """The node consumes and `concurrency` of its live pool processes are warm."""
    try:
        pool = {p.pid for p in psutil.Process(worker.pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return False
    return Readiness.read(ready_file).ready(worker.pid, concurrency, pool)


def start_worker(env: dict[str, str], log: Path, concurrency: int = 2,
                 name: str = "worker@%h", heartbeat_file: Path | None = None,
                 queues: str = "") -> Child:
    """A Celery worker, returned once it consumes and every pool process is warm."""
    beat = ["--heartbeat-file", str(heartbeat_file)] if heartbeat_file else []
    beat += ["-Q", queues] if queues else []
    ready = log.with_suffix(".ready")
    worker = wasmq(["worker", "--concurrency", str(concurrency), "--name", name,
                    "--ready-file", str(ready), *beat], env, log)
    try:
        wait_until(lambda: worker.alive() and worker_ready(worker, ready, concurrency),
                   timeout=60, what=f"worker {name} (see {log})")
    except AssertionError:
        worker.stop()
        raise
    return worker


@dataclass
class Stack:
    url: str
    redis_url: str
    gateway: Child
    worker: Child
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


def start_gateway(env: dict[str, str], log: Path, port: int | None = None) -> tuple[Child, str]:
    """A gateway on a loopback port, returned once it answers its health check."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    gateway = wasmq(["gateway", "--port", str(port)], env, log)
    try:
        wait_until(lambda: gateway.alive() and healthy(url), timeout=60,
                   what=f"gateway (see {log})")
    except AssertionError:
        gateway.stop()
        raise
    return gateway, url


def start_stack(workdir: Path, redis_url: str, concurrency: int = 2, **env: str) -> Stack:
    """A gateway on a free loopback port and a worker, both against `redis_url`."""
    workdir.mkdir(parents=True, exist_ok=True)
    environment = child_env(WASMQ_REDIS_URL=redis_url, **env)
    gateway, url = start_gateway(environment, workdir / "gateway.log")
    try:
        port = url.rsplit(":", 1)[1]
        worker = start_worker(environment, workdir / "worker.log", concurrency, f"w{port}@%h",
                              workdir / "heartbeat")
    except AssertionError:  # leave no orphan behind when a part fails to start
        gateway.stop()
        raise
    return Stack(url, redis_url, gateway, worker, environment, workdir)


@dataclass
class Up:
    """A running `wasmq up`, started the way a user starts it."""

    proc: Child
    url: str
    data_dir: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40) -> int:
        """Stop it as Ctrl-C or SIGTERM does; its exit code."""
        if self.proc.alive():
            self.proc.signal(sig, group=False)
            try:
                self.proc.popen.wait(timeout)  # type: ignore[union-attr]
            except Exception:
                pass
        code = self.proc.returncode
        self.proc.stop()  # whatever is left of its group
        return code if code is not None else -9

    def output(self) -> str:
        return self.proc.output()


def start_up(workdir: Path, *, port: int | None = None, workers: int = 1,
             data_dir: Path | None = None, wait: bool = True, **env: str) -> Up:
    """`wasmq up` on a free port, returned once it has published itself as running
    (after its gateway answered and its workers were warm) unless `wait` is False."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    data_dir = data_dir or workdir / "data"
    proc = wasmq(["up", "--port", str(port), "--workers", str(workers), "--data-dir",
                  str(data_dir)], child_env(**env), workdir / "up.log")
    up = Up(proc, f"http://127.0.0.1:{port}", data_dir)
    if wait:
        try:
            wait_until(lambda: proc.alive() and read_instance(data_dir) is not None
                       and healthy(up.url), timeout=90, what=f"wasmq up (see {proc.log})")
        except AssertionError:
            up.stop()
            raise
    return up
