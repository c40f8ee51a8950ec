"""Replies the gateway's HTTP server (Granian, on hyper) makes on its own, before the
app sees a request (issue 14, point 6), probed with raw sockets. Granian answers
431, 414 and 400 with an empty body and closes the connection, and ends a request
head that never completes by closing the connection without any reply; it has no
setting for those bodies (its HTTP/1 settings are header_read_timeout, keep_alive,
max_buffer_size and pipeline_flush), so the README says so. Each reply here must be
either the JSON shape with a message or that documented empty one."""

from __future__ import annotations

import json
import socket
import time

import pytest

from tests.support import Api


def _exchange(url: str, data: bytes, timeout: float = 15.0) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def _json_or_documented_empty(answer: bytes, status: bytes) -> None:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 " + status), head
    if body:  # a server that can give these a body must give the JSON shape
        reply = json.loads(body)
        assert reply["statusCode"] == 0 and reply["message"]
    else:
        assert b"content-length: 0" in head.lower() and b"connection: close" in head.lower()


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n", b"431"),
    (b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", b"414"),
    (b"NONSENSE\r\n\r\n", b"400"),
    (b"GET / HTTP/9.9\r\nHost: x\r\n\r\n", b"400"),
], ids=["431 header too large", "414 URI too long", "400 no request line",
        "400 unknown HTTP version"])
def test_the_servers_own_replies_are_json_or_the_documented_empty_ones(
        api: Api, request_bytes: bytes, status: bytes) -> None:
    _json_or_documented_empty(_exchange(api.url, request_bytes), status)


def test_an_unfinished_request_head_is_cut_off_after_the_header_timeout(api: Api) -> None:
    started = time.monotonic()
    answer = _exchange(api.url, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    took = time.monotonic() - started
    assert 4 < took < 10, took  # header_read_timeout of 5 s (wasmq/gateway.py)
    if answer:
        _json_or_documented_empty(answer, b"408")


def test_a_bad_request_the_app_sees_is_json(api: Api) -> None:
    answer = _exchange(api.url, b"POST /task/nope HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
                                b"Connection: close\r\n\r\n{")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 4") and json.loads(body)["statusCode"] == 0
