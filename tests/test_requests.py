"""Hostile requests: whatever arrives, the answer is JSON with statusCode 0, a
message naming the problem and the right HTTP code, never a 500 or HTML.

Parsing is tested in-process (`client`: the app's test client on the real
Redis); what needs workers or the HTTP server stays end to end (`api`).
"""

from __future__ import annotations

import json
import socket

import pytest
import requests

from tests import modules
from tests.support import Api, envelope, upload


@pytest.fixture()
def echo(client) -> str:
    response = upload(client, modules.ECHO, name="echo")
    assert response.status_code == 201, response.get_json()
    return response.get_json()["cfid"]


@pytest.fixture(scope="module")
def live_echo(stack) -> str:  # noqa: ANN001 - the session Stack
    return Api(stack.url).deploy(modules.ECHO, name="echo")


def _with(path: str, value: object) -> str:
    body = envelope("x")
    parent = body
    *steps, last = path.split(".")
    for step in steps:
        parent = parent[step]
    parent[last] = value
    return json.dumps(body)


@pytest.mark.parametrize(("path", "value", "expected"), [
    ("input.content-type", 5, "'input.content-type' must be a string, got a number"),
    ("input.location", ["embedded"], "'input.location' must be a string, got an array"),
    ("output", "echo", "'output' must be an object, got a string"),
    ("output.location", None, "'output.location' must be a string, got null"),
    ("control", "1", "'control' must be a whole number, got a string"),
    ("control", True, "'control' must be a whole number, got a boolean"),
    ("properties", [], "'properties' must be an object, got an array"),
    ("properties.language", {}, "'properties.language' must be a string, got an object"),
    ("input.data", None, "'input.data' must be a string, got null"),
    ("input.location", "s3", "input.location 's3' is not supported"),
])
@pytest.mark.fast
def test_wrong_types_anywhere_in_the_envelope_answer_400(client, echo: str, path: str,
                                                         value: object, expected: str) -> None:
    response = client.post(f"/task/{echo}", data=_with(path, value))
    assert response.status_code == 400
    body = response.get_json()
    assert body["statusCode"] == 0 and expected in body["message"], body


@pytest.mark.parametrize("raw", [b'{"input": [[1,2,3]]}', b'{"input": "[1,2,3]"}',
                                 b'{"data": "[1,2,3]"}', b'{"input": {"content-type": "json"}}'])
@pytest.mark.fast
def test_a_body_without_the_envelope_is_shown_the_envelope_it_needs(client, echo: str,
                                                                    raw: bytes) -> None:
    response = client.post(f"/task/{echo}", data=raw)
    assert response.status_code == 400
    message = response.get_json()["message"]
    assert "in 'input.data' of the Scailable envelope: " \
        '{"input": {"content-type": "json", "location": "embedded", "data": "..."}' in message


@pytest.mark.parametrize(("raw", "expected"), [
    (b"[" * 100_000 + b"]" * 100_000, "too deeply"),
    (b'{"input": {"data": "x"}, "control": 1' + b"0" * 5000 + b"}", "not usable JSON"),
    (b'{"input": {"data": "\\ud800"}}', "unpaired surrogate"),
    (b"\xff\xfe\x00garbage", "not valid JSON"),
    (b'{"input": {"data": "x"}', "not valid JSON"),
])
@pytest.mark.fast
def test_bodies_that_break_json_parsers_answer_400(client, echo: str, raw: bytes,
                                                   expected: str) -> None:
    response = client.post(f"/task/{echo}", data=raw)
    assert response.status_code == 400, response.get_data()[:200]
    assert response.get_json()["statusCode"] == 0
    assert expected in response.get_json()["message"]


@pytest.mark.fast
def test_errors_are_json_even_for_routes_and_methods_that_do_not_exist(client) -> None:
    for method, path, code in [("GET", "/task/x", 405), ("PATCH", "/functions", 405),
                               ("GET", "/wp-admin.php", 404), ("POST", "/retrieve/x", 405),
                               ("GET", "/file/x", 404)]:
        response = client.open(path, method=method)
        assert response.status_code == code, (method, path)
        assert response.content_type.startswith("application/json")
        assert response.get_json()["statusCode"] == 0 and response.get_json()["message"]


@pytest.mark.fast
def test_an_oversized_form_field_is_refused_with_a_message(client) -> None:
    long_doc = upload(client, modules.ECHO, documentation="d" * 70_000)
    assert long_doc.status_code == 400
    assert "'documentation' is longer than" in long_doc.get_json()["message"]
    huge = upload(client, modules.ECHO, documentation="d" * 600_000)
    assert huge.status_code == 413 and huge.get_json()["statusCode"] == 0


def test_a_failed_request_loses_nothing_already_stored(api: Api, live_echo: str) -> None:
    requests.post(f"{api.url}/task/{live_echo}", data=b"[" * 100_000)
    requests.put(f"{api.url}/functions/{live_echo}", files={"file": ("m", b"\0asm junk")})
    assert api.call(live_echo, "intact").json()["result"] == "intact"


def test_idle_keep_alive_connections_beyond_the_thread_count_do_not_lock_others_out(
        api: Api) -> None:
    """A gateway process has 64 request threads; idle connections must not hold them."""
    host, port = api.url.removeprefix("http://").split(":")
    idle = []
    try:
        for _ in range(100):
            conn = socket.create_connection((host, int(port)), timeout=2)
            conn.sendall(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            assert conn.recv(65536).startswith(b"HTTP/1.1 200")
            idle.append(conn)  # kept open, idle
        # Well within the 5 s after which idle connections are closed anyway.
        assert requests.get(f"{api.url}/healthz", timeout=2).status_code == 200
    finally:
        for conn in idle:
            conn.close()
