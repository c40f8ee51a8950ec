"""Cluster-wide task metrics, kept in Redis.

The gateway may run several processes and the workers are other processes on
other hosts, so a per-process prometheus_client registry would each show one
slice. The figures live in Redis instead, updated inside the scripts that
already write a task record (broker/protocol: submit.lua and finish.lua), so
counting adds no round trip; the gateway's `/metrics` reads them back in one pipeline
and exports them through a custom collector (api/metrics.py).

Counting is part of finish.lua's contract: it reads the record's `createdAt`
for the end-to-end latency, counts a failure under its typed cause
(broker/causes.py), and counts a task only the first time it finishes, so
at-least-once delivery (a task run twice after a node died) does not count it
twice. End-to-end latency compares the gateway's
clock (submission) with the worker's (result): keep the hosts' clocks
synchronised.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import redis

from wasmq.broker import keys
from wasmq.broker.causes import Cause
from wasmq.broker.clock import now
from wasmq.broker.protocol.record import Status

# Seconds; exported as the histogram's `le` bounds (+Inf is implied), and finish.lua's
# (queue.py prepends them to it).
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
           30.0, 60.0, 120.0, 300.0)
BUCKET_LABELS = tuple(format(b, "g") for b in BUCKETS)

HEARTBEAT_S = 5.0  # how often a worker node says it is alive
HEARTBEAT_STALE_S = 3 * HEARTBEAT_S  # silent for longer: counted as gone


def counter(status: Status, cause: Cause | None) -> str:
    """The field of the counts hash that finish.lua bumps for a task's first finish."""
    if status == Status.SUCCEEDED:
        return "succeeded"
    return f"failed:{(cause or Cause.MODULE_ERROR).value}"


@dataclass
class Histogram:
    buckets: list[tuple[str, int]]  # cumulative, ending with "+Inf"
    count: int
    sum: float


@dataclass
class Snapshot:
    submitted: int = 0
    succeeded: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    exec_seconds: Histogram = field(default_factory=lambda: _histogram({}))
    e2e_seconds: Histogram = field(default_factory=lambda: _histogram({}))
    queue_depth: int = 0
    running: int = 0  # calls claimed by live nodes and not yet finished
    workers: dict[str, int] = field(default_factory=dict)  # live node -> pool size


def read(client: redis.Redis, queue: str) -> Snapshot:
    """Everything /metrics shows, in two round trips."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.METRIC_COUNTS)
    pipe.hgetall(keys.METRIC_EXEC_SECONDS)
    pipe.hgetall(keys.METRIC_E2E_SECONDS)
    pipe.zcard(keys.queued(queue))
    pipe.zrange(keys.NODES, 0, -1)
    pipe.zrangebyscore(keys.WORKERS_SEEN, now() - HEARTBEAT_STALE_S, "+inf")
    counts, exec_h, e2e_h, depth, nodes, live = pipe.execute()
    pipe = client.pipeline(transaction=False)
    for node in nodes:
        pipe.scard(keys.running(node.decode()))
    running = sum(pipe.execute()) if nodes else 0
    counts = {k.decode(): int(v) for k, v in counts.items()}
    workers = dict(_parse_member(m) for m in live)
    return Snapshot(
        submitted=counts.get("submitted", 0), succeeded=counts.get("succeeded", 0),
        failed={k.split(":", 1)[1]: v for k, v in counts.items() if k.startswith("failed:")},
        exec_seconds=_histogram(exec_h), e2e_seconds=_histogram(e2e_h),
        queue_depth=depth, running=running,
        workers=workers)


def _histogram(raw: dict[bytes, bytes]) -> Histogram:
    values = {k.decode(): v for k, v in raw.items()}
    running, buckets = 0, []
    for label in (*BUCKET_LABELS, "+Inf"):
        running += int(values.get(label, 0))
        buckets.append((label, running))
    return Histogram(buckets, int(values.get("count", 0)), float(values.get("sum", 0.0)))


def _member(node: str, processes: int) -> str:
    # The pool size rides in the member itself, so a node that died leaves
    # nothing behind but one entry that goes stale and is pruned.
    return f"{node}\t{processes}"


def _parse_member(member: bytes) -> tuple[str, int]:
    node, _, processes = member.decode().rpartition("\t")
    return node, int(processes or 0)


def heartbeat(client: redis.Redis, node: str, processes: int) -> None:
    """A worker node is alive: one round trip every HEARTBEAT_S seconds per node."""
    pipe = client.pipeline(transaction=False)
    pipe.zadd(keys.WORKERS_SEEN, {_member(node, processes): now()})
    pipe.zremrangebyscore(keys.WORKERS_SEEN, "-inf", now() - 24 * 3600)
    pipe.execute()


def forget_worker(client: redis.Redis, node: str, processes: int) -> None:
    client.zrem(keys.WORKERS_SEEN, _member(node, processes))


def consumers(client: redis.Redis, stale_s: float) -> dict[str, int]:
    """Per queue, how many nodes that beat in the last `stale_s` consume it."""
    pipe = client.pipeline(transaction=False)
    pipe.zrangebyscore(keys.NODES, now() - stale_s, "+inf")
    pipe.hgetall(keys.NODES_QUEUES)
    live, consumed = pipe.execute()
    out: dict[str, int] = {}
    for node in live:
        for queue in (consumed.get(node) or b"").decode().split(","):
            if queue:
                out[queue] = out.get(queue, 0) + 1
    return out


def queues(client: redis.Redis, default_queue: str,
           stale_s: float) -> dict[str, dict[str, int]]:
    """Per queue: calls waiting for a node, and live nodes consuming it (what an
    autoscaler such as KEDA scales a queue's nodes on, from zero)."""
    prefix = keys.queued("")
    names = {k.decode()[len(prefix):] for k in client.scan_iter(f"{prefix}*", count=1000)}
    nodes = consumers(client, stale_s)
    names |= set(nodes) | {default_queue}
    ordered = sorted(names)
    pipe = client.pipeline(transaction=False)
    for name in ordered:
        pipe.zcard(keys.queued(name))
    return {name: {"queued": int(n), "nodes": nodes.get(name, 0)}
            for name, n in zip(ordered, pipe.execute(), strict=True)}


class LiveQueues:
    """Which queues some live node consumes: a call to a queue no live node consumes
    waits (its nodes may be scaling up from zero), and its reply says so. Read again
    at most once a second, on a thread of its own: a reply never waits for Redis."""

    def __init__(self, client: redis.Redis, stale_s: float, every_s: float = 1.0) -> None:
        self.redis, self.stale_s, self.every_s = client, stale_s, every_s
        self._read_at, self._queues = -every_s, None  # None: not read yet
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wasmq-queues")
        self._reading: Future | None = None  # one read at a time: a slow one is not queued

    def serves(self, queue: str) -> bool:
        """True when some live node consumes `queue`, or when that is not known yet."""
        if now() - self._read_at >= self.every_s and (
                self._reading is None or self._reading.done()):
            self._read_at = now()
            self._reading = self._reader.submit(self._read)
        return self._queues is None or queue in self._queues

    def _read(self) -> None:
        try:
            self._queues = frozenset(consumers(self.redis, self.stale_s))
        except redis.RedisError:
            pass  # the last answer stands
