"""A call served threadless by the front (api/loop_task.py) answers as the Flask view does.

Two fronts in process on the session's real Redis and no worker (tasks stay
queued): one that has never read the function, so its call goes through Flask's
view, and one (batches on) warmed so that its calls take the threadless path. Each case is
sent to both; status, headers that matter and body must be the same, tids aside.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import time

import msgpack
import pytest

from tests import modules
from tests.support import envelope, run_async
from wasmq.api.app import create_app
from wasmq.api.front import Front
from wasmq.broker.settings import Settings

pytestmark = pytest.mark.fast

KEY = "loop-key"
COMPARED = (b"content-type", b"retry-after", b"www-authenticate",
            b"access-control-allow-origin", b"access-control-expose-headers", b"vary")


def front(redis_url: str, address: str, **settings: object) -> Front:
    config = Settings(redis_url=redis_url, queue=f"loop-{time.monotonic_ns()}",
                      rate_limit="off", **settings)
    app = Front(create_app(config), config)
    app.test_address = address  # type: ignore[attr-defined]
    return app


def deploy(app: Front, **form: str) -> str:
    flask = app.wsgi.app.app
    response = flask.test_client().post(
        "/functions", data={"file": (io.BytesIO(modules.ECHO), "echo.wasm"), **form},
        headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 201, response.json
    return response.json["cfid"]


async def request(app: Front, path: str, body: bytes,
                  headers: dict[str, str]) -> tuple[int, dict[bytes, bytes], bytes]:
    sent: list[dict] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict:
        if messages:
            return messages.pop(0)
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    path, _, query = path.partition("?")
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": query.encode(), "root_path": "",
             "headers": [(b"host", b"testserver"),
                         (b"content-length", str(len(body)).encode()), *raw],
             "client": (app.test_address, 5000), "server": ("testserver", 80)}
    await app(scope, receive, send)
    content = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], {k.lower(): v for k, v in sent[0]["headers"]}, content


def normal(answer: tuple[int, dict[bytes, bytes], bytes]) -> tuple:
    status, headers, content = answer
    kind = headers.get(b"content-type", b"")
    body = msgpack.unpackb(content) if b"msgpack" in kind else json.loads(content)
    tid = body.get("tid") or ""
    text = json.dumps(body, sort_keys=True, default=repr)
    if tid:
        text = text.replace(tid, "TID")
    body = json.loads(text)
    body.pop("timings", None)
    return status, {k: v for k, v in headers.items() if k in COMPARED}, body


@pytest.fixture()
def pair(redis_url: str) -> tuple[Front, Front]:
    address = "127." + ".".join(str(random.randrange(1, 255)) for _ in range(3))
    return (front(redis_url, address, max_batch=1, api_keys=(KEY,)),
            front(redis_url, address, max_batch=16, api_keys=(KEY,)))


def both(pair: tuple[Front, Front], cfid: str, path: str, body: bytes,
         headers: dict[str, str]) -> tuple[tuple, tuple]:
    flask, threadless = pair
    run_async(request(threadless, f"/task/{cfid}?wait=0", json.dumps(envelope("warm")).encode(),
                      {"Authorization": f"Bearer {KEY}"}))  # it knows the function now
    assert threadless.services.submissions.cached(cfid) is not None
    return (normal(run_async(request(flask, path, body, headers))),
            normal(run_async(request(threadless, path, body, headers))))


JSON = {"Content-Type": "application/json"}
CASES = {
    "queued": ("?wait=0", json.dumps(envelope("x")).encode(), JSON),
    "waited for its deadline": ("?wait=0.3", json.dumps(envelope("x")).encode(), JSON),
    "Scailable's form label": ("?wait=0", json.dumps(envelope("x")).encode(),
                               {"Content-Type": "application/x-www-form-urlencoded"}),
    "not JSON": ("?wait=0", b"{nope", JSON),
    "no input": ("?wait=0", b'{"output": {}}', JSON),
    "empty": ("?wait=0", b"", JSON),
    "msgpack both ways": ("?wait=0", msgpack.packb({"input": {"data": b"\x00\x01"}}),
                          {"Content-Type": "application/msgpack",
                           "Accept": "application/msgpack"}),
    "from a browser": ("?wait=0", json.dumps(envelope("x")).encode(),
                       {**JSON, "Origin": "https://example.org"}),
    "a key that is not the server's": ("?wait=0", json.dumps(envelope("x")).encode(),
                                        {**JSON, "Authorization": "Bearer wrong"}),
}


@pytest.mark.parametrize("case", CASES)
def test_a_threadless_call_answers_as_the_view_does(pair, case: str) -> None:
    query, body, headers = CASES[case]
    cfid = deploy(pair[0])
    through_flask, threadless = both(pair, cfid, f"/task/{cfid}{query}", body, headers)
    assert threadless == through_flask


@pytest.mark.parametrize("key", [None, "wrong", KEY])
def test_a_private_function_s_call_answers_as_the_view_does(pair, key: str | None) -> None:
    cfid = deploy(pair[0], private="true")
    headers = {**JSON, **({"Authorization": f"Bearer {key}"} if key else {})}
    through_flask, threadless = both(pair, cfid, f"/task/{cfid}?wait=0",
                                     json.dumps(envelope("x")).encode(), headers)
    assert threadless == through_flask
    assert through_flask[0] == {None: 401, "wrong": 403, KEY: 202}[key]


def test_a_call_refused_for_its_tasks_in_flight_answers_as_the_view_does(
        redis_url: str) -> None:
    address = "127." + ".".join(str(random.randrange(1, 255)) for _ in range(3))
    # One caller (one address), two fronts; the warm-up call fills its one slot.
    pair = (front(redis_url, address, max_batch=1, max_inflight=1),
            front(redis_url, address, max_batch=16, max_inflight=1))
    cfid = deploy(pair[0])
    through_flask, threadless = both(pair, cfid, f"/task/{cfid}?wait=0",
                                     json.dumps(envelope("x")).encode(), JSON)
    assert through_flask[0] == 429 and threadless == through_flask


@pytest.mark.parametrize("state", ["building", "failed"])
def test_a_call_to_a_model_without_a_module_answers_as_the_view_does(pair, state: str) -> None:
    """A model still building answers 503 with Retry-After, a failed one 409 with why,
    both ways (the threadless path hands such a function to the view)."""
    flask, threadless = pair
    store = flask.services.jobs.store
    record, build = store.create(b"a model", token="nobody", name="model")
    if state == "failed":
        store.fail(build, "model refused: operator Frobnicate (domain com.example, opset 1)")
    path, body = f"/task/{record.cfid}?wait=0", json.dumps(envelope("x")).encode()
    answers = []
    for app in (flask, threadless, threadless):  # the second time, the front has seen it
        answers.append(normal(run_async(request(app, path, body, JSON))))
    assert answers[0] == answers[1] == answers[2]
    status, headers, reply = answers[0]
    if state == "building":
        assert status == 503 and int(headers[b"retry-after"]) > 0
        assert "still building" in reply["message"]
    else:
        assert status == 409 and "Frobnicate" in reply["message"]
    assert reply["statusCode"] == 0
    flask.services.registry.delete(record.cfid)  # and its pending build: nobody sweeps it
