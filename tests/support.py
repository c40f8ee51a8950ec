"""What tests share: the real-process helpers (from tests/localstack.py) and a tiny HTTP helper."""

from __future__ import annotations

import io
import json
import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.serving import make_server
from werkzeug.test import TestResponse

from bench.stats import run_async  # noqa: F401 - re-exported for the tests
from tests.localstack import (  # noqa: F401 - re-exported for the tests
    ROOT,
    child_env,
    spawn,
    start_redis,
    start_up,
    wait_until,
    wasmq,
)
from wasmq.process import Child  # noqa: F401 - re-exported for the tests

INTSUM = ROOT / "examples" / "intsum" / "intsum.wasm"
TUTORIAL_INPUT = '{"input": [[1,2,3,4,5,6,7,8,9,10]]}'

# Kept out of a copy of the checkout: local state, not the project.
NOT_SOURCE = shutil.ignore_patterns(".venv*", ".git", "build", "dist", "*.egg-info",
                                    "__pycache__", ".pytest_cache", ".ruff_cache",
                                    "wasmq-data")


def copy_checkout(dest: Path) -> Path:
    """A copy of this checkout, as a fresh clone has it (a build from the tree
    itself would leave build/ and egg-info behind in it)."""
    shutil.copytree(ROOT, dest, ignore=NOT_SOURCE)
    return dest


def envelope(data: str) -> dict[str, Any]:
    return {"input": {"content-type": "json", "location": "embedded", "data": data},
            "output": {"content-type": "json", "location": "echo"}, "control": 1,
            "properties": {"language": "WASM"}}


def upload(client: FlaskClient, wasm: bytes, name: str | None = "fn", filename: str = "m.wasm",
           method: str = "POST", path: str = "/functions", **fields: str) -> TestResponse:
    """An upload form sent to the in-process app (the `client` fixture)."""
    named = {} if name is None else {"name": name}
    return client.open(path, method=method, content_type="multipart/form-data",
                       data={"file": (io.BytesIO(wasm), filename), **named, **fields})


@contextmanager
def serve(app: Flask) -> Iterator[str]:
    """An app served by werkzeug's threaded server on a loopback port; yields its URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


class Api:
    """Thin requests wrapper so tests read as what a user does."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.http = requests.Session()

    def upload(self, wasm: bytes, name: str = "fn", **fields: str) -> requests.Response:
        return self.http.post(f"{self.url}/functions", files={"file": ("m.wasm", wasm)},
                              data={"name": name, **fields}, timeout=30)

    def deploy(self, wasm: bytes, name: str = "fn", **fields: str) -> str:
        response = self.upload(wasm, name, **fields)
        assert response.status_code == 201, response.text
        return response.json()["cfid"]

    def call(self, cfid: str, data: str, wait: float | None = None,
             **kw: Any) -> requests.Response:
        params = {} if wait is None else {"wait": wait}
        return self.http.post(f"{self.url}/task/{cfid}", params=params,
                              data=json.dumps(envelope(data)),
                              headers={"Content-Type": "application/x-www-form-urlencoded"},
                              timeout=kw.pop("timeout", 60), **kw)

    def retrieve(self, tid: str) -> requests.Response:
        return self.http.get(f"{self.url}/retrieve/{tid}", timeout=30)

    def poll(self, tid: str, timeout: float = 30.0) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            body = self.retrieve(tid).json()
            return body if body["statusCode"] != 5 else None

        return wait_until(done, timeout=timeout, interval=0.1, what=f"task {tid}")


class PeakRss:
    """The highest resident memory of some processes (and their children), sampled
    every 10 ms while the `with` block runs: what an attack made them hold."""

    def __init__(self, *pids: int, children: bool = False) -> None:
        import psutil

        self.procs = [psutil.Process(pid) for pid in pids]
        if children:
            self.procs += [c for p in self.procs for c in p.children(recursive=True)]
        self.base = self._rss()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _rss(self) -> int:
        total = 0
        for proc in self.procs:
            try:
                total += proc.memory_info().rss
            except Exception:  # gone: it holds nothing any more
                pass
        return total

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._rss())

    @property
    def grew_mb(self) -> float:
        return (self.peak - self.base) / (1024 * 1024)

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def submit_all(api: Api, cfid: str, inputs: list[str], at_once: int = 8) -> list[str]:
    """Submit every input (wait=0), `at_once` at a time; their tids, in order."""
    def one(data: str) -> str:
        response = api.call(cfid, data, wait=0)
        assert response.status_code == 202, response.text
        return response.json()["tid"]

    with ThreadPoolExecutor(max_workers=at_once) as pool:
        return list(pool.map(one, inputs))
