"""Bytes without base64: the gateway reads a msgpack envelope and answers
msgpack on request, while the JSON path stays exactly as it was."""

from __future__ import annotations

import json

import msgpack
import requests

from tests import modules
from tests.support import INTSUM, TUTORIAL_INPUT, Api, envelope

MSGPACK = "application/msgpack"
BINARY = b"\x00\xff\xfe binary \x80\x00"


def post(api: Api, cfid: str, body: bytes, content_type: str = MSGPACK,
         accept: str | None = None, wait: float | None = None) -> requests.Response:
    headers = {"Content-Type": content_type} | ({"Accept": accept} if accept else {})
    params = {} if wait is None else {"wait": wait}
    return requests.post(f"{api.url}/task/{cfid}", data=body, headers=headers,
                         params=params, timeout=60)


def test_msgpack_envelope_with_bytes_reaches_the_module_and_comes_back_as_bytes(
        api: Api) -> None:
    cfid = api.deploy(modules.ECHO)
    response = post(api, cfid, msgpack.packb(envelope(BINARY)), accept=MSGPACK)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == MSGPACK
    body = msgpack.unpackb(response.content)
    assert body["statusCode"] == 1
    assert body["result"] == BINARY
    assert set(body) >= {"statusCode", "result", "tid", "message", "timeOut", "resultUrl"}


def test_retrieve_answers_msgpack_when_asked(api: Api) -> None:
    cfid = api.deploy(modules.ECHO)
    tid = post(api, cfid, msgpack.packb(envelope(BINARY))).json()["tid"]
    api.poll(tid)
    response = requests.get(f"{api.url}/retrieve/{tid}", headers={"Accept": MSGPACK},
                            timeout=30)
    assert response.headers["Content-Type"] == MSGPACK
    assert msgpack.unpackb(response.content)["result"] == BINARY
    pending = post(api, api.deploy(modules.SLOW), msgpack.packb(envelope("600")),
                   accept=MSGPACK, wait=0)
    assert pending.status_code == 202
    assert msgpack.unpackb(pending.content)["statusCode"] == 5


def test_a_msgpack_envelope_without_accept_gets_the_usual_json_reply(api: Api) -> None:
    cfid = api.deploy(INTSUM.read_bytes())
    response = post(api, cfid, msgpack.packb(envelope(TUTORIAL_INPUT)))
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["result"] == '{"output": [55]}'


def test_the_json_path_is_unchanged_whatever_accept_says(api: Api) -> None:
    cfid = api.deploy(INTSUM.read_bytes())
    for accept in (None, "*/*", "application/json", "text/html"):
        response = post(api, cfid, json.dumps(envelope(TUTORIAL_INPUT)).encode(),
                        content_type="application/x-www-form-urlencoded", accept=accept)
        assert response.headers["Content-Type"] == "application/json", accept
        assert response.json()["result"] == '{"output": [55]}'


def test_bad_msgpack_bodies_answer_400_in_json_naming_the_problem(api: Api) -> None:
    cfid = api.deploy(modules.ECHO)
    cases = {
        b"": "empty request body",
        b"\xc1": "not valid msgpack",
        msgpack.packb({"input": {"data": "x"}}) + b"\x00": "not valid msgpack",
        msgpack.packb({1: 2}): "not valid msgpack",
        msgpack.packb([1, 2]): "must be a JSON object",
        msgpack.packb({"input": {"data": 7}}): "'input.data' must be a string",
        msgpack.packb({"input": {}}): "input.data",
    }
    for raw, expected in cases.items():
        response = post(api, cfid, raw, accept=MSGPACK)
        assert response.status_code == 400, raw
        assert response.headers["Content-Type"] == "application/json"
        body = response.json()
        assert body["statusCode"] == 0 and expected in body["message"], (raw, body)
