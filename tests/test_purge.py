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


@pytest.fixture()
def idle(tmp_path: Path) -> Iterator[PrivateStack]:
    """Redis and a gateway, with no worker yet: whatever is submitted stays queued (all
    of it in the Celery queue: one client submits hundreds of calls)."""
    stack = PrivateStack.start(tmp_path, WASMQ_MAX_INFLIGHT="100000",
                               WASMQ_MAX_BATCH="1")  # one message a call, to count them
    yield stack
    stack.stop()


def queued(client) -> int:
    """Calls sent to the default queue and not yet claimed, as wasmq's records say."""
    return client.zcard(keys.queued("wasmq"))


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
    assert queued(client) == 320
    with ThreadPoolExecutor(max_workers=1) as pool:
        waiting = pool.submit(api.call, flood, "[5,5]", 30)  # a caller waiting for its answer
        wait_until(lambda: queued(client) == 321, what="the waiting call queued")
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
    assert queued(client) == 20  # only the other function's calls are left
    assert not any(client.hexists(keys.task(t), "job") for t in flooded)
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
    assert queued(client) == 1
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


def test_celery_purge_and_wasmq_purge_agree_and_neither_resurrects_the_other(
        idle: PrivateStack) -> None:
    api = idle.api()
    echo = api.deploy(modules.ECHO, name="echo")
    tids = submit_all(api, echo, [f"purged {i}" for i in range(30)])
    celery = subprocess.run([sys.executable, "-m", "celery", "-A", "wasmq.workers.celery_main",
                             "purge", "-f", "-Q", "wasmq"], cwd=ROOT,
                            env=child_env(WASMQ_REDIS_URL=idle.redis_url), capture_output=True,
                            text=True, timeout=60)
    assert celery.returncode == 0, celery.stderr
    assert "30 messages" in celery.stdout, celery.stdout
    idle.start_worker("after")
    time.sleep(3)  # a node that would resend queued calls has had time to
    assert {api.retrieve(t).json()["status"] for t in tids} == {"queued"}
    result = cli(idle, "purge")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("cancelled 30 queued tasks (0 Celery messages removed)")
    for tid in tids[::7]:
        assert api.retrieve(tid).json()["message"] == "Task failed: cancelled"
    assert api.call(echo, "after", wait=20).json()["result"] == "after"
