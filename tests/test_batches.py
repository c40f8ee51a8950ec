"""Batches (WASMQ_MAX_BATCH) keep every call's guarantees: real processes, some killed.

Calls that arrive together travel in one message (api/batcher.py, workers/tasks.py).
A batch is seen running when several records were claimed by one process at the
same instant (one claim script marks them all), which is how these tests find a
batch to kill.
"""

from __future__ import annotations

import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests import modules
from tests.stacks import DoneWatcher, assert_echoed, node_pid, pool_pids, statuses
from tests.support import Api, submit_all, wait_until
from wasmq.broker import keys
from wasmq.broker.settings import Settings

# Calls in a tight loop from one address pass 500/s (the default rate limit) here.
BATCHING = {"WASMQ_MAX_BATCH": "8", "WASMQ_RATE_LIMIT": "100000/second"}
ADMIN = "batch-admin-key"
# A call traps when its input starts with "f", and echoes it otherwise.
FAILS_ON_F = modules.wasm("""
    (if (result i32) (i32.eq (i32.load8_u (global.get $in)) (i32.const 102))
      (then (unreachable)) (else (i32.const 0)))""")


def batching_stack(private, module: bytes, name: str) -> tuple:
    """A private stack with batches on, a two-process worker node and `module` deployed:
    the stack, the node, its Api and the function's cfid."""
    stack = private(**BATCHING)
    worker = stack.start_worker("a", concurrency=2)
    api = stack.api()
    return stack, worker, api, api.deploy(module, name=name)


def batches_run(log: str) -> list[int]:
    """The sizes of the batches a worker's log says it ran."""
    return [int(n) for n in re.findall(r"batch wasmqb-[0-9a-f]+: (\d+) calls", log)]


def ran_batches(log: str) -> None:
    """The guarantees above were checked call by call; whether the calls travelled in
    batches depends on how they arrived. When none did, say so rather than pass."""
    if max(batches_run(log), default=0) < 2:
        pytest.skip("no batch of two or more formed under this load: the batch path was "
                    "not exercised (the calls' guarantees were checked all the same)")


def running_batch(client, tids: list[str]) -> list[str] | None:
    """The tids of a batch being run now: claimed by one process at one instant,
    at least one finished already and one still running."""
    pipe = client.pipeline(transaction=False)
    for tid in tids:
        pipe.hmget(keys.task(tid), "status", "worker", "startedAt", "attempts")
    groups: dict[tuple[bytes, bytes], list[tuple[str, bytes]]] = {}
    for tid, (status, node, started, attempts) in zip(tids, pipe.execute(), strict=True):
        if node and started and attempts == b"1":
            groups.setdefault((node, started), []).append((tid, status))
    for members in groups.values():
        states = [s for _, s in members]
        if len(members) >= 2 and b"running" in states and b"succeeded" in states:
            return [t for t, _ in members]
    return None


def test_a_worker_process_killed_mid_batch_reruns_only_the_unfinished_calls(
        private) -> None:
    stack, worker, api, cfid = batching_stack(private, modules.SLOW, "slow")
    client = stack.client()
    watcher = DoneWatcher(client)
    inputs = [f"250 call {i}" for i in range(48)]
    try:
        tids = submit_all(api, cfid, inputs, at_once=len(inputs))
        batch = wait_until(lambda: running_batch(client, tids), timeout=60, interval=0.02,
                           what="a batch mid-run")
        before = dict(zip(batch, statuses(client, batch), strict=True))
        victim = node_pid(before[batch[0]][1])
        assert victim in pool_pids(worker)
        os.kill(victim, signal.SIGKILL)
        watcher.wait_for(tids, timeout=120)
        time.sleep(0.5)  # a doubled completion would be published by now
    finally:
        watcher.close()
    assert_echoed(api, tids, inputs)
    assert all(watcher.counts[t] == 1 for t in tids), "a call finished twice"
    after = dict(zip(batch, statuses(client, batch), strict=True))
    finished_before = [t for t in batch if before[t][0] == "succeeded"]
    assert finished_before
    for tid in finished_before:  # not run again: same process, one attempt
        assert after[tid][1:] == before[tid][1:], (tid, before[tid], after[tid])
    for tid in set(batch) - set(finished_before):
        if before[tid][0] == "running":
            assert node_pid(after[tid][1]) != victim and after[tid][2] >= 2
    ran_batches(worker.output())


