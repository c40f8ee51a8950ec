"""Uploaded modules are loaded by every worker process before their first call."""

from __future__ import annotations

import hashlib
import json
import threading

import pytest
import redis

from tests import modules
from tests.localstack import Stack
from tests.modules import variant
from tests.support import Api, wait_until
from wasmq.broker import abi, keys
from wasmq.broker.artifacts import Artifacts, Uploaded
from wasmq.broker.limits import Limits
from wasmq.broker.store import RedisStore
from wasmq.workers.prefetch import Prefetcher
from wasmq.workers.runtime import Runtime

# Its data says "started" and its start section capitalises it: the output
# shows that the start section ran in the instance that answered.
STARTED = modules.wasm(
    data='(data (i32.const 16) "started")',
    extra="(func $init (i32.store8 (i32.const 16) (i32.const 83))) (start $init)",
    pred="(global.set $out (i32.const 16)) (global.set $outlen (i32.const 7)) (i32.const 0)")


def sha(wasm: bytes) -> str:
    return hashlib.sha256(wasm).hexdigest()


def prefetch_lines(stack: Stack, digest: str) -> dict[int, str]:
    """pid -> message of each worker process's prefetch of `digest`, from the JSON log."""
    lines: dict[int, str] = {}
    for line in stack.worker.output().splitlines():
        if digest in line and line.startswith("{"):
            entry = json.loads(line)
            if "prefetch" in entry["message"]:
                lines[entry["pid"]] = entry["message"]
    return lines


def both_pool_processes(stack: Stack, digest: str) -> dict[int, str]:
    """The prefetch lines once both pool processes of the test stack wrote theirs."""
    return wait_until(lambda: len(prefetch_lines(stack, digest)) == 2
                      and prefetch_lines(stack, digest), timeout=10,
                      what=f"both pool processes prefetching {digest}")


def test_every_worker_process_loads_an_uploaded_module_before_its_first_call(
        stack: Stack, api: Api) -> None:
    wasm = variant(modules.ECHO)
    cfid = api.deploy(wasm)
    # The upload answered once both had loaded it: no waiting for the log here.
    lines = prefetch_lines(stack, sha(wasm))
    assert len(lines) == 2, lines
    assert all(m.startswith(f"prefetched {sha(wasm)} (") for m in lines.values()), lines
    assert "start section" not in " ".join(lines.values())
    assert api.call(cfid, "first").json()["result"] == "first"


def test_a_module_with_a_start_section_is_loaded_but_left_to_its_task_to_instantiate(
        stack: Stack, api: Api) -> None:
    wasm = variant(STARTED)
    cfid = api.deploy(wasm)
    lines = both_pool_processes(stack, sha(wasm))
    assert all("not instantiated: it has a start section" in m for m in lines.values()), lines
    assert api.call(cfid, "x").json()["result"] == "Started"


