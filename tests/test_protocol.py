"""The queue protocol's scripts against a real Redis: each step, each refusal, each guard."""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

import msgpack
import pytest

from tests.queue_bench import Bench, bench_fixture  # noqa: F401 - the fixture
from tests.support import wait_until
from wasmq.broker import keys, metrics
from wasmq.broker.causes import Cause
from wasmq.broker.protocol import lua
from wasmq.broker.protocol.queue import STALL_S, Admission, Finished, RateCounter
from wasmq.broker.protocol.record import Status
from wasmq.broker.protocol.wakeup import SHIP_LIMIT, parse_wakeup, parse_wakeups, unpack_shipped

pytestmark = pytest.mark.fast
SCRIPTS = sorted(Path(lua.__file__).parent.glob("*.lua"))


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


def test_the_key_names_the_scripts_build_are_those_of_broker_keys() -> None:
    built = {"wasmq:task:": keys.task("x")[:-1], "wasmq:inqueue:": keys.queued("x")[:-1],
             "wasmq:backlog:": keys.backlog("x")[:-1], "wasmq:input:": keys.task_input("x")[:-1]}
    for path in SCRIPTS:
        for prefix in re.findall(r"'(wasmq:[a-z]+:)'", path.read_text()):
            assert built[prefix] == prefix, f"{path.name} builds {prefix}"


def test_the_finish_script_s_histogram_buckets_are_those_of_the_metrics() -> None:
    text = lua.source("finish")
    listed = re.search(r"local buckets = \{(.*?)\}", text, re.S).group(1)
    assert tuple(re.findall(r"'([^']+)'", listed)) == metrics.BUCKET_LABELS


def test_every_failure_cause_has_a_description_and_a_metric() -> None:
    for cause in Cause:
        assert cause.description.strip(), cause
        assert metrics.counter(Status.FAILED, cause) == f"failed:{cause.value}"
    assert metrics.counter(Status.SUCCEEDED, None) == "succeeded"


def test_a_task_is_queued_claimed_and_finished_once(bench: Bench) -> None:
    task = bench.new()
    assert bench.tasks.enqueue(task, bench.admission()) is None
    assert bench.queued() == [task.message]
    assert bench.tasks.get(task.job.tid).status == Status.QUEUED
    claim = bench.tasks.claim(task.job, "node-1")
    assert claim.state == "running"
    record = bench.tasks.get(task.job.tid)
    assert (record.status, record.node, record.attempts) == (Status.RUNNING, "node-1", 1)
    assert b"job" not in bench.client.hgetall(keys.task(task.job.tid))  # nothing to resend
    assert bench.tasks.finish(task.job, Finished(Status.SUCCEEDED, result=b"first"))
    # A redelivered run (its node presumed dead) finishing later changes nothing.
    assert not bench.tasks.finish(task.job, Finished(Status.SUCCEEDED, result=b"second"))
    assert bench.tasks.get(task.job.tid).result == b"first"
    assert bench.tasks.claim(task.job, "node-2").state == "succeeded"
    assert not bench.client.zscore(keys.inflight(bench.me), task.job.tid)


def test_enqueueing_the_same_task_twice_queues_it_once(bench: Bench) -> None:
    """As when redis-py resends the script after a dropped connection lost its answer."""
    task = bench.new()
    assert bench.tasks.enqueue(task, bench.admission()) is None
    assert bench.tasks.enqueue(task, bench.admission()) is None
    assert bench.queued() == [task.message]


def test_a_changed_or_deleted_function_refuses_the_call_with_the_function_now(
        bench: Bench) -> None:
    task = bench.new()
    stale = Admission(function_key=bench.function_key, expected=b"an older record",
                      caller="addr:test")
    refusal = bench.tasks.enqueue(task, stale)
    assert refusal is not None and refusal.stale and refusal.function == b"function record"
    bench.client.delete(bench.function_key)
    refusal = bench.tasks.enqueue(task, bench.admission())
    assert refusal is not None and refusal.stale and refusal.function is None
    assert bench.tasks.get(task.job.tid) is None and bench.queued() == []