def test_a_node_killed_mid_batch_has_its_calls_finished_by_another(private) -> None:
    timeout = "2"
    stack = private(WASMQ_TASK_TIMEOUT=timeout, **BATCHING)
    node_a = stack.start_worker("a", concurrency=2)
    api = stack.api()
    cfid = api.deploy(modules.SLOW, name="slow")
    client = stack.client()
    inputs = [f"200 held {i}" for i in range(64)]
    tids = submit_all(api, cfid, inputs, at_once=len(inputs))
    batch = wait_until(lambda: running_batch(client, tids), timeout=60, interval=0.02,
                       what="a batch mid-run on node a")
    node_a.signal(signal.SIGKILL)  # main process and pool
    node_a.popen.wait(10)
    stack.start_worker("b", concurrency=2)
    for tid, data in zip(tids, inputs, strict=True):
        body = api.poll(tid, timeout=Settings(task_timeout=2.0).visibility_timeout + 60)
        assert body["statusCode"] == 1 and body["result"] == data, body
    assert batch


def test_a_batch_mixing_failing_and_succeeding_calls_answers_each_its_own(private) -> None:
    stack, worker, api, cfid = batching_stack(private, FAILS_ON_F, "fails-on-f")
    before = requests.get(f"{stack.url}/metrics", timeout=10).text
    inputs = [("f" if i % 3 == 0 else "s") + f" call {i}" for i in range(60)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        bodies = list(pool.map(lambda d: api.call(cfid, d, wait=30).json(), inputs))
    for data, body in zip(inputs, bodies, strict=True):
        if data.startswith("f"):
            assert body["statusCode"] == 0 and "trapped" in body["message"], body
            record = api.retrieve(body["tid"]).json()
            assert record["statusCode"] == 0 and record.get("result") in (None, ""), record
        else:
            assert body["statusCode"] == 1 and body["result"] == data, body
    ran_batches(worker.output())
    after = requests.get(f"{stack.url}/metrics", timeout=10).text
    assert _count(after, "wasmq_tasks_succeeded_total") - \
        _count(before, "wasmq_tasks_succeeded_total") == 40
    assert _count(after, "wasmq_tasks_failed_total") - \
        _count(before, "wasmq_tasks_failed_total") == 20


def _count(metrics: str, name: str) -> float:
    """The sum of a metric's series (every cause of the failures)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith((name + " ", name + "{")))


def test_calls_batched_while_their_function_is_replaced_run_one_version_each(
        private) -> None:
    stack, worker, api, cfid = batching_stack(private, modules.ECHO, "replaced")
    calls: list[tuple[float, float, str, dict]] = []  # started, answered, input, body
    replaced_at: list[float] = []

    def caller(n: int) -> None:
        i = 0
        while not replaced_at or time.monotonic() < replaced_at[0] + 1.0:
            data = f"call {n}.{i}"
            started = time.monotonic()
            body = api.call(cfid, data, wait=30).json()
            calls.append((started, time.monotonic(), data, body))
            i += 1

    with ThreadPoolExecutor(max_workers=16) as pool:
        running = [pool.submit(caller, n) for n in range(16)]
        wait_until(lambda: len(calls) >= 40, timeout=60, what="calls before the replace")
        putting = time.monotonic()
        response = api.http.put(f"{api.url}/functions/{cfid}",
                                files={"file": ("m.wasm", modules.NOT_JSON)}, timeout=30)
        assert response.status_code == 200, response.text
        replaced_at.append(time.monotonic())
        for future in running:
            future.result()
    for _, _, data, body in calls:
        assert body["statusCode"] == 1, body
        assert body["result"] in (data, modules.NOT_JSON_TEXT), body
    before = [c for c in calls if c[1] < putting]
    after = [c for c in calls if c[0] > replaced_at[0]]
    assert before and all(body["result"] == data for _, _, data, body in before)
    assert after and all(body["result"] == modules.NOT_JSON_TEXT for *_, body in after)
    ran_batches(worker.output())


def test_a_private_function_s_batched_calls_need_the_key_each(private) -> None:
    stack = private(WASMQ_API_KEYS=ADMIN, **BATCHING)
    worker = stack.start_worker("a", concurrency=2)
    admin = Api(stack.url)
    admin.http.headers.update({"Authorization": f"Bearer {ADMIN}"})
    cfid = admin.deploy(modules.ECHO, name="secret", private="true")
    anonymous = Api(stack.url)
    inputs = [f"secret {i}" for i in range(48)]

    def call(i: int) -> tuple[int, dict]:
        who = admin if i % 4 else anonymous
        response = who.call(cfid, inputs[i], wait=30)
        return response.status_code, response.json()

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(call, range(len(inputs))))
    for i, (status, body) in enumerate(answers):
        if i % 4 == 0:
            assert status == 401 and not body["tid"], body
            continue
        assert status == 200 and body["result"] == inputs[i], body
        assert anonymous.retrieve(body["tid"]).status_code == 401
        assert admin.retrieve(body["tid"]).json()["result"] == inputs[i]
    ran_batches(worker.output())
