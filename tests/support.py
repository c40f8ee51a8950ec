"""What tests share: the real-process helpers (from tests/localstack.py) and a tiny HTTP helper."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import socket
import threading
import time
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config
from quart import Quart
from werkzeug.datastructures import FileStorage, Headers

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


class _Loop:
    """One event loop on a thread of its own, for in-process apps driven from sync tests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="test-loop", daemon=True).start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 120) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


_LOOP: _Loop | None = None


def test_loop() -> _Loop:
    global _LOOP
    if _LOOP is None:
        _LOOP = _Loop()
    return _LOOP


@dataclass
class Reply:
    """What the in-process app answered, read in full."""

    status_code: int
    headers: Headers
    data: bytes

    def get_json(self) -> Any:
        return json.loads(self.data) if self.data else None

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")

    @property
    def json(self) -> Any:
        return self.get_json()


class SyncClient:
    """The app's test client (real ASGI calls into the app, no socket), for sync tests."""

    def __init__(self, app: Quart) -> None:
        self.app = app

    def open(self, path: str, method: str = "GET", data: Any = None, json: Any = None,
             headers: dict[str, str] | None = None, content_type: str | None = None) -> Reply:
        kwargs: dict[str, Any] = {"method": method, "headers": dict(headers or {})}
        if content_type:
            kwargs["headers"]["Content-Type"] = content_type
        if isinstance(data, dict):  # a form: (stream, filename) tuples are its files
            kwargs["form"] = {k: v for k, v in data.items() if not isinstance(v, tuple)}
            kwargs["files"] = {k: FileStorage(v[0], filename=v[1], name=k)
                               for k, v in data.items() if isinstance(v, tuple)}
            kwargs["headers"].pop("Content-Type", None)
        elif data is not None:
            kwargs["data"] = data
        if json is not None:
            kwargs["json"] = json

        async def send() -> Reply:
            response = await self.app.test_client().open(path, **kwargs)
            return Reply(response.status_code, response.headers, await response.get_data())

        return test_loop().run(send())

    def get(self, path: str, **kwargs: Any) -> Reply:
        return self.open(path, "GET", **kwargs)

    def post(self, path: str, **kwargs: Any) -> Reply:
        return self.open(path, "POST", **kwargs)

    def put(self, path: str, **kwargs: Any) -> Reply:
        return self.open(path, "PUT", **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Reply:
        return self.open(path, "DELETE", **kwargs)


def upload(client: SyncClient, wasm: bytes, name: str | None = "fn", filename: str = "m.wasm",
           method: str = "POST", path: str = "/functions", **fields: str) -> Reply:
    """An upload form sent to the in-process app (the `client` fixture)."""
    named = {} if name is None else {"name": name}
    return client.open(path, method=method, content_type="multipart/form-data",
                       data={"file": (io.BytesIO(wasm), filename), **named, **fields})


@contextmanager
def serve(app: Quart) -> Iterator[str]:
    """An app served by Hypercorn (Quart's own server) on a loopback port, on the
    test loop's thread; yields its URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]  # Hypercorn's now: it closes it
    config.accesslog = config.errorlog = None
    loop = test_loop()
    stop = loop.run(_event())
    future = asyncio.run_coroutine_threadsafe(
        hypercorn_serve(app, config, shutdown_trigger=stop.wait), loop.loop)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.loop.call_soon_threadsafe(stop.set)
        future.result(30)


async def _event() -> asyncio.Event:
    return asyncio.Event()


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


class HealthProbe:
    """`GET /healthz` every 20 ms on one keep-alive connection, on a thread, while the
    `with` block runs: how long a probe waited while an attack went on."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url, self.timeout = url, timeout
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._probe, daemon=True)

    def _probe(self) -> None:
        http = requests.Session()
        while not self._stop.wait(0.02):
            started = time.monotonic()
            http.get(f"{self.url}/healthz", timeout=self.timeout).raise_for_status()
            self.latencies.append(time.monotonic() - started)

    def __enter__(self) -> "HealthProbe":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


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
