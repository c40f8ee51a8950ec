"""`wasmq up`: run Redis, the gateway and the workers, restart what dies, and
stop all of them on SIGINT or SIGTERM with no orphans left behind."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import redis
import requests

from wasmq.broker.interpreter import python_module
from wasmq.broker.redis_server import free_port, redis_command
from wasmq.instance import Instance, InUse, Lock, claim_port, publish
from wasmq.process import Child
from wasmq.workers.readiness import Readiness

USAGE_EXIT = 2  # what `wasmq gateway` exits with when its port is taken


class StartFailed(Exception):
    """A part did not come up; the message says which and where to look."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message, self.code = message, code
WORKERS_START_S = 90.0  # a loaded machine may take this long to warm every process


class Supervisor:
    def __init__(self, *, port: int, host: str, workers: int, data_dir: Path,
                 redis_url: str | None, env: dict[str, str], lock: Lock,
                 redis_maxmemory_mb: int | None = None, sentinels: tuple[str, ...] = (),
                 master: str = "") -> None:
        """`redis_url` None and no `sentinels`: an embedded Redis of our own. With
        `sentinels`, every part follows `master` through them; nothing embedded."""
        self.data_dir = data_dir
        self.host, self.port = host, port
        self.lock = lock
        self.children: list[Child] = []
        self._stopping = False
        base = dict(env)
        self.redis: Child | None = None
        if redis_url is None and not sentinels:
            redis_port = free_port()
            redis_url = f"redis://127.0.0.1:{redis_port}/0"
            command = redis_command(data_dir, redis_port, maxmemory_mb=redis_maxmemory_mb)
            self.redis = Child("redis", command, base, log=data_dir / "redis.log")
            self.children.append(self.redis)
            base["WASMQ_REDIS_URL"] = redis_url
        base.setdefault("WASMQ_DATA_DIR", str(data_dir))
        base.setdefault("WASMQ_LOG_FORMAT", "text")  # one machine: a person reads these
        self.redis_url = redis_url or ""  # "" behind Sentinel: no one address
        self.where = (f"the primary {master!r} behind the sentinels {', '.join(sentinels)}"
                      if sentinels else self.redis_url)
        py = python_module("wasmq")
        self.gateway = Child("gateway", py + ["gateway", "--host", host, "--port", str(port)],
                             base)
        self.workers = workers
        self.ready_file = data_dir / "worker.ready"
        self.worker = Child("worker", py + ["worker", "--concurrency", str(workers),
                                            "--ready-file", str(self.ready_file)], base,
                            log=data_dir / "worker.log")
        self.children += [self.gateway, self.worker]

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    def banner(self) -> str:
        if self.redis is not None:
            redis_line, redis_log = (f"{self.redis_url}, data in {self.data_dir}",
                                     f"Redis {self.redis.log}")
        else:
            redis_line, redis_log = self.where, "Redis is yours"
        return (f"wasmq is up at {self.url}\n"
                f"  Redis   {redis_line}\n"
                f"  logs    gateway: this terminal; workers: {self.worker.log}; {redis_log}\n"
                f"  Ctrl-C stops it")

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            try:
                # Not only the port: another gateway may be starting on it right now.
                claim_port(self.host, self.port).release()
                self._start()
            except InUse as exc:
                print(f"wasmq: {exc.message}", file=sys.stderr, flush=True)
                return USAGE_EXIT
            except StartFailed as exc:
                if self._stopping:
                    return 0
                print(f"wasmq: {exc.message}", file=sys.stderr, flush=True)
                return exc.code
            if self._stopping:  # SIGTERM during start-up
                return 0
            publish(self.lock, Instance(pid=os.getpid(), url=self.url,
                                        redis_url=self.redis_url))
            print(self.banner(), flush=True)
            while not self._stopping:
                for child in self.children:
                    if not child.alive() and not self._stopping:
                        self._restart(child)
                time.sleep(0.5)
        finally:
            self.stop()
            self.lock.release()
        return 0

    def _start(self) -> None:
        for child in self.children:
            if self._stopping:
                return
            child.start()
            if child is self.redis:
                self._wait_redis()
        self._wait_gateway()
        self._wait_workers()

    def _restart(self, child: Child) -> None:
        code = child.returncode
        child.stop()  # what it left behind (its server or pool processes) goes with it
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
        if child is self.redis:
            try:
                self._wait_redis()
            except StartFailed as exc:
                print(f"wasmq: {exc.message}", file=sys.stderr, flush=True)

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stopping = True

    def stop(self) -> None:
        """Stop every child, saying so: stopping the workers may take seconds."""
        self._stopping = True
        started = [child for child in self.children if child.popen is not None]
        if started:
            print("stopping...", flush=True)
        for child in reversed(self.children):
            child.stop()
        if started:
            print("stopped", flush=True)

    def _wait_redis(self, timeout: float = 15.0) -> None:
        client = redis.Redis.from_url(self.redis_url, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stopping:
            try:
                client.ping()
                return
            except redis.RedisError:
                time.sleep(0.05)
        if not self._stopping:
            raise StartFailed(f"Redis did not start within {timeout:g} s; see "
                              f"{self.data_dir / 'redis.log'}")

    def _wait_gateway(self, timeout: float = 30.0) -> None:
        """Until our own gateway answers its health check (the port was free, so
        what answers there is ours)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stopping:
            if not self.gateway.alive():
                code = self.gateway.returncode
                raise StartFailed(f"the gateway exited with {code} while starting (its "
                                  f"message is above)",
                                  USAGE_EXIT if code == USAGE_EXIT else 1)
            try:
                if requests.get(f"{self.url}/healthz", timeout=1).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        if not self._stopping:
            raise StartFailed(f"the gateway did not answer on {self.url} within {timeout:g} s")

    def _wait_workers(self, timeout: float = WORKERS_START_S) -> None:
        """Until the node consumes and each of its processes is warm, as it writes
        in its readiness file: then a first call is served at once."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stopping:
            if not self.worker.alive():
                raise StartFailed(f"the workers exited with {self.worker.returncode} while "
                                  f"starting; see {self.worker.log}")
            if Readiness.read(self.ready_file).ready(self.worker.pid, self.workers):
                return
            time.sleep(0.1)
        if not self._stopping:
            raise StartFailed(f"the workers were not ready within {timeout:g} s; see "
                              f"{self.worker.log}")
