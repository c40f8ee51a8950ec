"""Hostile modules against a stack with tight limits: each one fails only its own
task, with a message naming the cause, within the time limit plus one second,
and the same worker process then serves the next call."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import psutil
import pytest
import requests

from tests import hostile, modules
from tests.conftest import Stack, start_stack
from tests.support import Api
from wasmq.api.app import BODY_SLACK

TIMEOUT_S = 2
LIMITS = {"WASMQ_TASK_TIMEOUT": str(TIMEOUT_S), "WASMQ_MAX_MEMORY_MB": "16",
          "WASMQ_MAX_INPUT_MB": "1", "WASMQ_MAX_OUTPUT_MB": "1", "WASMQ_MAX_MODULE_MB": "1"}
MB = 1024 * 1024


@pytest.fixture(scope="module")
def tight(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # One worker process, on its own queue: every task here runs in it.
    s = start_stack(tmp_path_factory.mktemp("tight"), redis_url, concurrency=1,
                    WASMQ_QUEUE="tight", **LIMITS)
    yield s
    s.worker.stop()
    s.gateway.stop()


@pytest.fixture(scope="module")
def api(tight: Stack) -> Api:
    return Api(tight.url)


@pytest.fixture(scope="module")
def pool_pids(tight: Stack, api: Api) -> set[int]:
    """The worker's pool processes once it has served a first task."""
    assert api.call(api.deploy(modules.ECHO), "warm-up").json()["statusCode"] == 1
    return {p.pid for p in psutil.Process(tight.worker.pid).children()}


@pytest.fixture(scope="module")
def echo(api: Api) -> str:
    return api.deploy(modules.ECHO, name="echo")


HOSTILE = [
    ("endless loop", hostile.ENDLESS_LOOP, {}, f"time limit of {TIMEOUT_S} s exceeded"),
    ("endless loop, 1 s limit of its own", hostile.ENDLESS_LOOP, {"timeout_s": "1"},
     "time limit of 1 s exceeded"),
    ("sleep of 60 s", hostile.SLEEPER, {}, "(the module asked to wait 60 s)"),
    ("memory growth past its own limit", hostile.MEMORY_HOG, {"max_memory_mb": "2"},
     "memory limit of 2 MB"),
    ("memory growth past the server limit", hostile.MEMORY_HOG, {}, "memory limit of 16 MB"),
    ("initial memory over the limit", hostile.BIG_INITIAL_MEMORY, {},
     "needs more linear memory than the memory limit of 16 MB"),
    ("stack exhaustion", hostile.DEEP_RECURSION, {}, "call stack exhausted"),
    ("unreachable", hostile.UNREACHABLE, {},
     "'unreachable' instruction executed in explode (module offset 0x"),
    ("division by zero", hostile.DIVIDE_BY_ZERO, {}, "integer division by zero in divide"),
    ("out-of-bounds load", hostile.OUT_OF_BOUNDS_LOAD, {}, "out-of-bounds memory access"),
    ("output outside memory", hostile.OUTPUT_OUTSIDE_MEMORY, {},
     "lies outside linear memory"),
    ("output over the limit", hostile.OUTPUT_TOO_LARGE, {},
     "output of 2097152 bytes exceeds the output limit of 1 MB"),
    ("pred() non-zero", hostile.PRED_FAILS_WITH_STDERR, {},
     "pred() returned 7 (failure); module stderr: bad input: expected digits"),
    ("proc_exit(3) in pred", hostile.EXIT_IN_PRED, {}, "exited with code 3 during pred()"),
    ("wasi_unstable proc_exit(4)", hostile.LEGACY_EXIT_IN_PRED, {},
     "exited with code 4 during pred()"),
    ("proc_exit(5) in _start", hostile.EXIT_IN_START, {}, "exited with code 5 during _start()"),
]


@pytest.mark.parametrize(("wasm", "fields", "expected"), [h[1:] for h in HOSTILE],
                         ids=[h[0] for h in HOSTILE])
def test_a_hostile_module_fails_only_its_own_task(api: Api, echo: str, pool_pids: set[int],
                                                  wasm: bytes, fields: dict[str, str],
                                                  expected: str) -> None:
    cfid = api.deploy(wasm, **fields)
    # Answered within the time limit plus one second, or this would say 5.
    response = api.call(cfid, "x", wait=TIMEOUT_S + 1)
    body = response.json()
    assert response.status_code == 200 and body["statusCode"] == 0, body
    assert expected in body["message"], body["message"]
    after = api.call(echo, "still serving", wait=TIMEOUT_S + 1).json()
    assert after["statusCode"] == 1 and after["result"] == "still serving"
    assert after["worker"] == body["worker"]
    assert int(body["worker"].rsplit(":", 1)[1]) in pool_pids


def test_the_worker_pool_was_never_restarted(tight: Stack, api: Api, echo: str,
                                             pool_pids: set[int]) -> None:
    for wasm, fields, _ in [h[1:] for h in HOSTILE[:3]]:
        assert api.call(api.deploy(wasm, **fields), "x", wait=TIMEOUT_S + 1).json()[
            "statusCode"] == 0
    assert api.call(echo, "ok").json()["statusCode"] == 1
    assert {p.pid for p in psutil.Process(tight.worker.pid).children()} == pool_pids
    assert "Hard time limit" not in tight.worker.output()


