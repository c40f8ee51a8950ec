"""The app's bounds (api/bounds.py) and its waits, in process through ASGI, against the
session's real Redis, with no worker: tasks stay queued, so every call that waits
waits until its deadline or its client."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time

import pytest
from quart import Quart

from tests import modules
from tests.support import ROOT, SyncClient, child_env, envelope, run_async, upload
from wasmq.api.app import create_app
from wasmq.api.bounds import QUEUED_PER_CALLER, Bounds
from wasmq.broker.settings import Settings

pytestmark = pytest.mark.fast


def gateway(redis_url: str, **settings: object) -> Quart:
    config = Settings(redis_url=redis_url, queue=f"bounds-{time.monotonic_ns()}",
                      rate_limit="off", **settings)
    app = create_app(config)
    # A client address of its own: its tasks in flight are this test's alone.
    app.test_address = "127." + ".".join(str(random.randrange(1, 255)) for _ in range(3))
    return app


def bounds_of(app: Quart) -> Bounds:
    return app.extensions["wasmq.bounds"]


def deploy(app: Quart) -> str:
    response = upload(SyncClient(app), modules.ECHO, name="echo")
    assert response.status_code == 201, response.json
    return response.json["cfid"]


async def call(app: Quart, path: str, *, hang_up_after: float | None = None,
               method: str = "POST", address: str = "") -> tuple[int, dict, float]:
    """One request through the app: (status, JSON body, seconds taken)."""
    body = json.dumps(envelope("x")).encode()
    sent: list[dict] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict:
        if messages:
            return messages.pop(0)
        if hang_up_after is None:
            await asyncio.sleep(3600)
        await asyncio.sleep(hang_up_after)
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    path, _, query = path.partition("?")
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": query.encode(), "root_path": "",
             "headers": [(b"content-type", b"application/json"), (b"host", b"testserver"),
                         (b"content-length", str(len(body)).encode())],
             "client": (address or app.test_address, 5000), "server": ("testserver", 80)}
    started = time.monotonic()
    await app(scope, receive, send)
    took = time.monotonic() - started
    if not sent:
        return 0, {}, took
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(payload) if payload else {}, took


def test_a_client_that_hangs_up_ends_its_wait(redis_url: str) -> None:
    app = gateway(redis_url)
    cfid = deploy(app)
    status, _, took = run_async(call(app, f"/task/{cfid}?wait=30", hang_up_after=0.3))
    assert status == 0 and took < 5  # nothing sent to a client that is gone
    assert bounds_of(app).waiting == 0 and not app.extensions["wasmq"].listener._waiters
    assert not bounds_of(app).slots and bounds_of(app).requests == 0


def test_a_call_past_the_waiting_capacity_answers_5_at_once(redis_url: str) -> None:
    app = gateway(redis_url, max_waiting=1)
    cfid = deploy(app)

    async def both() -> list[tuple[int, dict, float]]:
        first = asyncio.ensure_future(call(app, f"/task/{cfid}?wait=2"))
        await asyncio.sleep(0.5)  # the first is waiting now
        second = await call(app, f"/task/{cfid}?wait=30")
        return [await first, second]

    (first, second) = run_async(both())
    assert first[0] == 202 and 1.5 < first[2] < 10  # waited for its deadline
    assert second[0] == 202 and second[1]["statusCode"] == 5 and second[2] < 1.5
    assert second[1]["resultUrl"].endswith(second[1]["tid"])


def test_a_caller_beyond_its_queue_of_requests_gets_429_and_others_do_not(
        redis_url: str) -> None:
    app = gateway(redis_url, max_inflight=10000)
    cfid = deploy(app)
    other = "127.0.0.2" if app.test_address != "127.0.0.2" else "127.0.0.3"

    async def burst() -> tuple[list[tuple[int, dict, float]], tuple[int, dict, float]]:
        waits = [asyncio.ensure_future(call(app, f"/task/{cfid}?wait=3"))
                 for _ in range(QUEUED_PER_CALLER + 20)]
        await asyncio.sleep(0.5)  # the first QUEUED_PER_CALLER wait now
        another = await call(app, f"/task/{cfid}?wait=0", address=other)
        return await asyncio.gather(*waits), another

    answers, another = run_async(burst())
    statuses = [a[0] for a in answers]
    assert statuses.count(202) == QUEUED_PER_CALLER and statuses.count(429) == 20, \
        set(statuses)
    refused = next(a for a in answers if a[0] == 429)
    assert refused[1]["statusCode"] == 0 and "waiting to be served" in refused[1]["message"]
    assert refused[2] < 2  # refused at once, not after the others' wait
    assert another[0] == 202  # another caller is served meanwhile


def test_a_caller_just_refused_is_refused_again_at_once_then_served(redis_url: str) -> None:
    app = gateway(redis_url, max_inflight=1)
    cfid = deploy(app)

    async def three() -> list[tuple[int, dict, float]]:
        first = await call(app, f"/task/{cfid}?wait=0")  # in flight (no worker runs it)
        second = await call(app, f"/task/{cfid}?wait=0")  # refused by submit.lua
        third = await call(app, f"/task/{cfid}?wait=0")  # refused by the bounds, held reply
        return [first, second, third]

    first, second, third = run_async(three())
    assert first[0] == 202 and second[0] == 429 and third[0] == 429
    assert third[1] == second[1] and "limit of 1" in third[1]["message"]
    time.sleep(0.3)  # the hold is over: the next call is the script's to judge again
    assert run_async(call(app, f"/task/{cfid}?wait=0"))[0] == 429


def test_waiting_calls_hold_no_thread(redis_url: str) -> None:
    app = gateway(redis_url, gateway_threads=2, max_inflight=10000)  # 2 threads in all
    cfid = deploy(app)

    async def many() -> tuple[list[tuple[int, dict, float]], tuple[int, dict, float]]:
        waits = [asyncio.ensure_future(call(app, f"/task/{cfid}?wait=2")) for _ in range(100)]
        await asyncio.sleep(0.5)  # all of them are waiting now
        listing = await call(app, "/functions", method="GET", address="127.0.0.9")
        return await asyncio.gather(*waits), listing

    started = time.monotonic()
    answers, listing = run_async(many())
    # On threads, 100 waits of 2 s on 2 threads would take 100 s; they take about 2 s.
    assert [a[0] for a in answers] == [202] * 100 and time.monotonic() - started < 20
    assert listing[0] == 200 and listing[2] < 1.5


def test_a_test_session_ends_without_its_listeners_reporting_the_redis_it_stopped() -> None:
    """The session's Redis stops last; the in-process listeners' reconnect attempts
    after it read, below pytest's summary, like a failure."""
    ran = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "tests/test_bounds.py::test_a_client_that_hangs_up_ends_its_wait"],
                         cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "1 passed" in ran.stdout
    assert "lost Redis" not in ran.stdout + ran.stderr, ran.stdout + ran.stderr


def test_healthz_is_answered_while_its_caller_s_threads_are_all_taken(redis_url: str) -> None:
    """Twenty big uploads from one address held all of its threads, waiting for build
    places, and a probe from that address waited its turn behind them: 4 to 10 s."""
    app = gateway(redis_url, max_inflight=10000)
    cfid = deploy(app)
    limits = bounds_of(app)

    async def probe_while_taken() -> tuple[int, dict, float]:
        waiting = asyncio.ensure_future(call(app, f"/task/{cfid}?wait=3"))
        await asyncio.sleep(0.3)  # the caller is being served: its share exists
        (share,) = [slots.threads for slots in limits.slots.values()]
        for _ in range(limits.per_caller):
            await share.acquire()  # every thread of its share busy
        try:
            return await asyncio.wait_for(call(app, "/healthz", method="GET"), 5)
        finally:
            for _ in range(limits.per_caller):
                share.release()
            await waiting

    status, body, took = run_async(probe_while_taken())
    assert status == 200 and body["status"] == "ok" and took < 2, (status, took)
