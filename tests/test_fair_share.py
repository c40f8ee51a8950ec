"""One caller cannot starve the others: tasks in flight are capped per caller, each
caller's calls go at a Celery priority that falls as its calls in flight double, and a task whose
run kills its worker process is retried a bounded number of times."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest
import requests

from tests import modules
from tests.stacks import PrivateStack, node_pid
from tests.support import Api, envelope, wait_until
from wasmq.broker import keys

ATTACKER, OTHER = "attacker-key", "other-key"
MAX_INFLIGHT = 10
TASK_S = 1.5  # each of the attacker's calls


@pytest.fixture(scope="module")
def fair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateStack]:
    stack = PrivateStack.start(tmp_path_factory.mktemp("fair"), WASMQ_RATE_LIMIT="off",
                               WASMQ_MAX_INFLIGHT=str(MAX_INFLIGHT), WASMQ_MAX_ATTEMPTS="3",
                               WASMQ_API_KEYS=f"{ATTACKER},{OTHER}", WASMQ_TASK_TIMEOUT="20")
    stack.start_worker("fair", concurrency=2)
    yield stack
    stack.stop()


def _call(stack: PrivateStack, cfid: str, data: str, key: str, wait: float = 0,
          timeout: float = 30) -> requests.Response:
    return requests.post(f"{stack.url}/task/{cfid}?wait={wait:g}", json=envelope(data),
                         headers={"Authorization": f"Bearer {key}"}, timeout=timeout)


def _deploy(stack: PrivateStack, wasm: bytes) -> str:
    api = Api(stack.url)
    api.http.headers["Authorization"] = f"Bearer {ATTACKER}"
    return api.deploy(wasm)


def _drain(stack: PrivateStack, tids: list[str]) -> None:
    client = stack.client()
    wait_until(lambda: all(client.hget(keys.task(t), "status") in (b"succeeded", b"failed")
                           for t in tids), timeout=60, what="the attacker's calls to end")


def test_a_caller_past_its_tasks_in_flight_gets_429_and_another_caller_does_not(
        fair: PrivateStack) -> None:
    slow = _deploy(fair, modules.SLOW)
    # Long enough that none ends while the rest are sent, on a loaded machine too.
    answers = [_call(fair, slow, str(int(TASK_S * 1000)), ATTACKER)
               for _ in range(MAX_INFLIGHT + 3)]
    assert [a.status_code for a in answers[:MAX_INFLIGHT]] == [202] * MAX_INFLIGHT
    refused = answers[MAX_INFLIGHT:]
    assert {a.status_code for a in refused} == {429}
    body = refused[0].json()
    assert body["statusCode"] == 0 and f"limit of {MAX_INFLIGHT}" in body["message"], body
    assert int(refused[0].headers["Retry-After"]) >= 1
    assert _call(fair, slow, "1", OTHER).status_code == 202  # its own cap
    _drain(fair, [a.json()["tid"] for a in answers[:MAX_INFLIGHT]])
    assert _call(fair, slow, "1", ATTACKER).status_code == 202  # room again


def test_another_caller_s_fast_call_waits_for_about_one_task_not_the_whole_backlog(
        fair: PrivateStack) -> None:
    slow, fast = _deploy(fair, modules.SLOW), _deploy(fair, modules.ECHO)
    flood = [_call(fair, slow, str(int(TASK_S * 1000)), ATTACKER) for _ in range(MAX_INFLIGHT)]
    assert all(a.status_code == 202 for a in flood)
    time.sleep(0.3)  # both worker processes are busy with the attacker's calls
    started = time.monotonic()
    answer = _call(fair, fast, "quick", OTHER, wait=30)
    waited = time.monotonic() - started
    assert answer.json()["statusCode"] == 1, answer.text
    # Behind the whole backlog it would wait (10 calls x 1.5 s) / 2 processes = 7.5 s.
    assert waited < 2 * TASK_S + 1, f"the other caller waited {waited:.1f} s"
    _drain(fair, [a.json()["tid"] for a in flood])


def test_a_task_whose_run_kills_its_worker_every_time_fails_after_its_attempts(
        fair: PrivateStack) -> None:
    slow = _deploy(fair, modules.SLOW)
    tid = _call(fair, slow, "10000", ATTACKER).json()["tid"]
    client = fair.client()
    killed: set[int] = set()

    def kill_its_run() -> bool:
        status, node = client.hmget(keys.task(tid), "status", "worker")
        if status == b"running" and node:
            pid = node_pid(node.decode())
            if pid not in killed:
                killed.add(pid)
                os.kill(pid, signal.SIGKILL)  # the "module" takes its worker down
        return status == b"failed"

    wait_until(kill_its_run, timeout=90, interval=0.1, what="the poison pill to end")
    body = requests.get(f"{fair.url}/retrieve/{tid}", timeout=10,
                        headers={"Authorization": f"Bearer {ATTACKER}"}).json()
    assert len(killed) == 3
    assert body["statusCode"] == 0 and body["cause"] == "worker_lost", body
    assert "ended its worker process 3 times (last: signal 9 (SIGKILL))" in body["message"]
    # The node is still serving.
    echo = _deploy(fair, modules.ECHO)
    assert _call(fair, echo, "after", OTHER, wait=20).json()["result"] == "after"


