"""Routing functions to queues of nodes, in Celery's words: a function names its queue,
a node consumes the queues it serves (`wasmq worker -Q`), and every guarantee holds
within each queue. Real Redis, gateway and Celery worker processes."""

from __future__ import annotations

import signal
import time

from tests import modules
from tests.localstack import wasmq
from tests.stacks import pool_pids, statuses
from tests.support import submit_all, wait_until
from wasmq.broker.protocol import recovery
from wasmq.client import Client


def _ran_on(worker, client, tid: str) -> bool:
    _, process, _ = statuses(client, [tid])[0]
    return int(process.rsplit(":", 1)[1]) in pool_pids(worker)


def test_a_function_s_calls_run_only_on_nodes_that_consume_its_queue(private) -> None:
    stack = private()
    default = stack.start_worker("default", concurrency=1)
    big = stack.start_worker("big", concurrency=1, queues="big")
    api, client = stack.api(), stack.client()
    on_big = api.deploy(modules.ECHO, name="on-big", queue="big")
    on_default = api.deploy(modules.ECHO, name="on-default")
    assert api.http.get(f"{api.url}/functions/{on_big}").json()["queue"] == "big"
    module = stack.workdir / "echo.wasm"
    module.write_bytes(modules.ECHO)
    by_client = Client(stack.url).deploy(module, name="by-client", queue="big")
    assert by_client.record["queue"] == "big"
    refused = api.upload(modules.ECHO, "bad-queue", queue="no spaces allowed")
    assert refused.status_code == 400 and "is not a queue name" in refused.json()["message"]
    for i in range(6):
        body = api.call(on_big, f"big {i}", wait=20).json()
        assert body["result"] == f"big {i}" and body["queue"] == "big", body
        assert _ran_on(big, client, body["tid"])
        body = api.call(on_default, f"default {i}", wait=20).json()
        assert body["result"] == f"default {i}" and body["queue"] == "wasmq", body
        assert _ran_on(default, client, body["tid"])


def test_a_call_to_a_queue_no_live_node_consumes_waits_and_says_so_until_one_starts(
        private) -> None:
    stack = private()
    stack.start_worker("default", concurrency=1)
    api = stack.api()
    gpu = api.deploy(modules.ECHO, name="on-gpu", queue="gpu")
    body = api.call(gpu, "scaled from zero", wait=0).json()
    assert body["statusCode"] == 5
    time.sleep(1.5)
    waiting = api.retrieve(body["tid"]).json()
    assert waiting["statusCode"] == 5
    assert 'queued: no live node consumes queue "gpu"' in waiting["message"], waiting
    depth = api.http.get(f"{api.url}/metrics/queues", timeout=10).json()
    assert depth["gpu"] == {"queued": 1, "nodes": 0}, depth  # what KEDA scales on
    assert depth["wasmq"]["nodes"] == 1
    stack.start_worker("gpu", concurrency=1, queues="gpu")
    assert api.poll(body["tid"])["result"] == "scaled from zero"


def test_a_queue_s_dead_node_has_its_calls_finished_by_another_node_of_that_queue(
        private) -> None:
    stack = private(WASMQ_MAX_BATCH="1")
    stack.start_worker("default", concurrency=1)
    doomed = stack.start_worker("big-a", concurrency=2, queues="big")
    api, client = stack.api(), stack.client()
    slow = api.deploy(modules.SLOW, name="slow-big", queue="big")
    inputs = [f"1500 held {i}" for i in range(4)]
    tids = submit_all(api, slow, inputs)
    wait_until(lambda: sum(s[0] == "running" for s in statuses(client, tids)) >= 2,
               what="calls running on node big-a")
    doomed.signal(signal.SIGKILL)
    killed_at = time.monotonic()
    survivor = stack.start_worker("big-b", concurrency=2, queues="big")
    for tid, data in zip(tids, inputs, strict=True):
        assert api.poll(tid, timeout=60)["result"] == data
        assert _ran_on(survivor, client, tid)
    bound = recovery.STALE_S + recovery.HEARTBEAT_S + 8  # + the start of the new node
    assert time.monotonic() - killed_at < bound + 10


def test_two_installations_on_one_redis_database_never_exchange_calls(private) -> None:
    """Each call goes to its function's queue, and a call sent again goes to its own
    record's queue, whichever node sends it: another installation's nodes (another
    WASMQ_QUEUE) never run it, even when they take over a dead node's calls."""
    stack = private(WASMQ_MAX_BATCH="1")
    ours = stack.start_worker("ours", concurrency=1)
    theirs_env = dict(stack.env, WASMQ_QUEUE="another-installation")
    log = stack.workdir / "worker-theirs.log"
    theirs = wasmq(["worker", "--concurrency", "1", "--name", "theirs@%h"], theirs_env, log)
    try:
        api, client = stack.api(), stack.client()
        slow = api.deploy(modules.SLOW, name="slow")
        tids = submit_all(api, slow, [f"300 ours {i}" for i in range(4)])
        wait_until(lambda: statuses(client, tids)[0][0] == "running", what="a call running")
        ours.signal(signal.SIGKILL)  # the other installation's node sees it die
        time.sleep(recovery.STALE_S + 2 * recovery.HEARTBEAT_S)
        stack.start_worker("ours-again", concurrency=1)
        for i, tid in enumerate(tids):
            assert api.poll(tid, timeout=60)["result"] == f"300 ours {i}"
        assert not any(_ran_on(theirs, client, t) for t in tids)
        assert not any(t in log.read_text() for t in tids)  # theirs ran none of our calls
    finally:
        theirs.stop()
