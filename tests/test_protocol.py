"""The queue protocol's scripts against a real Redis: each step, each refusal, each guard."""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import replace
from pathlib import Path

import msgpack
import pytest

from tests.queue_bench import Bench, bench_fixture  # noqa: F401 - the fixture
from tests.support import wait_until
from wasmq.api.waiter import parse_wakeups, unpack_shipped
from wasmq.broker import keys, metrics
from wasmq.broker.causes import Cause
from wasmq.broker.celery_app import make_celery
from wasmq.broker.protocol import queue, recovery
from wasmq.broker.protocol.calls import Calls, priority
from wasmq.broker.protocol.queue import Admitted, Finished, RateCounter, Refusal
from wasmq.broker.protocol.record import Status
from wasmq.broker.settings import Settings

pytestmark = pytest.mark.fast
SCRIPTS = sorted(Path(queue.__file__).parent.glob("*.lua"))


def _named(header: str, kind: str) -> int:
    """How many KEYS or ARGV a header names: as `KEYS[n]` lines, or as a dramatiq-style
    `keys=[a, b, ...]` list (a trailing `name...` names every one after it)."""
    text = "\n".join(line.removeprefix("--").strip() for line in header.splitlines())
    listed = re.search(rf"^{'keys' if kind == 'KEYS' else 'args'}=\[(.*?)\]", text, re.M | re.S)
    if listed:
        names = [n.strip() for n in listed.group(1).split(",") if n.strip()]
        return 10**6 if names and names[-1].endswith("...") else len(names)
    indexed = [int(i) for i in re.findall(rf"{kind}\[(\d+)\]", header)]
    return max(indexed, default=0)


def test_every_script_names_each_key_and_argument_it_uses_in_its_header() -> None:
    for path in SCRIPTS:
        text = path.read_text()
        header = "\n".join(line for line in text.splitlines() if line.startswith("--"))
        body = "\n".join(line for line in text.splitlines() if not line.startswith("--"))
        for kind in ("KEYS", "ARGV"):
            used = [int(i) for i in re.findall(rf"{kind}\[(\d+)\]", body)]
            assert max(used, default=0) <= _named(header, kind), \
                f"{path.name}: {kind}[{max(used)}] is not named in its header"


def test_no_script_builds_a_key_name_every_key_comes_through_keys() -> None:
    for path in SCRIPTS:
        assert not re.findall(r"'wasmq:", path.read_text()), f"{path.name} builds a key name"


def test_wasmq_reaches_into_no_underscore_name_or_key_name_of_celery_or_kombu() -> None:
    """Celery's and kombu's public API only: an upgrade that renames an internal must
    not stop a worker (`celery` and `kombu` are pinned below their next minor release)."""
    root = Path(queue.__file__).parents[2]
    sources = [p for d in ("api", "broker", "workers", "wasmq", "toolchain")
               for p in (root / d).rglob("*.py")]
    private = re.compile(r"\b(?:celery|kombu|billiard)\.[\w.]*\b_[a-z]\w*")
    kombu_keys = re.compile(r"[\"'](?:unacked|unacked_index|unacked_mutex)[\"']|_kombu\.binding")
    for path in sources:
        text = path.read_text()
        assert not private.search(text), f"{path}: {private.search(text).group(0)}"
        assert not kombu_keys.search(text), f"{path} names one of kombu's keys"
        for line in text.splitlines():
            if re.match(r"\s*class \w+\((?:[\w.]*\.)?(?:Task|Request|Consumer|Channel|"
                        r"Transport|Celery|StartStopStep|Step)\)", line):
                raise AssertionError(f"{path}: subclasses a Celery or kombu class: {line}")


def test_every_failure_cause_has_a_description_and_a_metric() -> None:
    for cause in Cause:
        assert cause.description.strip(), cause
        assert metrics.counter(Status.FAILED, cause) == f"failed:{cause.value}"
    assert metrics.counter(Status.SUCCEEDED, None) == "succeeded"


def _claim(bench: Bench, task, node: str = "node-1", retries: int = 0):
    return bench.tasks.claim([task.job], node, retries)[0]


