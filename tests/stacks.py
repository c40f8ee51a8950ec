"""Private stacks for tests that kill things: their own redis-server (on a fixed
port and data dir, so it can be killed and started again), gateway and
worker nodes, none shared with the session stack."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
import redis

from tests.localstack import start_gateway, start_worker
from tests.support import Api, Child, child_env, start_redis
from wasmq.api.waiter import parse_wakeups
from wasmq.broker import keys
from wasmq.broker.redis_server import free_port


@dataclass
class PrivateStack:
    workdir: Path
    env: dict[str, str]
    redis_port: int
    redis_proc: Child
    gateway: Child | None = None
    gateway_port: int = 0
    workers: dict[str, Child] = field(default_factory=dict)

    @classmethod
    def start(cls, workdir: Path, **env: str) -> "PrivateStack":
        port = free_port()
        proc, url = start_redis(workdir / "redis", port)
        stack = cls(workdir, child_env(WASMQ_REDIS_URL=url, **env), port, proc)
        stack.start_gateway()
        return stack

    @property
    def redis_url(self) -> str:
        return self.env["WASMQ_REDIS_URL"]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def api(self) -> Api:
        return Api(self.url)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, socket_connect_timeout=1)

    def start_gateway(self) -> None:
        self.gateway, url = start_gateway(self.env, self.workdir / "gateway.log")
        self.gateway_port = int(url.rsplit(":", 1)[1])

    def start_worker(self, name: str, concurrency: int = 2, queues: str = "") -> Child:
        """A node named `name` (consuming `queues`, comma-separated, or the default
        queue), returned once it consumes and its processes are warm."""
        proc = start_worker(self.env, self.workdir / f"worker-{name}.log", concurrency,
                            f"{name}@%h", queues=queues)
        self.workers[name] = proc
        return proc

    def kill_redis(self, sig: int) -> None:
        self.redis_proc.signal(sig)
        if self.redis_proc.popen is not None and sig == signal.SIGKILL:
            self.redis_proc.popen.wait(10)

    def restart_redis(self) -> None:
        self.redis_proc, _ = start_redis(self.workdir / "redis", self.redis_port)

    def stop(self) -> None:
        """Killed, not stopped: a private stack is thrown away with its Redis, and a
        graceful stop costs a second or two a test (tests that stop nodes gracefully
        do so themselves)."""
        for proc in [*self.workers.values(), self.gateway, self.redis_proc]:
            if proc is not None:
                proc.signal(signal.SIGKILL)
                proc.stop()


def pool_pids(worker: Child) -> set[int]:
    """The pids of a worker node's pool processes (the ones that run tasks)."""
    try:
        return {p.pid for p in psutil.Process(worker.pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def node_pid(node: str) -> int:
    """A record's `worker` is "<hostname>:<pid>" of the process that ran it."""
    return int(node.rsplit(":", 1)[1])


def statuses(client: redis.Redis, tids: list[str]) -> list[tuple[str, str, int]]:
    """(status, worker process, attempts) of each task, in one round trip."""
    pipe = client.pipeline(transaction=False)
    for tid in tids:
        pipe.hmget(keys.task(tid), "status", "worker", "attempts")
    return [((s or b"").decode(), (n or b"").decode(), int(a or 0))
            for s, n, a in pipe.execute()]


class DoneWatcher:
    """Counts every completion the workers publish, to prove none is doubled."""

    def __init__(self, client: redis.Redis) -> None:
        self.counts: Counter[str] = Counter()
        self._client = client  # collected, it would close the subscription
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(keys.DONE_CHANNEL)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                message = self._pubsub.get_message(timeout=0.2)
            except redis.ConnectionError:
                return
            if message and message["type"] == "message":
                for tid, _ in parse_wakeups(message["data"]):
                    self.counts[tid] += 1

    def wait_for(self, tids: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while missing := [t for t in tids if not self.counts[t]]:
            if time.monotonic() >= deadline:
                found = statuses(self._client, missing[:3])
                raise AssertionError(f"{len(missing)} of {len(tids)} tasks unfinished, e.g. "
                                     f"{list(zip(missing[:3], found, strict=True))}")
            time.sleep(0.2)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._pubsub.close()


@pytest.fixture()
def private(tmp_path: Path) -> Iterator[Callable[..., PrivateStack]]:
    """Make private stacks (`private(**env)`); stopped after the test, logs printed."""
    stacks: list[PrivateStack] = []

    def make(**env: str) -> PrivateStack:
        # Fault tests queue hundreds of tasks from one client: past the default cap.
        stacks.append(PrivateStack.start(tmp_path, **{"WASMQ_MAX_INFLIGHT": "100000", **env}))
        return stacks[-1]

    yield make
    for s in stacks:
        s.stop()
    for log in sorted(tmp_path.glob("*.log")):  # shown by pytest if the test failed
        print(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}")



def assert_echoed(api: Api, tids: list[str], inputs: list[str]) -> None:
    """Each task succeeded with its own input as its result (the echoing modules)."""
    for tid, data in zip(tids, inputs, strict=True):
        body = api.retrieve(tid).json()
        assert body["statusCode"] == 1 and body["result"] == data, body
