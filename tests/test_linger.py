"""A request refused before its body was read still gets its reply, whatever order the
client reads and writes in (api/linger.py): over the input limit (413), over the
caller's rate (429), an upload without its key (401), a full store (507). Each is
sent as Python's urllib and http.client send it (the whole body, then the reply) and
as a raw socket that writes everything before it reads."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import pytest

from tests import modules
from tests.stacks import PrivateStack
from tests.support import Api, envelope, run_async
from wasmq.api.linger import Linger

INPUT_MB = 10
KEYS = ("admin",) + tuple(f"k{i}" for i in range(12))
OVER = json.dumps(envelope("x" * (INPUT_MB + 2) * 2**20)).encode()  # over the limit
WITHIN = json.dumps(envelope("x" * (INPUT_MB - 2) * 2**20)).encode()  # within it
Send = Callable[[str, str, bytes, dict[str, str]], tuple[int, dict]]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateStack]:
    """One gateway process (so its rate rule sees every call), no worker."""
    stack = PrivateStack.start(tmp_path_factory.mktemp("linger"),
                               WASMQ_MAX_INPUT_MB=str(INPUT_MB), WASMQ_API_KEYS=",".join(KEYS),
                               WASMQ_RATE_LIMIT="1/minute", WASMQ_GATEWAY_PROCESSES="1")
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def echo(stack: PrivateStack) -> str:
    api = Api(stack.url)
    api.http.headers["Authorization"] = "Bearer admin"
    return api.deploy(modules.ECHO)


def by_urllib(url: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    request = urllib.request.Request(url + path, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())


def by_http_client(url: str, path: str, body: bytes,
                   headers: dict[str, str]) -> tuple[int, dict]:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request("POST", path, body, headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def by_raw_socket(url: str, path: str, body: bytes,
                  headers: dict[str, str]) -> tuple[int, dict]:
    """Writes the request whole, then reads the reply to its end."""
    parts = urlsplit(url)
    head = [f"POST {path} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close",
            f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items())]
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    reply = b"".join(chunks)
    status_line, _, rest = reply.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


CLIENTS = {"urllib": by_urllib, "http.client": by_http_client, "raw socket": by_raw_socket}


def key_for(client: str, status: int) -> str:
    """A caller of its own for each case: the rate rule counts each apart."""
    return KEYS[1 + list(CLIENTS).index(client) + 3 * (0, 413, 429, 507).index(status)]


@pytest.mark.parametrize("client", CLIENTS)
def test_a_body_over_the_input_limit_gets_413(stack: PrivateStack, echo: str,
                                              client: str) -> None:
    status, body = CLIENTS[client](stack.url, f"/task/{echo}", OVER,
                                   {"Authorization": f"Bearer {key_for(client, 413)}"})
    assert status == 413 and body["statusCode"] == 0
    assert f"input limit of {INPUT_MB} MB" in body["message"]


@pytest.mark.parametrize("client", CLIENTS)
def test_a_call_over_the_caller_s_rate_gets_429(stack: PrivateStack, echo: str,
                                                client: str) -> None:
    auth = {"Authorization": f"Bearer {key_for(client, 429)}"}
    assert by_http_client(stack.url, f"/task/{echo}?wait=0", json.dumps(
        envelope("x")).encode(), auth)[0] == 202  # the caller's one call this minute
    status, body = CLIENTS[client](stack.url, f"/task/{echo}", OVER, auth)
    assert status == 429 and body["statusCode"] == 0 and "rate limit" in body["message"]


@pytest.mark.parametrize("client", CLIENTS)
def test_an_upload_without_its_key_gets_401(stack: PrivateStack, client: str) -> None:
    boundary = "linger-boundary"
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"m.wasm\"\r\n\r\n").encode() + b"\0" * (14 * 2**20) + \
        f"\r\n--{boundary}--\r\n".encode()
    status, body = CLIENTS[client](stack.url, "/functions", form, {
        "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 401 and body["statusCode"] == 0 and "API key" in body["message"]


@pytest.fixture()
def full_store(stack: PrivateStack) -> Iterator[None]:
    """Redis refuses every write, as a full one does (noeviction)."""
    client = stack.client()
    before = client.config_get("maxmemory")["maxmemory"]
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", 1)
    yield
    client.config_set("maxmemory", before)


@pytest.mark.parametrize("client", CLIENTS)
def test_a_call_to_a_full_store_gets_507(stack: PrivateStack, echo: str, full_store: None,
                                         client: str) -> None:
    status, body = CLIENTS[client](stack.url, f"/task/{echo}", WITHIN,
                                   {"Authorization": f"Bearer {key_for(client, 507)}"})
    assert status == 507 and body["message"].startswith("storage is full")


@pytest.mark.fast
def test_a_client_that_keeps_sending_is_read_for_a_bounded_time_and_size() -> None:
    async def refuse(scope: dict, receive: object, send: Callable) -> None:
        await send({"type": "http.response.start", "status": 413, "headers": []})
        await send({"type": "http.response.body", "body": b"no"})

    async def endless(delay: float) -> float:
        read = 0

        async def receive() -> dict:
            nonlocal read
            await asyncio.sleep(delay)
            read += 1000
            return {"type": "http.request", "body": b"x" * 1000, "more_body": True}

        async def send(message: dict) -> None:
            pass

        started = time.monotonic()
        await Linger(refuse, max_bytes=50_000, seconds=1.0)({"type": "http"}, receive, send)
        return read, time.monotonic() - started

    fast_read, fast_took = run_async(endless(0))
    assert 50_000 <= fast_read <= 52_000 and fast_took < 1  # stopped by its size
    slow_read, slow_took = run_async(endless(0.05))
    assert slow_read < 50_000 and 0.9 < slow_took < 3  # stopped by its time


@pytest.mark.parametrize("path", ["/task/{echo}", "/functions"])
def test_a_body_that_trickles_in_gets_408_within_the_body_timeout(
        tmp_path: object, path: str) -> None:
    """Else a client sending a byte now and then holds its connection for ever (and
    sixteen clients' caps of requests every connection of a gateway process)."""
    slow = PrivateStack.start(tmp_path, WASMQ_BODY_TIMEOUT="1", WASMQ_GATEWAY_PROCESSES="1")
    try:
        echo = Api(slow.url).deploy(modules.ECHO)
        kind = "application/json" if path.startswith("/task") else \
            "multipart/form-data; boundary=b"
        head = (f"POST {path.format(echo=echo)} HTTP/1.1\r\nHost: x\r\n"
                f"Content-Type: {kind}\r\nContent-Length: 100000\r\n\r\n").encode()
        host, port = urlsplit(slow.url).hostname, urlsplit(slow.url).port
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(head + b'{"input": "' if path.startswith("/task") else head + b"--b")
            sock.setblocking(False)
            started, reply = time.monotonic(), b""
            while b"(WASMQ_BODY_TIMEOUT)" not in reply and time.monotonic() - started < 8:
                try:
                    sock.send(b"x")  # a byte every 200 ms: never idle, never done
                    reply += sock.recv(65536)
                except (BlockingIOError, ConnectionError):
                    pass
                time.sleep(0.2)
            took = time.monotonic() - started
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
        assert b"the request body did not arrive within 1 s" in reply, reply[-300:]
        assert 0.8 < took < 4, took
    finally:
        slow.stop()