def test_a_task_is_queued_claimed_and_finished_once(bench: Bench) -> None:
    task = bench.new()
    assert bench.submit(task) == Admitted(0)
    assert bench.client.zscore(keys.queued(bench.queue), task.job.tid) is not None
    assert bench.tasks.get(task.job.tid).status == Status.QUEUED
    assert _claim(bench, task).state == "run"
    record = bench.tasks.get(task.job.tid)
    assert (record.status, record.node, record.attempts) == (Status.RUNNING, "node-1", 1)
    assert bench.client.sismember(keys.running("node-1"), task.job.tid)
    assert bench.client.zscore(keys.queued(bench.queue), task.job.tid) is None
    assert bench.tasks.finish([(task.job, Finished(Status.SUCCEEDED, result=b"first"))],
                              "node-1") == [True]
    # A second run (its node taken for dead while only paused) changes nothing.
    assert bench.tasks.finish([(task.job, Finished(Status.SUCCEEDED, result=b"second"))],
                              "node-2") == [False]
    assert bench.tasks.get(task.job.tid).result == b"first"
    assert _claim(bench, task, "node-2").state == "finished"
    assert not bench.client.zscore(keys.inflight(bench.me), task.job.tid)
    assert not bench.client.sismember(keys.running("node-1"), task.job.tid)
    assert b"job" not in bench.client.hgetall(keys.task(task.job.tid))  # input dropped


def test_submitting_the_same_task_twice_creates_it_once(bench: Bench) -> None:
    """As when redis-py resends the script after a dropped connection lost its answer."""
    task = bench.new()
    assert isinstance(bench.submit(task), Admitted)
    assert isinstance(bench.submit(task), Admitted)
    assert bench.client.zcard(keys.inflight(bench.me)) == 1


def test_a_changed_or_deleted_function_refuses_the_call_with_the_function_now(
        bench: Bench) -> None:
    refusal = bench.submit(bench.new(expected=b"an older record"))
    assert isinstance(refusal, Refusal) and refusal.stale
    assert refusal.function == b"function record"
    bench.client.delete(bench.function_key)
    task = bench.new()
    refusal = bench.submit(task)
    assert isinstance(refusal, Refusal) and refusal.stale and refusal.function is None
    assert bench.tasks.get(task.job.tid) is None


def test_rate_rules_count_calls_and_bytes_and_refuse_past_their_allowance(
        bench: Bench) -> None:
    key = f"wasmq:ratelimit:test-{uuid.uuid4().hex}"
    counters = (RateCounter(key=key, window_s=30, allowance=100),)
    for cost, refused in ((40, False), (40, False), (40, True)):
        answer = bench.submit(bench.new(costs=(cost,)), counters=counters)
        assert isinstance(answer, Refusal) == refused
    assert answer.rule == 0 and 1 <= answer.retry_after <= 30
    assert bench.client.zcard(keys.inflight(bench.me)) == 2  # the refused one is not created


def test_a_caller_at_its_cap_of_tasks_in_flight_is_refused_until_one_finishes(
        bench: Bench) -> None:
    tasks = [bench.new() for _ in range(3)]
    assert [bench.submit(t, max_inflight=3) for t in tasks] == \
        [Admitted(0), Admitted(1), Admitted(2)]  # each says how many were ahead of it
    refusal = bench.submit(bench.new(), max_inflight=3)
    assert isinstance(refusal, Refusal) and refusal.inflight == 3
    other = bench.new(bench.me + ":other")
    assert bench.submit(other, max_inflight=3) == Admitted(0)  # another caller's own cap
    bench.client.delete(keys.inflight(bench.me + ":other"))
    _claim(bench, tasks[0])
    bench.tasks.finish([(tasks[0].job, Finished(Status.SUCCEEDED, result=b""))], "node-1")
    assert isinstance(bench.submit(bench.new(), max_inflight=3), Admitted)


def test_a_task_whose_record_outlived_its_ttl_does_not_hold_a_place_in_flight(
        bench: Bench) -> None:
    first = bench.new()
    bench.submit(first, max_inflight=1)
    bench.client.zadd(keys.inflight(bench.me), {first.job.tid: 1.0})  # created long ago
    assert isinstance(bench.submit(bench.new(), max_inflight=1), Admitted)


def test_a_caller_s_priority_falls_as_its_calls_in_flight_double() -> None:
    assert [priority(n) for n in (0, 1, 2, 3, 4, 7, 8, 100, 10**6)] == \
        [0, 1, 2, 2, 3, 3, 4, 7, 9]


