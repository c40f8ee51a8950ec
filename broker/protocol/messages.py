"""The queue message of a `wasmq.run` task, built here and pushed by our own pipelines.

`Celery.send_task` was the largest single cost of a gateway request (a quarter
of its CPU in py-spy): producer pool, retry wrapper, signals, a repr of the
arguments, kombu's envelope, then its own round trip to Redis. The message
built here is the same one: Celery's protocol-2 headers from
`AMQP.as_task_v2`, the body serialized by kombu, in the envelope kombu's Redis
transport expects (`Channel.prepare_message` and `_inplace_augment_message`;
tests/test_jobs.py compares the two field by field). Returned as bytes, it is
queued by enqueue.lua, the script that creates the task record, so a record
and its message exist together or not at all.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import asdict, dataclass

import msgpack
from celery import Celery
from celery.utils.nodenames import anon_nodename
from kombu.serialization import dumps as serialize

from wasmq.broker.celery_app import RUN_BATCH, RUN_TASK


@dataclass(frozen=True)
class Job:
    """What a worker needs to run one call: the message's only argument.

    `data` is the input when it travels inline (None: by reference, handed over
    by the claim); `limits` the function's own limits; `caller` who submitted
    it, for the fair share and the tasks in flight that its claim and finish
    account for."""

    tid: str
    sha256: str
    data: bytes | None
    limits: dict[str, float] | None
    caller: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "Job":
        return cls(tid=raw["tid"], sha256=raw["sha256"], data=raw.get("data"),
                   limits=raw.get("limits"), caller=raw.get("caller", ""))

    def packed(self) -> bytes:
        """The job as kept with its record until claimed, to resend a lost message."""
        return msgpack.packb(self.to_dict(), use_bin_type=True)

    @classmethod
    def unpacked(cls, raw: bytes) -> "Job":
        return cls.from_dict(msgpack.unpackb(raw, raw=False))


class JobMessages:
    def __init__(self, app: Celery, queue: str) -> None:
        self.app = app
        self.queue = queue  # kombu's key for priority 0 is the queue's name
        self.origin = anon_nodename()  # what send_task would work out for every message

    def encode(self, job: Job) -> bytes:
        tid = job.tid
        task = self.app.amqp.as_task_v2(
            tid, RUN_TASK, args=[job.to_dict()], kwargs={},
            # Flower shows these; a repr of the input would cost time and leak data.
            argsrepr=f"[{{'tid': {tid!r}, 'sha256': {job.sha256!r}}}]",
            kwargsrepr="{}", ignore_result=True, origin=self.origin)
        return self._envelope(task)

    def encode_batch(self, jobs: list[Job]) -> bytes:
        """One `wasmq.run_batch` message for calls that travel together; its id is the
        first call's tid (the id the caller's fair share counts)."""
        tids = ", ".join(repr(j.tid) for j in jobs)
        task = self.app.amqp.as_task_v2(
            jobs[0].tid, RUN_BATCH, args=[[j.to_dict() for j in jobs]], kwargs={},
            argsrepr=f"[[{tids}]]", kwargsrepr="{}", ignore_result=True,
            origin=self.origin)
        return self._envelope(task)

    def _envelope(self, task: object) -> bytes:
        content_type, encoding, body = serialize(task.body, serializer="msgpack")
        properties = {**task.properties, "delivery_mode": 2,
                      "delivery_info": {"exchange": "", "routing_key": self.queue},
                      "priority": 0, "body_encoding": "base64",
                      "delivery_tag": str(uuid.uuid4())}
        return json.dumps({"body": base64.b64encode(body).decode(),
                           "content-encoding": encoding, "content-type": content_type,
                           "headers": task.headers, "properties": properties}).encode()
