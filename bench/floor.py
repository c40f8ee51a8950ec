"""The floor: a bare Celery worker and a client timing round trips through it."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from bench.floor_app import QUEUE, make_floor_app
from tests.localstack import child_env, spawn, wait_until
from wasmq.broker.settings import Settings


class Floor:
    """A worker with two pool processes, like wasmq's, on its own queue."""

    def __init__(self, redis_url: str, workdir: Path, *, events: bool) -> None:
        self.queue = f"{QUEUE}-events" if events else QUEUE
        argv = [sys.executable, "-m", "celery", "-A", "bench.floor_app", "worker",
                "-Q", self.queue, "--concurrency", "2", "--loglevel", "WARNING",
                "--without-mingle", "-n", f"{self.queue}@%h"] + (["-E"] if events else [])
        self.worker = spawn(argv, child_env(WASMQ_REDIS_URL=redis_url),
                            workdir / f"{self.queue}.log")
        self.app = make_floor_app(Settings(redis_url=redis_url))
        self.noop = self.app.tasks["bench.noop"]
        wait_until(lambda: self._call(0, timeout=1) == 0, timeout=60, what="floor worker")
        for i in range(30):
            self._call(i)

    def _call(self, i: int, timeout: float = 10) -> int:
        return self.noop.apply_async((i,), queue=self.queue).get(timeout=timeout)

    def sequential(self, calls: int) -> list[float]:
        out = []
        for i in range(calls):
            started = time.perf_counter()
            self._call(i)
            out.append(time.perf_counter() - started)
        return out

    def pipelined(self, calls: int) -> float:
        """Seconds to send `calls` tasks at once and collect every result."""
        started = time.perf_counter()
        pending = [self.noop.apply_async((i,), queue=self.queue) for i in range(calls)]
        for result in pending:
            result.get(timeout=60)
        return time.perf_counter() - started

    def stop(self) -> None:
        self.worker.stop()
        self.app.close()