def test_a_message_older_than_its_call_s_attempt_is_stale_and_runs_nothing(
        bench: Bench) -> None:
    task = bench.new()
    bench.submit(task)
    assert _claim(bench, task, "dead-node").state == "run"
    taken = bench.tasks.take("dead-node", "live-node", [task.job.tid])
    assert [(t.job.tid, t.attempt, t.exhausted) for t in taken] == [(task.job.tid, 2, False)]
    assert taken[0].job.data == b"in"  # the job kept with the record, input included
    assert bench.tasks.handed("live-node", taken) == 1
    record = bench.tasks.get(task.job.tid)
    assert (record.status, record.attempts) == (Status.QUEUED, 2)
    assert not bench.client.smembers(keys.running("dead-node"))
    assert not bench.client.smembers(keys.running("live-node"))
    assert _claim(bench, task, "other", retries=0).state == "stale"  # kombu's late copy
    assert _claim(bench, task, "other", retries=1).state == "run"  # the one sent again


def test_taking_over_skips_calls_finished_or_run_by_another_node(bench: Bench) -> None:
    done, moved = bench.new(), bench.new()
    for task in (done, moved):
        bench.submit(task)
        _claim(bench, task, "dead-node")
    bench.tasks.finish([(done.job, Finished(Status.SUCCEEDED, result=b""))], "elsewhere")
    _claim(bench, moved, "node-b")  # Celery retried it on another node meanwhile
    bench.client.sadd(keys.running("dead-node"), done.job.tid, moved.job.tid)
    assert bench.tasks.take("dead-node", "live", [done.job.tid, moved.job.tid]) == []
    assert not bench.client.smembers(keys.running("dead-node"))


def test_a_call_taken_over_too_often_is_exhausted_not_sent_again(bench: Bench) -> None:
    task = bench.new()
    bench.submit(task)
    node = "n0"
    for attempt in range(1, 3):
        _claim(bench, task, node, retries=attempt - 1)
        taken = bench.tasks.take(node, f"n{attempt}", [task.job.tid])
        node = f"n{attempt}"
        assert taken[0].attempt == attempt + 1 and not taken[0].exhausted
        bench.tasks.handed(node, taken)
    _claim(bench, task, node, retries=2)
    assert bench.tasks.take(node, "n9", [task.job.tid])[0].exhausted


def test_a_dead_node_is_named_only_by_a_node_that_beats_steadily(bench: Bench) -> None:
    client = bench.client
    dead, live = f"dead-{bench.queue}", f"live-{bench.queue}"
    try:
        client.zadd(keys.NODES, {dead: time.time() - recovery.STALE_S - 1})
        script = bench.tasks.scripts["nodes"]
        args = [time.time(), recovery.STALE_S, recovery.MAX_GAP_S, bench.queue, 16]
        reply = script(keys=[keys.NODES, keys.NODES_BEATING_SINCE, keys.NODES_QUEUES],
                       args=["beat", live, *args])
        assert reply == [1]  # new, and not beating long enough to judge
        client.hset(keys.NODES_BEATING_SINCE, live, time.time() - recovery.STALE_S - 0.5)
        args[0] = time.time()
        reply = script(keys=[keys.NODES, keys.NODES_BEATING_SINCE, keys.NODES_QUEUES],
                       args=["beat", live, *args])
        assert reply[0] == 0 and dead.encode() in reply[1:]
    finally:
        client.zrem(keys.NODES, dead, live)
        client.hdel(keys.NODES_BEATING_SINCE, dead, live)
        client.hdel(keys.NODES_QUEUES, dead, live)


def test_cancelling_finishes_a_queued_call_only(bench: Bench) -> None:
    queued, running = bench.new(), bench.new()
    for task in (queued, running):
        bench.submit(task)
    _claim(bench, running)
    cancel = Finished(Status.FAILED, message="cancelled", cause=Cause.CANCELLED)
    assert bench.tasks.finish([(queued.job, cancel), (running.job, cancel)], "",
                              only_queued=True) == [True, False]
    assert bench.tasks.get(running.job.tid).status == Status.RUNNING


def test_a_failure_is_stored_and_counted_with_its_cause(bench: Bench) -> None:
    task = bench.new()
    bench.submit(task)
    before = metrics.read(bench.client, bench.queue).failed.get("trap", 0)
    bench.tasks.finish([(task.job, Finished(Status.FAILED, message="boom", cause=Cause.TRAP))],
                       "n")
    record = bench.tasks.get(task.job.tid)
    assert (record.status, record.cause, record.message) == (Status.FAILED, "trap", "boom")
    assert metrics.read(bench.client, bench.queue).failed["trap"] == before + 1


