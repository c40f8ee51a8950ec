"""Session fixtures: a real redis-server, a real gateway on loopback, and real
Celery worker processes, started once and shared by the tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from broker.redis_server import free_port
from tests.support import Api, Proc, child_env, start_redis, wait_until, wasmq


@dataclass
class Stack:
    url: str
    redis_url: str
    gateway: Proc
    worker: Proc
    env: dict[str, str]
    workdir: Path


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    proc.stop()


def start_stack(workdir: Path, redis_url: str, concurrency: int = 2, **env: str) -> Stack:
    port = free_port()
    environment = child_env(WASMQ_REDIS_URL=redis_url, **env)
    gateway = wasmq(["gateway", "--port", str(port)], environment, workdir / "gateway.log")
    worker = wasmq(["worker", "--concurrency", str(concurrency), "--name",
                    f"test{port}@%h", "--heartbeat-file", str(workdir / "heartbeat")],
                   environment, workdir / "worker.log")
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: requests.get(f"{url}/healthz", timeout=1).ok, what="gateway")
    wait_until(lambda: "ready" in worker.output(), what="worker")
    return Stack(url, redis_url, gateway, worker, environment, workdir)


@pytest.fixture(scope="session")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("stack"), redis_url)
    yield s
    s.worker.stop()
    s.gateway.stop()


@pytest.fixture()
def api(stack: Stack) -> Api:
    return Api(stack.url)
