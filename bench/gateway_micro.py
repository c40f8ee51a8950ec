"""`python -m bench.gateway_micro`: the app's own CPU per request, no server, no load.

Drives the gateway app (api/app.py) in this process through ASGI calls, as Granian
would, one request at a time on uvloop: `POST /task/<intsum>?wait=0` (validated,
created in Redis, sent through Celery, answered 202 with statusCode 5; no worker
runs it) and a no-op route beside it (`POST /task-noop/x`, through the same
middleware). Prints the process's CPU (every thread, so the sending threads too)
per request, the median of rounds. What Granian itself costs, and a
waiting call's wake-up, are left out: bench/gateway_cpu.py measures the whole.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import uvloop

from bench import modules
from bench.load import BENCH_ENV
from tests.localstack import child_env, start_gateway, start_redis
from tests.support import Api, envelope


def scope(method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]]) -> dict:
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1", "method": method, "scheme": "http", "path": path,
            "raw_path": path.encode(), "query_string": query, "root_path": "",
            "headers": headers, "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000)}


async def one(app, method: str, path: str, query: bytes, body: bytes) -> int:  # noqa: ANN001
    headers = [(b"host", b"127.0.0.1:8000"),
               (b"content-type", b"application/x-www-form-urlencoded"),
               (b"content-length", str(len(body)).encode())]
    sent = False
    hang = asyncio.get_running_loop().create_future()

    async def receive() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await hang  # as a server does: the next message is the client's leaving
        return {"type": "http.disconnect"}

    status = 0

    async def send(message: dict) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope(method, path, query, headers), receive, send)
    return status


async def rounds(app, cfid: str, n: int, count: int) -> dict[str, list[float]]:  # noqa: ANN001
    body = json.dumps(envelope(modules.INPUT.decode())).encode()
    cases = {"task": ("POST", f"/task/{cfid}", b"wait=0", body, 202),
             "noop": ("POST", "/task-noop/x", b"", body, 200)}
    await app.startup()
    out: dict[str, list[float]] = {name: [] for name in cases}
    for case in cases.values():  # warm up
        for _ in range(50):
            assert await one(app, *case[:4]) == case[4]
    for _ in range(count):
        for name, (method, path, query, data, expect) in cases.items():
            started = time.process_time()
            for _ in range(n):
                status = await one(app, method, path, query, data)
            out[name].append(1000 * (time.process_time() - started) / n)
            assert status == expect, status
    return out


async def noop(name: str) -> str:
    """A route that does nothing, to weigh what a request costs before its view."""
    return ""


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway_micro")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="wasmq-gwmicro-"))
    redis_proc, redis_url = start_redis(workdir / "redis")
    try:
        env = child_env(WASMQ_REDIS_URL=redis_url, **BENCH_ENV)
        gateway, url = start_gateway(env, workdir / "gateway.log")
        try:
            cfid = Api(url).deploy(modules.intsum())
        finally:
            gateway.stop()
        os.environ.update({k: v for k, v in env.items() if k.startswith("WASMQ_")})
        from wasmq.api.app import create_app
        from wasmq.broker.logs import setup_logging
        from wasmq.broker.settings import Settings

        setup_logging(stream=open(os.devnull, "w"))  # noqa: SIM115 - the process's
        app = create_app(Settings.from_env())
        app.add_url_rule("/task-noop/<name>", "noop", noop, methods=["POST"])
        result = uvloop.run(rounds(app, cfid, args.requests, args.rounds))
    finally:
        redis_proc.stop()
    for name, values in result.items():
        print(f"{name}: {statistics.median(values):.3f} ms CPU/request "
              f"(rounds {', '.join(f'{v:.3f}' for v in values)})")


if __name__ == "__main__":
    main()
