"""`wasmq purge` and `wasmq cancel`: an operator drains a flood of queued tasks."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests import modules
from tests.stacks import PrivateStack
from tests.support import INTSUM, ROOT, child_env, submit_all, wait_until
from wasmq.broker import keys
from wasmq.broker.clock import now
from wasmq.broker.protocol.queue import TaskQueue


@pytest.fixture()
def idle(tmp_path: Path) -> Iterator[PrivateStack]:
    """Redis and a gateway, with no worker yet: whatever is submitted stays queued (all
    of it in the Celery queue: one client submits hundreds of calls)."""
    stack = PrivateStack.start(tmp_path, WASMQ_MAX_INFLIGHT="100000", WASMQ_QUEUE_SHARE="100000",
                               WASMQ_MAX_BATCH="1")  # one message a call, to count them
    yield stack
    stack.stop()


@pytest.fixture()
def fair(tmp_path: Path) -> Iterator[PrivateStack]:
    """As shipped: one message of a client in the queue, the rest in its backlog."""
    stack = PrivateStack.start(tmp_path / "fair")
    yield stack
    stack.stop()


def cli(stack: PrivateStack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wasmq", *args], cwd=ROOT,
                          env=child_env(WASMQ_REDIS_URL=stack.redis_url),
                          capture_output=True, text=True, timeout=60)


def test_purge_of_one_function_cancels_its_queued_tasks_and_leaves_the_others(
        idle: PrivateStack) -> None:
    api, client = idle.api(), idle.client()
    flood = api.deploy(INTSUM.read_bytes(), name="flood")
    other = api.deploy(modules.SLOW, name="other")
    flooded = submit_all(api, flood, [f"[{i},1]" for i in range(300)])
    kept = submit_all(api, other, [f"10 kept {i}" for i in range(20)])
    assert client.llen("wasmq") == 320
    with ThreadPoolExecutor(max_workers=1) as pool:
        waiting = pool.submit(api.call, flood, "[5,5]", 30)  # a caller waiting for its answer
        wait_until(lambda: client.llen("wasmq") == 321, what="the waiting call queued")
        started = time.monotonic()
        result = cli(idle, "purge", "--function", flood)
        assert result.returncode == 0, result.stderr
        assert "cancelled 301 queued tasks of" in result.stdout
        answer = waiting.result(timeout=30)
        assert time.monotonic() - started < 10  # woken, not waiting out its 30 s
    body = answer.json()
    cancelled = (200, 0, "Task failed: cancelled")
    assert (answer.status_code, body["statusCode"], body["message"]) == cancelled
    for tid in flooded[::50]:
        body = api.retrieve(tid).json()
        assert (body["statusCode"], body["message"]) == (0, "Task failed: cancelled"), body
    assert client.llen("wasmq") == 20  # only the other function's messages are left
    assert client.zcard(keys.PENDING) == 20
    assert not any(client.hexists(keys.task(t), "job") for t in flooded)
    # What resend_lost would send again (tasks unclaimed for however long): none of them.
    lost = TaskQueue(client, ttl=3600, queue="wasmq").unclaimed(now() + 10 ** 6, limit=1000)
    assert sorted(job.tid for job in lost) == sorted(kept)
    metrics = requests.get(f"{api.url}/metrics", timeout=10).text
    assert 'wasmq_tasks_failed_total{cause="cancelled"} 301.0' in metrics
    # A worker now runs the others, and the cancelled ones stay cancelled.
    idle.start_worker("after")
    for i, tid in enumerate(kept):
        assert api.poll(tid)["result"] == f"10 kept {i}"
    assert api.retrieve(flooded[0]).json()["message"] == "Task failed: cancelled"
    assert cli(idle, "purge").stdout.startswith("cancelled 0 queued tasks")


def test_cancel_takes_one_queued_task_and_says_why_it_cannot_take_others(
        idle: PrivateStack) -> None:
    api, client = idle.api(), idle.client()
    slow = api.deploy(modules.SLOW, name="slow")
    first, second = submit_all(api, slow, ["10 first", "10 second"])
    result = cli(idle, "cancel", second)
    assert result.returncode == 0 and f"cancelled {second}" in result.stdout, result.stderr
    assert client.llen("wasmq") == 1
    assert api.retrieve(second).json()["message"] == "Task failed: cancelled"
    again = cli(idle, "cancel", second)
    assert again.returncode == 1 and "has already failed" in again.stderr
    unknown = cli(idle, "cancel", "wasmqt-" + "0" * 32)
    assert unknown.returncode == 1 and "no task" in unknown.stderr
    idle.start_worker("w", concurrency=1)
    assert api.poll(first)["result"] == "10 first"
    done = cli(idle, "cancel", first)
    assert done.returncode == 1 and "has already succeeded" in done.stderr
    running = api.call(slow, "3000 running", wait=0).json()["tid"]
    wait_until(lambda: api.retrieve(running).json().get("status") == "running",
               what="the task running")
    busy = cli(idle, "cancel", running)
    assert busy.returncode == 1 and "is already running on" in busy.stderr
    assert "cannot be stopped" in busy.stderr
    assert api.poll(running)["result"] == "3000 running"


def test_purge_without_redis_says_where_it_looked(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "wasmq", "purge", "--data-dir",
                             str(tmp_path)], cwd=ROOT, env=child_env(), capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 2
    assert f"none runs on {tmp_path}" in result.stderr and "WASMQ_REDIS_URL" in result.stderr


def test_purge_cancels_calls_held_back_in_a_caller_s_backlog_too(fair: PrivateStack) -> None:
    api, client = fair.api(), fair.client()
    flood = api.deploy(INTSUM.read_bytes(), name="flood")
    tids = submit_all(api, flood, [f"[{i},1]" for i in range(40)])
    assert client.llen("wasmq") == 1  # the rest wait in the client's backlog
    result = cli(fair, "purge", "--function", flood)
    assert result.returncode == 0, result.stderr
    assert "cancelled 40 queued tasks of" in result.stdout
    fair.start_worker("after")
    wait_until(lambda: client.llen("wasmq") == 0 and not client.scard(keys.BACKLOGS),
               timeout=30, what="the held-back messages released and skipped")
    for tid in tids:
        body = api.retrieve(tid).json()
        assert (body["statusCode"], body["message"]) == (0, "Task failed: cancelled"), body
