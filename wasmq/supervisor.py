"""`wasmq up`: run Redis, the gateway and the workers, restart what dies, and
stop all of them on SIGINT or SIGTERM with no orphans left behind."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
import requests

from wasmq.broker.redis_server import free_port, redis_command

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Children get SIGTERM if the supervisor itself is killed (Linux)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:  # not Linux: Ctrl-C still stops every child through the supervisor
        pass
    os.setpgrp()


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    restarts: int = 0
    started_at: float = 0.0
    log: Path | None = field(default=None)

    def start(self) -> None:
        out = open(self.log, "ab") if self.log else None
        try:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT if out else None,
                                         stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        finally:
            if out is not None:  # the child has its own descriptor; a restart must not leak ours
                out.close()
        self.started_at = time.monotonic()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        if not self.alive():
            return
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


class Supervisor:
    def __init__(self, *, port: int, host: str, workers: int, data_dir: Path,
                 redis_url: str | None, env: dict[str, str],
                 redis_maxmemory_mb: int | None = None) -> None:
        self.data_dir = data_dir
        self.host, self.port = host, port
        self.children: list[Child] = []
        self._stopping = False
        base = dict(env)
        if redis_url is None:
            redis_port = free_port()
            redis_url = f"redis://127.0.0.1:{redis_port}/0"
            command = redis_command(data_dir, redis_port, maxmemory_mb=redis_maxmemory_mb)
            self.children.append(Child("redis", command, base, log=data_dir / "redis.log"))
        base["WASMQ_REDIS_URL"] = redis_url
        base.setdefault("WASMQ_DATA_DIR", str(data_dir))
        base.setdefault("WASMQ_LOG_FORMAT", "text")  # one machine: a person reads these
        self.redis_url = redis_url
        py = [sys.executable, "-m", "wasmq"]
        self.children.append(Child("gateway", py + ["gateway", "--host", host, "--port",
                                                    str(port)], base))
        self.children.append(Child("worker", py + ["worker", "--concurrency", str(workers)],
                                   base, log=data_dir / "worker.log"))

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            for child in self.children:
                child.start()
                if child.name == "redis":
                    self._wait_redis()
            self._wait_gateway()
            print(f"wasmq is up at {self.url}  (Redis {self.redis_url}, data in "
                  f"{self.data_dir}); Ctrl-C stops it", flush=True)
            while not self._stopping:
                for child in self.children:
                    if not child.alive() and not self._stopping:
                        self._restart(child)
                time.sleep(0.5)
        finally:
            self.stop()
        return 0

    def _restart(self, child: Child) -> None:
        code = child.proc.returncode if child.proc else None
        # Back off when a child dies right after starting, so a broken config
        # does not spin.
        if time.monotonic() - child.started_at < 5:
            time.sleep(min(2 ** child.restarts * 0.5, 10))
        else:
            child.restarts = 0
        child.restarts += 1
        print(f"wasmq: {child.name} exited with {code}; restarting", file=sys.stderr,
              flush=True)
        child.start()
        if child.name == "redis":
            self._wait_redis()

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stopping = True

    def stop(self) -> None:
        self._stopping = True
        for child in reversed(self.children):
            child.stop()

    def _wait_redis(self, timeout: float = 15.0) -> None:
        client = redis.Redis.from_url(self.redis_url, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stopping:
            try:
                client.ping()
                return
            except redis.RedisError:
                time.sleep(0.05)
        raise SystemExit(f"wasmq: Redis did not start within {timeout:g} s; "
                         f"see {self.data_dir / 'redis.log'}")

    def _wait_gateway(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stopping:
            try:
                if requests.get(f"{self.url}/healthz", timeout=1).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        if not self._stopping:
            raise SystemExit(f"wasmq: the gateway did not answer on {self.url} "
                             f"within {timeout:g} s")
