"""The queue message of a `wasmq.run` task, built here and pushed by our own pipelines.

`Celery.send_task` was the largest single cost of a gateway request (a quarter
of its CPU in py-spy): producer pool, retry wrapper, signals, a repr of the
arguments, kombu's envelope, then its own round trip to Redis. The message
built here is the same one: Celery's protocol-2 headers from
`AMQP.as_task_v2`, the body serialized by kombu, in the envelope kombu's Redis
transport expects (`Channel.prepare_message` and `_inplace_augment_message`;
tests/test_jobs.py compares the two field by field). Returned as bytes, it is
LPUSHed by the same Lua script that creates the task record, so a record and
its message exist together or not at all.
"""

from __future__ import annotations

import base64
import json
import uuid

from celery import Celery
from celery.utils.nodenames import anon_nodename
from kombu.serialization import dumps as serialize

from wasmq.broker.celery_app import RUN_TASK


class JobMessages:
    def __init__(self, app: Celery, queue: str) -> None:
        self.app = app
        self.queue = queue  # kombu's key for priority 0 is the queue's name
        self.origin = anon_nodename()  # what send_task would work out for every message

    def encode(self, job: dict) -> bytes:
        tid = job["tid"]
        task = self.app.amqp.as_task_v2(
            tid, RUN_TASK, args=[job], kwargs={},
            # Flower shows these; a repr of the input would cost time and leak data.
            argsrepr=f"[{{'tid': {tid!r}, 'sha256': {job.get('sha256')!r}}}]",
            kwargsrepr="{}", ignore_result=True, origin=self.origin)
        content_type, encoding, body = serialize(task.body, serializer="msgpack")
        properties = {**task.properties, "delivery_mode": 2,
                      "delivery_info": {"exchange": "", "routing_key": self.queue},
                      "priority": 0, "body_encoding": "base64",
                      "delivery_tag": str(uuid.uuid4())}
        return json.dumps({"body": base64.b64encode(body).decode(),
                           "content-encoding": encoding, "content-type": content_type,
                           "headers": task.headers, "properties": properties}).encode()