def test_rate_rules_count_calls_and_bytes_and_refuse_past_their_allowance(
        bench: Bench) -> None:
    key = f"wasmq:ratelimit:test-{uuid.uuid4().hex}"
    for cost, refused in ((40, False), (40, False), (40, True)):
        refusal = bench.tasks.enqueue(bench.new(), bench.admission(
            counters=(RateCounter(key=key, window_s=30, allowance=100, cost=cost),)))
        assert (refusal is not None) == refused
    assert refusal.rule == 0 and 1 <= refusal.retry_after <= 30
    assert bench.client.zcard(keys.inflight(bench.me)) == 2  # the refused one is not created


def test_a_caller_at_its_cap_of_tasks_in_flight_is_refused_until_one_finishes(
        bench: Bench) -> None:
    tasks = [bench.new() for _ in range(3)]
    for task in tasks:
        assert bench.tasks.enqueue(task, bench.admission(max_inflight=3)) is None
    refusal = bench.tasks.enqueue(bench.new(), bench.admission(max_inflight=3))
    assert refusal is not None and refusal.inflight == 3
    other = bench.tasks.enqueue(bench.new(bench.me + ":other"), bench.admission(bench.me + ":other",
                                                                          max_inflight=3))
    assert other is None  # another caller has its own cap
    bench.tasks.claim(tasks[0].job, "n")
    bench.tasks.finish(tasks[0].job, Finished(Status.SUCCEEDED, result=b""))
    assert bench.tasks.enqueue(bench.new(), bench.admission(max_inflight=3)) is None


def test_an_expired_task_does_not_hold_a_place_in_flight_forever(bench: Bench) -> None:
    first = bench.new()
    bench.tasks.enqueue(first, bench.admission(max_inflight=1))
    bench.client.delete(keys.task(first.job.tid))  # its record expired unseen
    assert bench.tasks.enqueue(bench.new(), bench.admission(max_inflight=1)) is None


def test_a_caller_s_calls_beyond_its_share_wait_in_its_backlog_not_in_the_queue(
        bench: Bench) -> None:
    mine = [bench.new(bench.me + ":flood") for _ in range(4)]
    for task in mine:
        bench.tasks.enqueue(task, bench.admission(bench.me + ":flood"))
    theirs = bench.new(bench.me + ":polite")
    bench.tasks.enqueue(theirs, bench.admission(bench.me + ":polite"))
    # The queue (BRPOP takes from the right) holds one of each caller's calls.
    assert bench.queued() == [theirs.message, mine[0].message]
    assert bench.client.llen(keys.backlog(bench.me + ":flood")) == 3
    for i, task in enumerate(mine):  # each claim lets the next held-back call in
        bench.client.lrem(bench.tasks.queue, 1, task.message)  # what BRPOP does
        assert bench.tasks.claim(task.job, "n").state == "running"
        expected = [mine[i + 1].message] if i + 1 < len(mine) else []
        assert [m for m in bench.queued() if m != theirs.message] == expected
    assert not bench.client.sismember(keys.BACKLOGS, bench.me + ":flood")


def test_a_held_back_call_is_pending_for_a_purge_but_never_resent_as_lost(
        bench: Bench) -> None:
    first, second = bench.new(), bench.new()
    bench.tasks.enqueue(first, bench.admission())
    bench.tasks.enqueue(second, bench.admission())  # held back: the caller's share is 1
    assert bench.client.zscore(keys.PENDING, second.job.tid) is not None
    lost = [job.tid for job in bench.tasks.unclaimed(older_than=time.time() + 1, limit=10**6)]
    assert first.job.tid in lost and second.job.tid not in lost


def test_a_backlog_whose_queued_call_was_lost_is_released_by_the_sweep(bench: Bench) -> None:
    first, second = bench.new(bench.me + ":lost"), bench.new(bench.me + ":lost")
    bench.tasks.enqueue(first, bench.admission(bench.me + ":lost"))
    bench.tasks.enqueue(second, bench.admission(bench.me + ":lost"))
    bench.client.delete(bench.tasks.queue, keys.task(first.job.tid))  # lost and expired
    assert bench.tasks.release_backlogs() >= 1  # every caller's (one queue per installation)
    assert second.message in bench.queued()
    assert bench.client.zscore(keys.PENDING, second.job.tid)  # resendable if lost again


