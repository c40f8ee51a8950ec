"""Taking over the calls of a node that died, split a batch, or is stopping.

A node claims a call into its running set and keeps it there until it finishes.
The first live node to see a node dead (nodes.lua) takes its running calls over
(requeue.lua) and sends each again through Celery, attempt bumped, at its caller's
priority: they finish elsewhere about STALE_S + HEARTBEAT_S after the death. The
dead node's unacknowledged messages come back after kombu's visibility timeout and
are skipped as stale. A node only paused finishes its calls all the same when it
resumes: the first answer stored wins. docs/queue.md says what this cannot see.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from functools import cache

import redis

from wasmq.broker import keys
from wasmq.broker.causes import Cause
from wasmq.broker.clock import now
from wasmq.broker.protocol.calls import Calls, priority
from wasmq.broker.protocol.queue import Finished, Taken, TaskQueue
from wasmq.broker.protocol.record import Status

log = logging.getLogger("wasmq.node")

HEARTBEAT_S = 1.0
STALE_S = 4.0  # silent this long: dead (several beats: a loaded host is not dead)
MAX_DEAD_PER_BEAT = 16
MAX_LOST_PER_BEAT = 500
MAX_GAP_S = 2.5 * HEARTBEAT_S  # a node silent this long itself judges no one for STALE_S

@cache
def identity() -> str:
    """Host, pid and a random part, made once per worker start in the main process and
    inherited by its pool processes: a restarted node is never taken for the dead one."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def _nodes(tasks: TaskQueue, *extra: str, args: list) -> list:
    return tasks.scripts["nodes"](keys=[keys.NODES, keys.NODES_BEATING_SINCE,
                                       keys.NODES_QUEUES, keys.NODES_LOST, *extra], args=args)


def beat(tasks: TaskQueue, calls: Calls, node: str, queues: list[str]) -> tuple[bool, int]:
    """Say `node` is alive; take over the calls of nodes that are not. Returns
    (whether this node was unlisted, calls taken over)."""
    reply = _nodes(tasks, args=["beat", node, now(), STALE_S, MAX_GAP_S, ",".join(queues),
                                MAX_DEAD_PER_BEAT])
    taken = 0
    for dead in (d.decode() for d in reply[1:]):
        taken += take_over(tasks, calls, dead, node)
        if _nodes(tasks, keys.running(dead), args=["gone", dead, now(), STALE_S]):
            log.warning("node %s stopped beating for %g s: %d of its calls sent again",
                        dead, STALE_S, taken)
    return bool(reply[0]), taken + resend_lost(tasks, calls, node, queues)


def resend_lost(tasks: TaskQueue, calls: Calls, node: str, queues: list[str]) -> int:
    """kombu takes a message off its list and records it as unacknowledged in a second
    command: a node that dies between the two takes the message with it, and its call
    stays queued. Once a queue a dead node consumed holds no message, every call queued
    in it before that death and claimed by no node has no message anywhere (a copy a
    live node reserved, if any, becomes stale): it is sent again."""
    sent = 0
    for queue, since in zip(queues, tasks.redis.hmget(keys.NODES_LOST, queues), strict=True):
        if since is None or calls.waiting(queue):
            continue
        tids = [t.decode() for t in tasks.redis.zrangebyscore(
            keys.queued(queue), "-inf", float(since), start=0, num=MAX_LOST_PER_BEAT)]
        sent += take_over(tasks, calls, "", node, tids)
        if len(tids) < MAX_LOST_PER_BEAT:
            _nodes(tasks, args=["drained", queue, since])
    if sent:
        log.warning("%d calls whose message was lost with a dead node sent again", sent)
    return sent


def leave(tasks: TaskQueue, calls: Calls, node: str) -> int:
    """A node stopping: calls it still holds go on elsewhere, and it is unlisted."""
    taken = take_over(tasks, calls, node, node)
    _nodes(tasks, args=["leave", node])
    return taken


def take_over(tasks: TaskQueue, calls: Calls, from_node: str, to_node: str,
              tids: list[str] | None = None) -> int:
    """Send again the calls `from_node` runs (all of its running set, or `tids`); with
    `from_node` '', the calls `tids` whose message was lost."""
    if tids is None:
        tids = [t.decode() for t in tasks.redis.smembers(keys.running(from_node))]
    sent: list[Taken] = []
    taken_over = tasks.take(from_node, to_node, tids)
    # At its caller's priority now: a flooder's calls must not go before others'.
    callers = sorted({t.job.caller for t in taken_over})
    pipe = tasks.redis.pipeline(transaction=False)
    for caller in callers:
        pipe.zcard(keys.inflight(caller))
    ahead = dict(zip(callers, pipe.execute(), strict=True))
    for taken in taken_over:
        if taken.exhausted:
            tasks.finish([(taken.job, exhausted(taken.attempt - 1, tasks.max_attempts))],
                         to_node)
            continue
        try:
            calls.send([taken.job], priority=priority(ahead[taken.job.caller] - 1),
                       retries=taken.attempt - 1)
        except Exception:  # noqa: BLE001 - left in this node's running set for the next try
            log.warning("tid=%s: could not be sent again", taken.job.tid, exc_info=True)
            continue
        sent.append(taken)
    try:
        tasks.handed(to_node, sent)
    except redis.RedisError:
        log.warning("could not mark %d calls sent again as queued", len(sent), exc_info=True)
    if sent and from_node != to_node:
        try:
            calls.retried([t.job.tid for t in sent], f"its node {from_node} was lost"
                          if from_node else "its message was lost with a node")
        except Exception:  # noqa: BLE001 - monitors missing an event must not stop recovery
            log.warning("could not tell monitors of %d calls sent again", len(sent))
    return len(sent)


def exhausted(attempts: int, max_attempts: int, last: str = "") -> Finished:
    how = last or "its worker node stopped answering"
    return Finished(Status.FAILED, cause=Cause.WORKER_LOST, message=(
        f"the task's run ended its worker process {attempts} times (last: {how}); "
        f"it is not run again (WASMQ_MAX_ATTEMPTS={max_attempts})"))
