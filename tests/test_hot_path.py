"""The lean hot path: a byte-bounded module cache, warm new processes, inputs by reference."""

from __future__ import annotations

import base64
import hashlib
import json
import time

import msgpack
import pytest
import redis
from kombu.serialization import loads

from tests import modules
from tests.conftest import INPROCESS_QUEUE
from tests.modules import variant
from tests.support import Api, envelope, upload, wait_until
from wasmq.broker import keys
from wasmq.broker.artifacts import Artifacts
from wasmq.broker.limits import Limits
from wasmq.broker.records import (
    SHIP_LIMIT,
    Status,
    TaskRecord,
    TaskRecords,
    parse_wakeup,
    unpack_shipped,
)
from wasmq.broker.store import RedisStore
from wasmq.workers.runtime import Runtime
from wasmq.workers.warmup import warm_up


def sha(wasm: bytes) -> str:
    return hashlib.sha256(wasm).hexdigest()


@pytest.mark.fast
def test_the_module_cache_is_bounded_in_bytes_and_evicts_the_least_recently_used() -> None:
    probe = Runtime()
    one = probe.prepare("probe", lambda: modules.ECHO).size
    runtime = Runtime(cache_bytes=2 * one + one // 2)  # room for two, not three
    a, b, c = (variant(modules.ECHO) for _ in range(3))
    for wasm in (a, b):
        runtime.prepare(sha(wasm), lambda w=wasm: w)
    runtime.prepare(sha(a), lambda: a)  # a is now the most recently used
    runtime.prepare(sha(c), lambda: c)
    assert list(runtime.cached()) == [sha(a), sha(c)]
    assert runtime.cached_bytes <= runtime.cache_bytes
    assert runtime.run(runtime.prepare(sha(a), lambda: a), b"still", Limits()).output == b"still"


@pytest.mark.fast
def test_a_module_larger_than_the_cache_still_runs() -> None:
    runtime = Runtime(cache_bytes=1)
    prepared = runtime.prepare(sha(modules.ECHO), lambda: modules.ECHO)
    assert runtime.run(prepared, b"big", Limits()).output == b"big"
    assert list(runtime.cached()) == [sha(modules.ECHO)]


@pytest.mark.fast
def test_a_new_worker_process_preloads_the_hot_modules(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    wasm = variant(modules.ECHO)
    RedisStore(client).put(wasm)
    artifacts = Artifacts(client)
    Runtime(artifacts=artifacts).prepare(sha(wasm), lambda: wasm)  # compiles, stores, marks hot
    fresh = Runtime(artifacts=artifacts)
    warm_up(fresh, TaskRecords(client, 60), preload_bytes=64 * 1024 * 1024)
    assert sha(wasm) in fresh.cached()
    assert "warmup-probe" not in fresh.cached()


def queued_jobs(client: redis.Redis) -> list[dict]:
    """The wasmq.run jobs waiting in the in-process app's queue, as a worker reads them."""
    jobs = []
    for raw in client.lrange(INPROCESS_QUEUE, 0, -1):
        message = json.loads(raw)
        args, _, _ = loads(base64.b64decode(message["body"]), message["content-type"],
                           message["content-encoding"], accept={message["content-type"]})
        jobs.append({"size": len(raw), **args[0]})
    return jobs


@pytest.mark.fast
def test_an_input_over_256_kib_waits_in_redis_and_its_message_stays_small(
        client, inprocess_redis: redis.Redis) -> None:
    cfid = upload(client, modules.ECHO).get_json()["cfid"]
    data = "x" * (300 * 1024)
    body = client.post(f"/task/{cfid}?wait=0", json=envelope(data)).get_json()
    assert body["statusCode"] == 5
    assert inprocess_redis.get(keys.task_input(body["tid"])) == data.encode()
    [job] = queued_jobs(inprocess_redis)  # no worker reads this queue: it is still there
    assert job["tid"] == body["tid"] and job["data"] is None and job["size"] < 64 * 1024


@pytest.mark.fast
def test_an_inline_input_travels_in_its_message_and_writes_no_input_key(
        client, inprocess_redis: redis.Redis) -> None:
    """Checked while the task is still queued: the finish script would delete the key."""
    cfid = upload(client, modules.ECHO).get_json()["cfid"]
    body = client.post(f"/task/{cfid}?wait=0", json=envelope("small")).get_json()
    [job] = queued_jobs(inprocess_redis)
    assert job["tid"] == body["tid"] and job["data"] == b"small"
    assert inprocess_redis.hget(keys.task(body["tid"]), "status") == b"queued"
    assert not inprocess_redis.exists(keys.task_input(body["tid"]))


def test_an_input_by_reference_is_read_by_the_worker_and_deleted_after_the_task(
        api: Api, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    cfid = api.deploy(modules.SLOW)
    data = "400" + " " * (300 * 1024)  # the module busy-waits 400 ms, then echoes
    body = api.call(cfid, data, wait=0).json()
    ref = keys.task_input(body["tid"])
    assert client.strlen(ref) == len(data), "the input waits in Redis, not in the message"
    final = api.poll(body["tid"])
    assert final["statusCode"] == 1 and final["result"] == data
    wait_until(lambda: not client.exists(ref), timeout=5, what="input deleted")


def test_a_small_finished_record_travels_with_its_wakeup_and_a_large_one_does_not(
        redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    records = TaskRecords(client, 60)
    subscription = client.pubsub(ignore_subscribe_messages=True)
    subscription.subscribe(keys.DONE_CHANNEL)
    shipped = {}
    for name, result in (("small", b"\x00[55]\xff"), ("large", b"x" * (SHIP_LIMIT + 1))):
        tid = f"wasmqt-ship-{name}-{time.monotonic_ns()}"
        records.create(TaskRecord(tid=tid, cfid="c"), job=b"job")
        records.claim(tid, "node-1")
        assert b"job" not in client.hgetall(keys.task(tid))  # claimed: nothing to resend
        records.finish(tid, Status.SUCCEEDED, result=result, stdout="out", exec_ms=0.2)
        message = wait_until(lambda: subscription.get_message(timeout=1), what="wake-up")
        woken, packed = parse_wakeup(message["data"])
        record = unpack_shipped(packed)
        assert woken == tid
        shipped[name] = record
        if record is not None:
            assert record == records.get(tid)
    subscription.close()
    assert shipped["small"] is not None and shipped["small"].result == b"\x00[55]\xff"
    assert shipped["large"] is None  # the waiter reads it back instead


@pytest.mark.fast
def test_a_shipped_record_that_cannot_be_read_or_is_unfinished_is_not_used() -> None:
    assert unpack_shipped(b"") is None
    assert unpack_shipped(b"\xc1 not msgpack") is None
    assert unpack_shipped(msgpack.packb([b"tid", b"t", b"status"])) is None  # odd list
    running = msgpack.packb([b"tid", b"t", b"cfid", b"c", b"status", b"running"])
    assert unpack_shipped(running) is None  # the waiter reads the record instead
    done = msgpack.packb([b"tid", b"t", b"cfid", b"c", b"status", b"succeeded", b"result", b"1"])
    assert unpack_shipped(done).result == b"1"


def test_a_claim_sent_ahead_marks_the_task_running_and_its_answer_comes_later(
        redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    records = TaskRecords(client, 60)
    tid = f"wasmqt-sent-{time.monotonic_ns()}"
    records.create(TaskRecord(tid=tid, cfid="c"))
    records.load_scripts()
    sent = records.claim_sent(tid, "node-1")
    wait_until(lambda: client.hget(keys.task(tid), "status") == b"running", what="running")
    assert sent.answer() == "running"
    records.finish(tid, Status.SUCCEEDED, result=b"1")
    again = records.claim_sent(tid, "node-2")  # a redelivered copy
    assert again.answer() == "succeeded"
    assert records.get(tid).node == "node-1"
    client.script_flush()  # as after a Redis restart: the claim is made the slow way
    missing = f"wasmqt-sent-missing-{time.monotonic_ns()}"
    assert records.claim_sent(missing, "node-1").answer() == "missing"


def test_creating_a_task_twice_queues_it_once(redis_url: str) -> None:
    """As when redis-py resends the script after a dropped connection lost its answer."""
    client = redis.Redis.from_url(redis_url)
    records = TaskRecords(client, 60)
    tid = f"wasmqt-twice-{time.monotonic_ns()}"
    queue = f"test-twice-{tid}"
    for _ in range(2):
        assert records.create(TaskRecord(tid=tid, cfid="c"), message=(queue, b"m")) is None
    assert client.llen(queue) == 1
    client.delete(queue)