def test_a_stranded_message_stops_holding_its_caller_s_place_after_the_stall(
        bench: Bench) -> None:
    """Its task still says queued (its message lost inside kombu, say): the sweep leaves
    it alone at first, then lets the caller's next call in, so the backlog moves."""
    caller = bench.me + ":stranded"
    first, second = bench.new(caller), bench.new(caller)
    bench.tasks.enqueue(first, bench.admission(caller))
    bench.tasks.enqueue(second, bench.admission(caller))
    bench.client.delete(bench.tasks.queue)  # the first message is gone, its task queued
    bench.tasks.release_backlogs()
    assert bench.queued() == []  # still holding its place: it may only be slow
    bench.client.zadd(keys.queued(caller), {first.job.tid: time.time() - STALL_S - 1})
    bench.tasks.release_backlogs()
    assert bench.queued() == [second.message]


def test_a_task_whose_runs_killed_their_worker_too_often_is_not_run_again(
        bench: Bench) -> None:
    task = bench.new()
    bench.tasks.enqueue(task, bench.admission())
    for _ in range(3):
        assert bench.tasks.claim(task.job, "n").state == "running"
    bench.client.hset(keys.task(task.job.tid), "lost", "signal 9 (SIGKILL)")
    claim = bench.tasks.claim(task.job, "n")
    assert (claim.state, claim.attempts, claim.lost) == ("exhausted", 3, "signal 9 (SIGKILL)")
    assert bench.tasks.get(task.job.tid).attempts == 3


def test_a_claim_sent_ahead_marks_the_task_running_and_its_answer_comes_later(
        bench: Bench) -> None:
    task = bench.new()
    bench.tasks.enqueue(task, bench.admission())
    bench.tasks.load_scripts()
    sent = bench.tasks.send_claim(task.job, "node-1")
    wait_until(lambda: bench.client.hget(keys.task(task.job.tid), "status") == b"running",
               what="running")
    assert sent.answer().state == "running"
    bench.tasks.finish(task.job, Finished(Status.SUCCEEDED, result=b"1"))
    assert bench.tasks.send_claim(task.job, "node-2").answer().state == "succeeded"
    assert bench.tasks.get(task.job.tid).node == "node-1"
    bench.client.script_flush()  # as after a Redis restart: the claim is made the slow way
    missing = bench.new()
    assert bench.tasks.send_claim(missing.job, "node-1").answer().state == "missing"


def test_a_failure_is_stored_and_counted_with_its_cause(bench: Bench) -> None:
    task = bench.new()
    bench.tasks.enqueue(task, bench.admission())
    before = metrics.read(bench.client, bench.tasks.queue).failed.get("trap", 0)
    bench.tasks.finish(task.job, Finished(Status.FAILED, message="boom", cause=Cause.TRAP))
    record = bench.tasks.get(task.job.tid)
    assert (record.status, record.cause, record.message) == (Status.FAILED, "trap", "boom")
    assert metrics.read(bench.client, bench.tasks.queue).failed["trap"] == before + 1


def test_a_small_finished_record_travels_with_its_wakeup_and_a_large_one_does_not(
        bench: Bench) -> None:
    subscription = bench.client.pubsub(ignore_subscribe_messages=True)
    subscription.subscribe(keys.DONE_CHANNEL)
    shipped = {}
    for name, result in (("small", b"\x00[55]\xff"), ("large", b"x" * (SHIP_LIMIT + 1))):
        task = bench.new()
        bench.tasks.enqueue(task, bench.admission())
        bench.tasks.claim(task.job, "node-1")
        bench.tasks.finish(task.job, Finished(Status.SUCCEEDED, result=result, stdout="out",
                                              exec_ms=0.2))
        while True:
            message = wait_until(lambda: subscription.get_message(timeout=1), what="wake-up")
            woken, packed = parse_wakeup(message["data"])
            if woken == task.job.tid:
                break
        record = unpack_shipped(packed)
        shipped[name] = record
        if record is not None:
            assert record == bench.tasks.get(task.job.tid)
    subscription.close()
    assert shipped["small"] is not None and shipped["small"].result == b"\x00[55]\xff"
    assert shipped["large"] is None  # the waiter reads it back instead


def test_a_shipped_record_that_cannot_be_read_or_is_unfinished_is_not_used() -> None:
    assert unpack_shipped(b"") is None
    assert unpack_shipped(b"\xc1 not msgpack") is None
    assert unpack_shipped(msgpack.packb([b"tid", b"t", b"status"])) is None  # odd list
    running = msgpack.packb([b"tid", b"t", b"cfid", b"c", b"status", b"running"])
    assert unpack_shipped(running) is None  # the waiter reads the record instead
    done = msgpack.packb([b"tid", b"t", b"cfid", b"c", b"status", b"succeeded", b"result", b"1"])
    assert unpack_shipped(done).result == b"1"


