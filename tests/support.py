"""Real processes for tests: Redis, the gateway and workers, plus a tiny HTTP helper."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis
import requests

from broker.redis_server import free_port, redis_command

ROOT = Path(__file__).resolve().parents[1]
INTSUM = ROOT / "examples" / "intsum" / "intsum.wasm"
TUTORIAL_INPUT = '{"input": [[1,2,3,4,5,6,7,8,9,10]]}'


def envelope(data: str) -> dict[str, Any]:
    return {"input": {"content-type": "json", "location": "embedded", "data": data},
            "output": {"content-type": "json", "location": "echo"}, "control": 1,
            "properties": {"language": "WASM"}}


def wait_until(check, timeout: float = 20.0, interval: float = 0.05, what: str = "") -> Any:
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
    env = {k: v for k, v in os.environ.items() if not k.startswith("WASMQ_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
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
