"""The lean hot path: a byte-bounded module cache, warm new processes, inputs by reference."""

from __future__ import annotations

import base64
import hashlib
import json

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
from wasmq.broker.protocol.queue import Job, TaskQueue
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
    warm_up(fresh, TaskQueue(client, ttl=60), preload_bytes=64 * 1024 * 1024)
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
    kept = Job.unpacked(inprocess_redis.hget(keys.task(body["tid"]), "job"))
    assert kept.data == data.encode()  # with the record, until the call finishes
    [job] = queued_jobs(inprocess_redis)  # no worker reads this queue: it is still there
    assert job["tid"] == body["tid"] and job["data"] is None and job["size"] < 64 * 1024


@pytest.mark.fast
def test_an_inline_input_travels_in_its_message(
        client, inprocess_redis: redis.Redis) -> None:
    """Checked while the task is still queued: the finish script drops the kept job."""
    cfid = upload(client, modules.ECHO).get_json()["cfid"]
    body = client.post(f"/task/{cfid}?wait=0", json=envelope("small")).get_json()
    [job] = queued_jobs(inprocess_redis)
    assert job["tid"] == body["tid"] and job["data"] == b"small"
    assert inprocess_redis.hget(keys.task(body["tid"]), "status") == b"queued"


def test_an_input_by_reference_is_read_by_the_worker_and_deleted_after_the_task(
        api: Api, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    cfid = api.deploy(modules.SLOW)
    data = "400" + " " * (300 * 1024)  # the module busy-waits 400 ms, then echoes
    body = api.call(cfid, data, wait=0).json()
    ref = keys.task(body["tid"])
    assert Job.unpacked(client.hget(ref, "job")).data == data.encode(), \
        "the input waits in Redis, not in the message"
    final = api.poll(body["tid"])
    assert final["statusCode"] == 1 and final["result"] == data
    wait_until(lambda: not client.hexists(ref, "job"), timeout=5, what="input deleted")
