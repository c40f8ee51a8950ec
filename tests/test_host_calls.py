"""Host functions are inside the sandbox (issue 14, point 4): a WASI call cannot be
used to spend more memory or time than the task's limits allow. The issue's floods
run in both namespaces against one worker process with the default 256 MB memory
limit and a 2 s time limit: each task ends within its limit plus a little, the
worker process stays within its memory bound, and the message names the phase,
the host call and the limit."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psutil
import pytest

from tests import hostile, modules
from tests.localstack import Stack, start_stack
from tests.support import Api, PeakRss

TIMEOUT_S = 2
MEMORY_MB = 256


@pytest.fixture(scope="module")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("hostcalls"), redis_url, concurrency=1,
                    WASMQ_QUEUE="hostcalls", WASMQ_TASK_TIMEOUT=str(TIMEOUT_S),
                    WASMQ_MAX_MEMORY_MB=str(MEMORY_MB))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def api(stack: Stack) -> Api:
    return Api(stack.url)


@pytest.fixture(scope="module")
def pool(stack: Stack, api: Api) -> int:
    """The worker's one pool process, once it has served a task."""
    assert api.call(api.deploy(modules.ECHO), "warm-up").json()["statusCode"] == 1
    (child,) = psutil.Process(stack.worker.pid).children()
    return child.pid


FLOODS = [
    ("wasi_unstable.fd_write, 28 M iovecs", hostile.fd_write_flood("wasi_unstable"),
     "module refused during _start(): wasi_unstable.fd_write was called with 28,000,000 "
     "iovecs, over the limit of 1,024 per call"),
    ("wasi_unstable.poll_oneoff, 3 M subscriptions", hostile.poll_flood("wasi_unstable"),
     "module refused during _start(): wasi_unstable.poll_oneoff was called with 3,000,000 "
     "subscriptions, over the limit of 1,024 per call"),
    ("wasi_snapshot_preview1.poll_oneoff, 3 M subscriptions", hostile.poll_flood(),
     "module refused during _start(): wasi_snapshot_preview1.poll_oneoff was called with "
     "3,000,000 subscriptions, over the limit of 1,024 per call"),
]


@pytest.mark.parametrize(("wasm", "expected"), [f[1:] for f in FLOODS],
                         ids=[f[0] for f in FLOODS])
def test_a_host_call_flood_fails_its_task_within_the_limits(api: Api, pool: int, wasm: bytes,
                                                            expected: str) -> None:
    cfid = api.deploy(wasm)
    started = time.monotonic()
    with PeakRss(pool) as rss:
        body = api.call(cfid, "x", wait=TIMEOUT_S + 1).json()
    assert time.monotonic() - started < TIMEOUT_S + 1
    assert body["statusCode"] == 0, body
    assert expected in body["message"], body["message"]
    # Before the caps, the fd_write flood alone took this process 2.1 GB above its start.
    assert rss.grew_mb < MEMORY_MB, f"the pool process grew {rss.grew_mb:.0f} MB"


def test_wasmtimes_own_preview1_fd_write_is_not_flooded_either(api: Api, pool: int) -> None:
    # wasmtime's fd_write (Rust) writes the first non-empty iovec and copies no list.
    cfid = api.deploy(hostile.fd_write_flood())
    with PeakRss(pool) as rss:
        body = api.call(cfid, "x", wait=TIMEOUT_S + 1).json()
    assert body["statusCode"] == 1 and body["result"] == "x", body
    assert rss.grew_mb < MEMORY_MB, f"the pool process grew {rss.grew_mb:.0f} MB"


def test_a_flood_just_under_the_cap_still_runs(api: Api) -> None:
    body = api.call(api.deploy(hostile.fd_write_flood("wasi_unstable", 1024)), "ok").json()
    assert body["statusCode"] == 1 and body["result"] == "ok", body


def test_a_legacy_sleep_is_bounded_by_the_time_limit_and_names_the_call(api: Api) -> None:
    body = api.call(api.deploy(hostile.LEGACY_SLEEPER), "x", wait=TIMEOUT_S + 1).json()
    assert body["statusCode"] == 0
    assert body["message"].endswith(f"time limit of {TIMEOUT_S} s exceeded during pred() in "
                               "wasi_unstable.poll_oneoff (the module asked to wait 60 s)")


def test_a_legacy_module_can_sleep_within_its_limit(api: Api) -> None:
    started = time.monotonic()
    body = api.call(api.deploy(hostile.LEGACY_NAP), "x").json()
    assert body["statusCode"] == 1, body
    assert [ord(c) for c in body["result"]] == [0, 1, 7]  # success, one event, its userdata
    assert time.monotonic() - started >= 0.05


def test_the_worker_process_survived_every_flood(stack: Stack, pool: int) -> None:
    assert [c.pid for c in psutil.Process(stack.worker.pid).children()] == [pool]
