"""Starting and stopping the hand-rolled peer (bench/peer_app.py) beside wasmq."""

from __future__ import annotations

import sys
from pathlib import Path

import redis

from tests.localstack import child_env, spawn, wait_until
from wasmq.broker.redis_server import free_port


class Peer:
    """gunicorn (gthread, 2 x 16) and a Celery worker (prefork, 2) on their own queue."""

    def __init__(self, redis_url: str, wasm: bytes, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        module = workdir / "peer.wasm"
        module.write_bytes(wasm)
        env = child_env(PEER_REDIS_URL=redis_url, PEER_WASM=str(module))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.worker = spawn([sys.executable, "-m", "celery", "-A", "bench.peer_app", "worker",
                            "--concurrency", "2", "--loglevel", "WARNING", "--without-mingle",
                            "-n", f"peer{self.port}@%h"], env, workdir / "peer-worker.log")
        self.web = spawn([sys.executable, "-m", "gunicorn", "-k", "gthread", "-w", "2",
                         "--threads", "16", "-b", f"127.0.0.1:{self.port}",
                         "--log-level", "warning", "bench.peer_app:web"],
                        env, workdir / "peer-web.log")
        client = redis.Redis.from_url(redis_url)
        wait_until(lambda: client.llen("bench-peer") == 0 and self._up(), timeout=60,
                   what="peer")

    def _up(self) -> bool:
        import requests

        try:
            return requests.post(f"{self.url}/task/x", timeout=5, data=b'{"input": {"data": '
                                 b'"hi"}}').json()["result"] == "hi"
        except (requests.RequestException, ValueError, KeyError):
            return False

    @property
    def pids(self) -> list[int]:
        return [self.web.pid, self.worker.pid]

    def stop(self) -> None:
        self.web.stop()
        self.worker.stop()
