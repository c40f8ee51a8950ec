"""The queue message the gateway pushes itself is the one Celery and kombu would send."""

from __future__ import annotations

import base64
import json

import pytest
import redis
from kombu.serialization import loads

from wasmq.broker.celery_app import RUN_BATCH, RUN_TASK, make_celery
from wasmq.broker.protocol.messages import Job, JobMessages
from wasmq.broker.settings import Settings

pytestmark = pytest.mark.fast

JOB = Job(tid="wasmqt-0123", sha256="ab" * 32, data=b"\x00bytes\xff", limits=None,
          caller="addr:127.0.0.1")


def decoded(raw: bytes) -> dict:
    message = json.loads(raw)
    body = base64.b64decode(message["body"])
    message["body"] = loads(body, message["content-type"], message["content-encoding"],
                            accept=["application/x-msgpack"])
    return message


OTHER = Job(tid="wasmqt-4567", sha256="ab" * 32, data=None, limits={"timeout_s": 2.0},
            caller="addr:127.0.0.1")


@pytest.mark.parametrize("batch", [False, True], ids=["one call", "a batch"])
def test_the_message_matches_what_send_task_puts_on_the_queue(redis_url: str,
                                                              batch: bool) -> None:
    queue = "test-jobs-format"
    app = make_celery(Settings(redis_url=redis_url, queue=queue))
    client = redis.Redis.from_url(redis_url)
    messages = JobMessages(app, queue)
    try:
        if batch:
            app.send_task(RUN_BATCH, args=[[JOB.to_dict(), OTHER.to_dict()]], queue=queue,
                          task_id=JOB.tid)
            ours = decoded(messages.encode_batch([JOB, OTHER]))
        else:
            app.send_task(RUN_TASK, args=[JOB.to_dict()], queue=queue, task_id=JOB.tid)
            ours = decoded(messages.encode(JOB))
        theirs = decoded(client.rpop(queue))
    finally:
        client.delete(queue)
        app.close()
    assert ours.keys() == theirs.keys()
    assert ours["body"] == theirs["body"]
    assert ours["headers"].keys() == theirs["headers"].keys()
    varying = {"argsrepr", "origin", "ignore_result"}
    assert {k: v for k, v in ours["headers"].items() if k not in varying} == \
        {k: v for k, v in theirs["headers"].items() if k not in varying}
    assert ours["headers"]["ignore_result"] is True
    assert ours["properties"].keys() == theirs["properties"].keys()
    varying = {"delivery_tag", "reply_to"}
    assert {k: v for k, v in ours["properties"].items() if k not in varying} == \
        {k: v for k, v in theirs["properties"].items() if k not in varying}


def test_every_message_gets_its_own_delivery_tag(redis_url: str) -> None:
    jobs = JobMessages(make_celery(Settings(redis_url=redis_url)), "q")
    tags = {decoded(jobs.encode(JOB))["properties"]["delivery_tag"] for _ in range(3)}
    assert len(tags) == 3
