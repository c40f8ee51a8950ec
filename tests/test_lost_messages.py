"""A message kombu lost (popped by a worker that died before recording it as
unacknowledged) is sent again, so its task still runs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests import modules
from tests.localstack import Stack, start_stack
from tests.support import Api, wait_until
from wasmq.broker import keys
from wasmq.broker.protocol.messages import Job
from wasmq.broker.protocol.queue import Admission, NewTask, TaskQueue
from wasmq.broker.protocol.record import Status, TaskRecord, new_tid
from wasmq.broker.settings import Settings


@pytest.fixture()
def quick_stack(redis_url: str, tmp_path: Path) -> Iterator[Stack]:
    # A 1 s task limit makes the visibility timeout 8 s, so the resend comes in seconds.
    stack = start_stack(tmp_path, redis_url, concurrency=1, WASMQ_TASK_TIMEOUT="1",
                        WASMQ_QUEUE="lost-messages")
    yield stack
    stack.stop()


def test_a_task_whose_message_was_lost_is_sent_again_and_runs(quick_stack: Stack) -> None:
    api = Api(quick_stack.url)
    cfid = api.deploy(modules.ECHO)
    sha = api.http.get(f"{api.url}/functions/{cfid}").json()["sha256"]
    client = redis.Redis.from_url(quick_stack.redis_url)
    # The record and its job exist, as after a submission, but its message went to a
    # queue no worker reads: exactly what a message lost inside kombu leaves behind.
    records = TaskQueue(client, ttl=600, queue="nowhere")
    tid = new_tid()
    job = Job(tid=tid, sha256=sha, data=b"found again", limits={}, caller="addr:lost-test")
    refusal = records.enqueue(
        NewTask(record=TaskRecord(tid=tid, cfid=cfid, caller=job.caller), job=job,
                message=b"lost"),
        Admission(function_key=keys.function(cfid), expected=client.get(keys.function(cfid)),
                  caller=job.caller))
    assert refusal is None
    client.delete("nowhere")
    visibility = Settings(task_timeout=1).visibility_timeout
    record = wait_until(lambda: (r := records.get(tid)) and r.status.finished and r,
                        timeout=2 * visibility + 30, interval=0.5, what="the resent task")
    assert record.status == Status.SUCCEEDED
    assert record.result == b"found again"
    assert "sending again" in quick_stack.worker.output()