# -- batches (api/batcher.py, workers/batch.py) -------------------------------------------

def _enqueue_batch(bench: Bench, tasks: list, counters: tuple = (), costs: list | None = None):
    return bench.tasks.enqueue_batch(
        tasks, [bench.stored] * len(tasks), b"batch message", bench.admission(counters=counters),
        costs or [tuple(c.cost for c in counters)] * len(tasks))


def test_a_batch_is_created_claimed_and_finished_call_by_call_with_one_message_and_wakeup(
        bench: Bench) -> None:
    tasks = [bench.new(), bench.new(data=None), bench.new()]
    bench.client.set(keys.task_input(tasks[1].job.tid), b"by reference")
    before = bench.client.hgetall(keys.METRIC_COUNTS)
    refusals, settled = _enqueue_batch(bench, tasks)
    assert refusals == [None, None, None] and settled
    assert bench.queued() == [b"batch message"]
    assert bench.client.hget(keys.METRIC_COUNTS, "submitted") == \
        str(int(before.get(b"submitted", 0)) + 3).encode()
    assert bench.client.zcard(keys.inflight(bench.me)) == 3
    jobs = [t.job for t in tasks]
    claims = bench.tasks.claim_batch(jobs, "node-1")
    assert [c.state for c in claims] == ["running"] * 3
    assert claims[1].data == b"by reference" and claims[0].data is None
    subscription = bench.client.pubsub(ignore_subscribe_messages=True)
    subscription.subscribe(keys.DONE_CHANNEL)
    wait_until(lambda: subscription.get_message(timeout=0.1) is None or True, what="subscribed")
    done = [(jobs[0], Finished(Status.SUCCEEDED, result=b"a", exec_ms=0.3)),
            (jobs[1], Finished(Status.FAILED, cause=Cause.TRAP, message="trapped")),
            (jobs[2], Finished(Status.SUCCEEDED, result=b"c", exec_ms=0.2))]
    assert bench.tasks.finish_batch(done) == [True, True, True]
    # The first finish wins, call by call.
    assert bench.tasks.finish_batch([(jobs[0], Finished(Status.SUCCEEDED, result=b"again")),
                                     (jobs[2], Finished(Status.SUCCEEDED, result=b"x"))]) == \
        [False, False]
    woken = []
    while len(woken) < 3:
        message = wait_until(lambda: subscription.get_message(timeout=1), what="wake-up")
        woken += parse_wakeups(message["data"])
    subscription.close()
    assert [tid for tid, _ in woken] == [j.tid for j in jobs]
    records = [unpack_shipped(packed) for _, packed in woken]
    assert [r.result for r in records] == [b"a", None, b"c"]
    assert records[1].cause == Cause.TRAP.value and records[1].status == Status.FAILED
    assert bench.tasks.get(jobs[0].tid).result == b"a"
    assert not bench.client.exists(keys.task_input(jobs[1].tid))
    assert bench.client.zcard(keys.inflight(bench.me)) == 0


def test_a_batch_with_a_refused_call_creates_nothing_and_counts_every_call_once(
        bench: Bench) -> None:
    key = f"wasmq:ratelimit:test-{uuid.uuid4().hex}"
    counter = RateCounter(key=key, window_s=30, allowance=100, cost=40)
    tasks = [bench.new(), bench.new(), bench.new()]
    refusals, settled = _enqueue_batch(bench, tasks, (counter,))
    assert not settled and refusals[:2] == [None, None] and refusals[2].rule == 0
    assert bench.client.get(key) == b"120" and bench.queued() == []
    assert not bench.client.exists(keys.task(tasks[0].job.tid))
    # The gateway sends the admitted ones again, uncounted.
    refusals, settled = bench.tasks.enqueue_batch(tasks[:2], [bench.stored] * 2, b"again",
                                                  bench.admission(), [(), ()])
    assert settled and refusals == [None, None] and bench.client.get(key) == b"120"
    assert bench.queued() == [b"again"]


def test_a_batch_against_a_replaced_function_is_refused_with_the_function_now(
        bench: Bench) -> None:
    bench.client.set(bench.function_key, b"replaced")
    refusals, settled = _enqueue_batch(bench, [bench.new(), bench.new()])
    assert settled and all(r.stale and r.function == b"replaced" for r in refusals)
    assert bench.queued() == []


