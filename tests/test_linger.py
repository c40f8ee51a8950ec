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


@pytest.fixture(scope="module")
def slow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PrivateStack, str]]:
    """A gateway (no worker) that gives a body 1 s plus a second per 64 KiB it brings."""
    stack = PrivateStack.start(tmp_path_factory.mktemp("slow"), WASMQ_BODY_TIMEOUT="1",
                               WASMQ_GATEWAY_PROCESSES="1")
    yield stack, Api(stack.url).deploy(modules.ECHO)
    stack.stop()


def _slowly(url: str, path: str, kind: str, first: bytes, rest: Iterator[bytes],
            length: int, every_s: float) -> tuple[bytes, float]:
    """Send a request's head and `first`, then a piece of `rest` every `every_s`, reading
    what comes back all along; the whole reply and how long it took to come."""
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\n"
            f"Content-Type: {kind}\r\nContent-Length: {length}\r\n\r\n").encode()
    with socket.create_connection((urlsplit(url).hostname, urlsplit(url).port),
                                  timeout=10) as sock:
        sock.sendall(head + first)
        sock.setblocking(False)
        started, reply = time.monotonic(), b""
        while not _whole(reply) and time.monotonic() - started < 8:
            try:
                piece = next(rest, b"")
                if piece:
                    sock.sendall(piece)
                reply += sock.recv(65536)
            except (BlockingIOError, ConnectionError):
                pass
            time.sleep(every_s)
        return reply, time.monotonic() - started


def _whole(reply: bytes) -> bool:
    head, _, body = reply.partition(b"\r\n\r\n")
    length = [line for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")]
    return bool(length) and len(body) >= int(length[0].split(b":")[1])


PATHS = {"call": ("/task/{echo}", "application/json"),
         "upload": ("/functions", "multipart/form-data; boundary=b")}


@pytest.mark.parametrize("route", PATHS)
def test_a_body_that_trickles_in_gets_408_within_the_body_timeout(
        slow: tuple[PrivateStack, str], route: str) -> None:
    """Else a client sending a byte now and then holds its connection for ever (and
    sixteen clients' caps of requests every connection of a gateway process)."""
    stack, echo = slow
    path, kind = PATHS[route]
    first = b'{"input": "' if route == "call" else b"--b"
    reply, took = _slowly(stack.url, path.format(echo=echo), kind, first,
                          iter(lambda: b"x", None), 100_000, 0.2)  # never idle, never done
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b"the request body arrived too slowly" in reply, reply[-300:]
    assert b"pause for up to WASMQ_BODY_TIMEOUT (1 s), and take that long plus a second " \
        b"for every 64 KiB" in reply, reply[-300:]
    assert 0.8 < took < 4, took


@pytest.mark.parametrize("route", PATHS)
def test_a_body_that_arrives_steadily_goes_through_past_the_body_timeout(
        slow: tuple[PrivateStack, str], route: str) -> None:
    """A large upload over a slow link is no trickle: 300 KB at 100 KB/s takes three
    times WASMQ_BODY_TIMEOUT and is served."""
    stack, echo = slow
    path, kind = PATHS[route]
    if route == "call":
        body = json.dumps(envelope("z" * 300_000)).encode()
    else:
        module = modules.wasm(data=f'(data (i32.const 2048) "{"z" * 300_000}")', pages=6)
        body = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="m.wasm"\r\n'
                b"Content-Type: application/wasm\r\n\r\n" + module + b"\r\n--b--\r\n")
    pieces = iter([body[i:i + 10_000] for i in range(100, len(body), 10_000)])
    reply, took = _slowly(stack.url, path.format(echo=echo) + "?wait=0", kind, body[:100],
                          pieces, len(body), 0.1)
    assert took > 2.5, took  # it did take longer than the timeout
    # Taken: a call is queued (this stack has no worker), an upload stored.
    assert reply.startswith(b"HTTP/1.1 202" if route == "call" else b"HTTP/1.1 201"), \
        reply[:300]
