"""A TaskQueue on a queue of its own against the session's real Redis, for protocol tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import redis

from wasmq.broker import keys
from wasmq.broker.protocol.queue import Admission, Job, NewTask, TaskQueue
from wasmq.broker.protocol.record import TaskRecord, new_tid


@dataclass
class Bench:
    """A TaskQueue, a queue name of its own, and a function record to submit against."""

    tasks: TaskQueue
    client: redis.Redis
    queue: str
    function_key: str
    stored: bytes
    me: str  # this test's caller
    made: list[str] = field(default_factory=list)  # tids, removed after the test

    def admission(self, caller: str = "", **kw: object) -> Admission:
        return Admission(function_key=self.function_key, caller=caller or self.me, **kw)

    def new(self, caller: str = "", data: bytes | None = b"in",
            expected: bytes | None = None, costs: tuple[int, ...] = ()) -> NewTask:
        caller = caller or self.me
        tid = new_tid()
        self.made.append(tid)
        job = Job(tid=tid, sha256="s", data=data, limits=None, caller=caller, queue=self.queue)
        return NewTask(record=TaskRecord(tid=tid, cfid="c", caller=caller, queue=self.queue),
                       job=job, expected=self.stored if expected is None else expected,
                       costs=costs)

    def submit(self, task: NewTask, **kw: object) -> object:
        return self.tasks.submit([task], self.admission(task.job.caller, **kw))[0]


@pytest.fixture(name="bench")
def bench_fixture(redis_url: str) -> Iterator[Bench]:
    # A database of its own (db 2): no worker of the session's reads these.
    client = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/2")
    name = f"proto-{uuid.uuid4().hex[:8]}"
    function_key = keys.function(name)
    client.set(function_key, b"function record")
    made = Bench(TaskQueue(client, ttl=60, max_attempts=3), client, name, function_key,
                 b"function record", f"addr:{name}")
    yield made
    client.delete(function_key, keys.queued(name), keys.inflight(made.me),
                  *(keys.task(t) for t in made.made))
