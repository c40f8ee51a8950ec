"""What every worker node does for the queue each heartbeat, besides running tasks.

kombu's Redis transport pops a message and then records it as unacknowledged
in a second step; a worker killed between the two loses the message. A task
still unclaimed two visibility timeouts after its message went out, while the
queue is empty (so it is not merely waiting its turn), was lost that way: its
job, kept with the record until claimed, is sent again. If the message was
only slow, the worst case is a second run, which at-least-once delivery allows
(the first finish wins).

A caller's backlog moves on when its messages are claimed; if they were lost
or cancelled instead, `release_backlogs` lets the backlog in.
"""

from __future__ import annotations

import logging

import redis
from celery import Celery

from wasmq.broker.clock import now
from wasmq.broker.protocol.messages import JobMessages
from wasmq.broker.protocol.queue import TaskQueue
from wasmq.broker.settings import Settings

log = logging.getLogger("wasmq.node")


def tend_queue(app: Celery, client: redis.Redis) -> None:
    settings: Settings = app.wasmq_settings  # type: ignore[attr-defined]
    tasks = TaskQueue.from_settings(client, settings)
    resend_lost(tasks, JobMessages(app, settings.queue), 2 * settings.visibility_timeout)
    released = tasks.release_backlogs()
    if released:
        log.info("released %d held-back calls whose queued ones were lost", released)


def resend_lost(tasks: TaskQueue, messages: JobMessages, after_s: float) -> int:
    """Send again the messages kombu lost; how many."""
    if tasks.redis.llen(tasks.queue):
        return 0
    lost = tasks.unclaimed(now() - after_s)
    for job in lost:
        log.warning("tid=%s: its message was lost before any worker claimed it; sending again",
                    job.tid)
        tasks.redis.lpush(tasks.queue, messages.encode(job))
        tasks.resent(job.tid)
    return len(lost)