def test_a_small_finished_record_travels_with_its_wakeup_and_a_large_one_does_not(
        bench: Bench) -> None:
    subscription = bench.client.pubsub(ignore_subscribe_messages=True)
    subscription.subscribe(keys.DONE_CHANNEL)
    shipped, small = {}, 16 * 1024  # finish.lua's SMALL
    for name, result in (("small", b"\x00[55]\xff"), ("large", b"x" * (small + 1))):
        task = bench.new()
        bench.submit(task)
        _claim(bench, task)
        bench.tasks.finish([(task.job, Finished(Status.SUCCEEDED, result=result, stdout="out",
                                                exec_ms=0.2))], "node-1")
        while True:
            message = wait_until(lambda: subscription.get_message(timeout=1), what="wake-up")
            [(woken, flat)] = parse_wakeups(message["data"])
            if woken == task.job.tid:
                break
        record = unpack_shipped(flat)
        shipped[name] = record
        if record is not None:
            assert record == bench.tasks.get(task.job.tid)
    subscription.close()
    assert shipped["small"] is not None and shipped["small"].result == b"\x00[55]\xff"
    assert shipped["large"] is None  # the waiter reads it back instead


def test_a_shipped_record_that_cannot_be_read_or_is_unfinished_is_not_used() -> None:
    assert parse_wakeups(b"\xc1 not msgpack") == [("", None)]  # every waiter looks again
    assert parse_wakeups(msgpack.packb([[b"t", False]])) == [("t", None)]
    assert unpack_shipped(None) is None
    assert unpack_shipped([b"tid", b"t", b"status"]) is None  # odd list
    running = [b"tid", b"t", b"cfid", b"c", b"status", b"running"]
    assert unpack_shipped(running) is None  # the waiter reads the record instead
    done = [b"tid", b"t", b"cfid", b"c", b"status", b"succeeded", b"result", b"1"]
    assert unpack_shipped(done).result == b"1"


def test_a_batch_is_created_claimed_and_finished_call_by_call_with_one_wakeup(
        bench: Bench) -> None:
    tasks = [bench.new(), bench.new(data=b"big"), bench.new()]
    answers = bench.tasks.submit(tasks, bench.admission())
    assert answers == [Admitted(0), Admitted(1), Admitted(2)]
    subscription = bench.client.pubsub(ignore_subscribe_messages=True)
    subscription.subscribe(keys.DONE_CHANNEL)
    jobs = [t.job for t in tasks]
    bare = [jobs[0], replace(jobs[1], data=None), jobs[2]]  # the second came without input
    claims = bench.tasks.claim(bare, "node-1", 0)
    assert [c.state for c in claims] == ["run"] * 3
    assert claims[1].job.data == b"big" and claims[0].job is None
    stored = bench.tasks.finish([(j, Finished(Status.SUCCEEDED, result=j.tid.encode()))
                                 for j in jobs], "node-1")
    assert stored == [True] * 3
    message = wait_until(lambda: subscription.get_message(timeout=1), what="wake-up")
    subscription.close()
    assert sorted(t for t, _ in parse_wakeups(message["data"])) == sorted(j.tid for j in jobs)


def test_calls_to_a_queue_no_node_ever_declared_wait_in_it_for_its_first_node(
        redis_url: str) -> None:
    """Calls go with declare=[]: a queue no node has consumed yet (scaling from zero)
    was never declared, so its calls must reach its list by name (Celery's direct
    routing: the default exchange), where its first node and `celery purge` find them."""
    url = redis_url.rsplit("/", 1)[0] + "/2"
    app = make_celery(Settings(redis_url=url, queue=f"proto-default-{uuid.uuid4().hex[:8]}"))
    name = f"late-{uuid.uuid4().hex[:8]}"
    calls = Calls(app, inline_bytes=1024)
    for _ in range(2):
        calls.send([queue.Job(tid=f"t-{uuid.uuid4().hex}", sha256="s", data=b"in",
                              caller="c", queue=name)])
    with app.connection_for_write() as conn:  # as `celery purge -Q <name>` does
        held = app.amqp.queues[name].bind(conn.default_channel).purge()
    assert held == 2