def test_a_batch_beyond_its_caller_s_share_waits_whole_in_the_backlog(bench: Bench) -> None:
    first = bench.new()
    bench.tasks.enqueue(first, bench.admission())
    batch = [bench.new(), bench.new()]
    _enqueue_batch(bench, batch)
    assert bench.queued() == [first.message]  # the share of 1 is taken
    bench.tasks.claim(first.job, "node-1")  # it leaves the queue: the batch goes in
    assert bench.queued() == [b"batch message", first.message]  # (nothing pops it here)
    assert all(bench.client.zscore(keys.PENDING, t.job.tid) for t in batch)
    bench.tasks.claim_batch([t.job for t in batch], "node-1")
    assert not bench.client.zrange(keys.queued(bench.me), 0, -1)


def _claimed_batch(bench: Bench, n: int) -> list:
    tasks = [bench.new() for _ in range(n)]
    _enqueue_batch(bench, tasks)
    bench.client.delete(bench.tasks.queue)  # what BRPOP does
    jobs = [t.job for t in tasks]
    bench.tasks.claim_batch(jobs, "node-1")
    return jobs


def test_a_split_batch_sends_its_unfinished_calls_on_alone_through_its_caller_s_backlog(
        bench: Bench) -> None:
    """Never straight into the queue: sixteen messages there would stand in front of
    every other caller's next call (the flood test's fast call waited 24 s)."""
    jobs = _claimed_batch(bench, 3)
    bench.tasks.finish(jobs[0], Finished(Status.SUCCEEDED, result=b"done"))
    theirs = bench.new(bench.me + ":polite")
    bench.tasks.enqueue(theirs, bench.admission(bench.me + ":polite"))
    parts = [(j, f"alone {j.tid}".encode()) for j in jobs]
    assert bench.tasks.split(parts, "node-1", undo=False) == 2  # the finished one stays
    # The caller's share of one goes into the queue, behind the other caller's call.
    assert bench.queued() == [parts[1][1], theirs.message]
    assert bench.client.lrange(keys.backlog(bench.me), 0, -1) == \
        [jobs[2].tid.encode() + b"\n" + parts[2][1]]
    assert bench.tasks.get(jobs[1].tid).status == Status.RUNNING  # a redelivery's split
    lost = [job.tid for job in bench.tasks.unclaimed(older_than=time.time() + 1, limit=10**6)]
    assert jobs[2].tid not in lost  # held back, not lost
    bench.client.lrem(bench.tasks.queue, 1, parts[1][1])
    assert bench.tasks.claim(jobs[1], "node-2").state == "running"
    assert bench.queued() == [parts[2][1], theirs.message]  # its next one takes its place


def test_a_split_batch_hands_back_the_calls_its_node_claimed_but_did_not_start(
        bench: Bench) -> None:
    jobs = _claimed_batch(bench, 2)
    parts = [(j, f"alone {j.tid}".encode()) for j in jobs]
    assert bench.tasks.split(parts, "node-2", undo=True) == 2  # not its claim: as is
    assert bench.tasks.get(jobs[1].tid).attempts == 1
    assert bench.tasks.split(parts, "node-1", undo=True) == 2
    record = bench.tasks.get(jobs[1].tid)
    assert (record.status, record.attempts) == (Status.QUEUED, 0)
    assert bench.client.hget(keys.task(jobs[1].tid), "job") == jobs[1].packed()


def test_a_batch_redelivered_before_any_claim_goes_on_without_waiting_on_its_own_place(
        bench: Bench) -> None:
    """A batch a dead node had prefetched comes back unclaimed: its message still holds
    its caller's place in the queue, and must give it up as a claim would, or its own
    calls wait in the backlog behind it until release.lua finds the place stale."""
    tasks = [bench.new(), bench.new()]
    _enqueue_batch(bench, tasks)
    bench.client.delete(bench.tasks.queue)  # BRPOP; the node dies; the message comes back
    jobs = [t.job for t in tasks]
    parts = [(j, f"alone {j.tid}".encode()) for j in jobs]
    assert bench.tasks.split(parts, "node-2", undo=False, unclaimed=jobs[0].tid) == 2
    assert bench.queued() == [parts[0][1]]
    assert bench.client.zrange(keys.queued(bench.me), 0, -1) == [jobs[0].tid.encode()]
    assert bench.client.hget(keys.task(jobs[0].tid), "held") is None  # in the queue
