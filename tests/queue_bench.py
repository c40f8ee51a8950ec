"""A TaskQueue on a queue of its own against the session's real Redis, for protocol tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import redis

from wasmq.broker import keys
from wasmq.broker.protocol.messages import Job
from wasmq.broker.protocol.queue import Admission, NewTask, TaskQueue
from wasmq.broker.protocol.record import TaskRecord, new_tid


@dataclass
class Bench:
    """A TaskQueue on a queue of its own, and a function record to submit against."""

    tasks: TaskQueue
    client: redis.Redis
    function_key: str
    stored: bytes
    me: str  # this test's caller
    made: list[str] = field(default_factory=list)  # tids, removed after the test

    def admission(self, caller: str = "", **kw: object) -> Admission:
        return Admission(function_key=self.function_key, expected=self.stored,
                         caller=caller or self.me, **kw)

    def new(self, caller: str = "", data: bytes | None = b"in") -> NewTask:
        caller = caller or self.me
        tid = new_tid()
        self.made.append(tid)
        job = Job(tid=tid, sha256="s", data=data, limits=None, caller=caller)
        return NewTask(record=TaskRecord(tid=tid, cfid="c", caller=caller), job=job,
                       message=f"message of {tid}".encode())

    def queued(self) -> list[bytes]:
        return self.client.lrange(self.tasks.queue, 0, -1)


@pytest.fixture(name="bench")
def bench_fixture(redis_url: str) -> Iterator[Bench]:
    # A database of its own (db 2): the session's workers sweep every caller's backlog
    # into their queue on each heartbeat, and these messages are not real ones.
    client = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/2")
    name = f"proto-{uuid.uuid4().hex[:8]}"
    function_key = keys.function(name)
    client.set(function_key, b"function record")
    made = Bench(TaskQueue(client, ttl=60, queue=name, share=1, max_attempts=3), client,
                 function_key, b"function record", f"addr:{name}")
    yield made
    # Nothing left for other tests' workers to resend or release.
    client.delete(function_key, name, *(keys.task(t) for t in made.made))
    if made.made:
        client.zrem(keys.PENDING, *made.made)
    for caller in [k.decode() for k in client.smembers(keys.BACKLOGS)]:
        if caller.startswith(made.me):
            client.delete(keys.backlog(caller), keys.queued(caller), keys.inflight(caller))
            client.srem(keys.BACKLOGS, caller)
