"""What tests share: the real-process helpers (from tests/localstack.py) and a tiny HTTP helper."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

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


def envelope(data: str) -> dict[str, Any]:
    return {"input": {"content-type": "json", "location": "embedded", "data": data},
            "output": {"content-type": "json", "location": "echo"}, "control": 1,
            "properties": {"language": "WASM"}}


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


def submit_all(api: Api, cfid: str, inputs: list[str]) -> list[str]:
    """Submit every input at once (wait=0), 8 at a time; their tids, in order."""
    def one(data: str) -> str:
        response = api.call(cfid, data, wait=0)
        assert response.status_code == 202, response.text
        return response.json()["tid"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(one, inputs))
