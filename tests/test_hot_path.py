"""The lean hot path: a byte-bounded module cache, warm new processes, inputs by reference."""

from __future__ import annotations

import hashlib
import time

import redis

from tests import modules
from tests.modules import variant
from tests.support import Api, wait_until
from wasmq.broker import keys
from wasmq.broker.artifacts import Artifacts
from wasmq.broker.limits import Limits
from wasmq.broker.protocol.queue import TaskQueue
from wasmq.broker.store import RedisStore
from wasmq.workers.runtime import Runtime
from wasmq.workers.warmup import warm_up


def sha(wasm: bytes) -> str:
    return hashlib.sha256(wasm).hexdigest()


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


def test_a_module_larger_than_the_cache_still_runs() -> None:
    runtime = Runtime(cache_bytes=1)
    prepared = runtime.prepare(sha(modules.ECHO), lambda: modules.ECHO)
    assert runtime.run(prepared, b"big", Limits()).output == b"big"
    assert list(runtime.cached()) == [sha(modules.ECHO)]


def test_a_new_worker_process_preloads_the_hot_modules(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    wasm = variant(modules.ECHO)
    RedisStore(client).put(wasm)
    artifacts = Artifacts(client)
    Runtime(artifacts=artifacts).prepare(sha(wasm), lambda: wasm)  # compiles, stores, marks hot
    fresh = Runtime(artifacts=artifacts)
    warm_up(fresh, TaskQueue(client, ttl=60, queue="hot-path"), preload_bytes=64 * 1024 * 1024)
    assert sha(wasm) in fresh.cached()
    assert "warmup-probe" not in fresh.cached()


def test_an_input_over_256_kib_travels_by_reference_and_is_deleted_after_the_task(
        api: Api, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    cfid = api.deploy(modules.SLOW)
    data = "400" + " " * (300 * 1024)  # the module busy-waits 400 ms, then echoes
    body = api.call(cfid, data, wait=0).json()
    ref = keys.task_input(body["tid"])
    assert client.strlen(ref) == len(data), "the input waits in Redis, not in the message"
    queued = [m for m in client.lrange("wasmq", 0, -1)]
    assert all(len(m) < 64 * 1024 for m in queued)
    final = api.poll(body["tid"])
    assert final["statusCode"] == 1 and final["result"] == data
    wait_until(lambda: not client.exists(ref), timeout=5, what="input deleted")


def test_an_inline_input_leaves_no_key_behind(api: Api, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    cfid = api.deploy(modules.ECHO)
    tid = api.call(cfid, "small").json()["tid"]
    time.sleep(0.05)
    assert not client.exists(keys.task_input(tid))