def test_stdout_and_stderr_are_captured_up_to_64_kib_each(api: Api) -> None:
    body = api.call(api.deploy(hostile.CHATTY), "x").json()
    assert body["statusCode"] == 1 and body["result"] == "done"
    for stream in ("stdout", "stderr"):
        kept, _, note = body["logs"][stream].partition("\n[...")
        assert len(kept) == 64 * 1024
        assert note == f" {100 * 1024 - 64 * 1024} more bytes dropped]"


@pytest.mark.parametrize("namespace", ["wasi_snapshot_preview1", "wasi_unstable"])
def test_a_module_has_no_files_environment_arguments_sockets_or_stdin(api: Api,
                                                                      namespace: str) -> None:
    body = api.call(api.deploy(hostile.probe(namespace)), "x").json()
    assert body["statusCode"] == 1, body
    (prestat, open_rel, open_abs, fd, env_n, env_size, argc, argv_size, sock, stdin_n,
     write3) = (ord(c) for c in body["result"])
    assert prestat != 0, "fd 3 must not be a preopened directory"
    assert open_rel != 0 and open_abs != 0, "opening a file must fail with an errno"
    assert fd == 0x55, "path_open must not hand out a descriptor"
    assert (env_n, env_size, argc, argv_size) == (0, 0, 0, 0)
    assert sock != 0 and write3 != 0
    assert stdin_n == 0


def test_an_input_over_the_function_limit_is_refused_with_413(api: Api) -> None:
    cfid = api.deploy(modules.ECHO, max_input_mb="0.25")
    assert api.call(cfid, "y" * (200 * 1024)).json()["statusCode"] == 1
    response = api.call(cfid, "y" * (300 * 1024))
    assert response.status_code == 413
    assert "input limit of this function is 0.25 MB" in response.json()["message"]


def _raw_request(url: str, head: str) -> bytes:
    """Send only the request head and read the answer: the body never comes."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode())
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer


def test_a_body_over_the_input_limit_is_refused_before_it_is_read(api: Api, echo: str) -> None:
    answer = _raw_request(api.url, f"POST /task/{echo} HTTP/1.1\r\nHost: x\r\n"
                                   f"Content-Type: application/json\r\n"
                                   f"Content-Length: {50 * 1024 * MB}\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert b'"statusCode":0' in body.replace(b" ", b"")
    assert b"input limit of 1 MB (WASMQ_MAX_INPUT_MB)" in body


def test_a_chunked_body_over_the_input_limit_is_refused_with_413(api: Api, echo: str) -> None:
    # No Content-Length to refuse up front: reading stops at the limit.
    def chunks() -> Iterator[bytes]:
        yield b'{"input": {"data": "'
        for _ in range(4):
            yield b"z" * (512 * 1024)
        yield b'"}}'

    response = requests.post(f"{api.url}/task/{echo}", data=chunks())
    assert response.status_code == 413
    assert response.json()["statusCode"] == 0
    assert "input limit of 1 MB" in response.json()["message"]


def test_a_body_of_exactly_the_limit_is_read_chunked_or_not(api: Api, echo: str) -> None:
    """The limit is the largest body taken, with a Content-Length or without one."""
    limit = MB + BODY_SLACK
    envelope = b'{"input": {"data": "ok"}}'
    body = envelope + b" " * (limit - len(envelope))  # JSON allows trailing blanks
    for data in (body, iter([body[:MB], body[MB:]])):  # a generator goes chunked
        response = requests.post(f"{api.url}/task/{echo}", data=data)
        assert response.status_code == 200, response.text
        assert response.json()["result"] == "ok"


def test_a_module_over_the_size_limit_is_refused_with_413(api: Api) -> None:
    just_over = _padded(MB + 16 * 1024)
    response = api.upload(just_over)
    assert response.status_code == 413
    assert "module is larger than the limit of 1 MB (WASMQ_MAX_MODULE_MB)" in \
        response.json()["message"]
    # Refused unread, so the server may close the connection after answering: send
    # it on a connection of its own, not on the session's kept-alive one.
    response = requests.post(f"{api.url}/functions", files={"file": ("m", _padded(3 * MB))})
    assert response.status_code == 413
    message = response.json()["message"]
    assert "module size limit of 1 MB (WASMQ_MAX_MODULE_MB)" in message
    # Likely a big model: every setting that would refuse it in turn, named at once.
    for setting in ("WASMQ_MAX_MEMORY_MB", "WASMQ_COMPILE_MEMORY_MB", "WASMQ_COMPILE_TIMEOUT",
                    "WASMQ_STORAGE_PER_CALLER_MB", "WASMQ_REDIS_MAXMEMORY_MB"):
        assert setting in message, message


def _padded(size: int) -> bytes:
    """The echo module with a data segment that brings it to `size` bytes."""
    base = len(modules.ECHO)
    return modules.wasm(data=f'(data (i32.const 2048) "{"z" * (size - base)}")',
                        pages=1 + size // 65536)


def test_modules_have_no_state_across_calls_on_the_same_worker(api: Api) -> None:
    counter = modules.wasm(data='(data (i32.const 16) "0")', pred="""
        (i32.store8 (i32.const 16) (i32.add (i32.load8_u (i32.const 16)) (i32.const 1)))
        (global.set $out (i32.const 16)) (global.set $outlen (i32.const 1))
        (i32.const 0)""")
    cfid = api.deploy(counter)
    assert [api.call(cfid, "").json()["result"] for _ in range(3)] == ["1", "1", "1"]