def test_bad_announcements_are_logged_and_the_next_upload_is_still_prefetched(
        stack: Stack, api: Api, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    missing = Uploaded("0" * 64, 100, False)  # no artifact anywhere
    for raw in (b"not json", b'{"sha256": 1}', missing.encode()):
        client.publish(keys.UPLOADED_CHANNEL, raw)
    skipped = both_pool_processes(stack, missing.sha256)
    assert all("no artifact for this engine" in m for m in skipped.values()), skipped
    wasm = variant(modules.ECHO)
    cfid = api.deploy(wasm)
    assert all(m.startswith("prefetched") for m in both_pool_processes(stack, sha(wasm)).values())
    assert "ignored a malformed upload announcement" in stack.worker.output()
    assert api.call(cfid, "still").json()["result"] == "still"


def test_only_a_start_section_makes_instantiation_run_code() -> None:
    assert abi.runs_code_on_instantiation(STARTED)
    assert not abi.runs_code_on_instantiation(modules.ECHO)
    assert not abi.runs_code_on_instantiation(variant(modules.ECHO))
    assert not abi.runs_code_on_instantiation(modules.NOT_JSON)  # a data section


@pytest.fixture()
def stored(redis_url: str) -> tuple[Artifacts, bytes, Uploaded]:
    """An echo module stored with its artifact, as an upload leaves it."""
    client = redis.Redis.from_url(redis_url)
    wasm = variant(modules.ECHO)
    RedisStore(client).put(wasm)
    artifacts = Artifacts(client)
    size = Runtime(artifacts=artifacts).prepare(sha(wasm), lambda: wasm).size
    return artifacts, wasm, Uploaded(sha(wasm), size, False)


def test_a_prefetch_fills_free_room_only_and_never_evicts(
        stored: tuple[Artifacts, bytes, Uploaded]) -> None:
    artifacts, _, uploaded = stored
    other = variant(modules.ECHO)
    full = Runtime(cache_bytes=uploaded.size + 1, artifacts=artifacts)
    full.prepare(sha(other), lambda: other)
    assert not Prefetcher(full, artifacts.redis).load(uploaded)
    assert list(full.cached()) == [sha(other)]
    roomy = Runtime(artifacts=artifacts)
    assert Prefetcher(roomy, artifacts.redis).load(uploaded)
    assert not Prefetcher(roomy, artifacts.redis).load(uploaded), "loaded once"
    assert list(roomy.cached()) == [uploaded.sha256]


def test_a_call_for_a_module_being_loaded_waits_for_that_load_instead_of_loading_it_twice(
        ) -> None:
    runtime = Runtime()
    wasm = variant(modules.ECHO)
    entered, release = threading.Event(), threading.Event()
    loads: list[str] = []

    def slow_load() -> bytes:
        loads.append("prefetch")
        entered.set()
        release.wait(10)
        return wasm

    results: dict[str, object] = {}
    prefetch = threading.Thread(target=lambda: results.update(
        prefetch=runtime.prepare(sha(wasm), slow_load, warm=True)))
    prefetch.start()
    assert entered.wait(10)
    task = threading.Thread(target=lambda: results.update(
        task=runtime.prepare(sha(wasm), lambda: loads.append("task") or wasm)))
    task.start()
    task.join(0.2)
    assert task.is_alive(), "the task must wait for the load in flight"
    release.set()
    prefetch.join(10)
    task.join(10)
    assert loads == ["prefetch"]
    assert results["task"] is results["prefetch"]


def test_when_the_load_in_flight_fails_the_waiting_call_loads_the_module_itself() -> None:
    runtime = Runtime()
    wasm = variant(modules.ECHO)
    entered, release = threading.Event(), threading.Event()

    def failing_load() -> bytes:
        entered.set()
        release.wait(10)
        raise OSError("artifact fetch failed")

    errors: list[Exception] = []

    def prefetch() -> None:
        try:
            runtime.prepare(sha(wasm), failing_load)
        except OSError as exc:
            errors.append(exc)

    first = threading.Thread(target=prefetch)
    first.start()
    assert entered.wait(10)
    results: list[object] = []
    task = threading.Thread(target=lambda: results.append(
        runtime.prepare(sha(wasm), lambda: wasm)))
    task.start()
    release.set()
    first.join(10)
    task.join(10)
    assert len(errors) == 1 and len(results) == 1
    assert list(runtime.cached()) == [sha(wasm)]


def test_an_instance_made_on_another_thread_waits_for_the_running_task() -> None:
    # wasmtime-py passes host-function errors through one global that a failed
    # instantiation reads: the two must never overlap.
    runtime = Runtime()
    slow = runtime.prepare(sha(modules.SLOW), lambda: modules.SLOW)
    other = runtime.prepare(sha(modules.ECHO), lambda: modules.ECHO)
    done: list[str] = []
    task = threading.Thread(target=lambda: done.append(
        runtime.run(slow, b"300", Limits()).output.decode()))
    task.start()
    wait_until(runtime._wasm_lock.locked, timeout=5, interval=0.001, what="the task running")
    warm = threading.Thread(target=lambda: (runtime.warm(other), done.append("warm")))
    warm.start()
    task.join(10)
    warm.join(10)
    assert done == ["300", "warm"]


def test_every_listener_answers_an_announcement_even_when_it_loads_nothing(
        stack: Stack, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    missing = Uploaded("1" * 64, 100, False, keys.loaded_replies("test-answers"))
    listeners = client.publish(keys.UPLOADED_CHANNEL, missing.encode())
    assert listeners >= 2  # the stack's two pool processes at least
    assert Artifacts(client).await_loaded(missing, listeners, timeout=10) == listeners
    assert not client.exists(missing.replies)  # the waiter cleans up
