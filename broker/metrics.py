"""Cluster-wide task metrics, kept in Redis.

The gateway may run several processes and the workers are other processes on
other hosts, so a per-process prometheus_client registry would each show one
slice. The figures live in Redis instead, updated inside the scripts that
already write a task record (`TaskRecords.create` and `.finish`), so counting
adds no round trip; the gateway's `/metrics` reads them back in one pipeline
and exports them through a custom collector (api/metrics.py).

The finish step is part of the Lua script that finishes a task: it reads the
record's `createdAt` for the end-to-end latency, and it counts a task only the
first time it finishes, so at-least-once delivery (a task run twice after a
node died) does not count it twice. End-to-end latency compares the gateway's
clock (submission) with the worker's (result): keep the hosts' clocks
synchronised.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import redis

from wasmq.broker import keys
from wasmq.broker.clock import now

# Seconds; exported as the histogram's `le` bounds (+Inf is implied).
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
           30.0, 60.0, 120.0, 300.0)
BUCKET_LABELS = tuple(format(b, "g") for b in BUCKETS)

HEARTBEAT_S = 5.0  # how often a worker node says it is alive
HEARTBEAT_STALE_S = 3 * HEARTBEAT_S  # silent for longer: counted as gone

# Why a task failed, from the message the runtime wrote (workers/runtime.py and
# workers/traps.py word them; tests/test_metrics.py keeps the two in step). The
# first phrase found wins, so a trap caused by exhausted memory counts as memory.
CAUSES = (
    ("timeout", ("time limit of",)),
    ("memory", ("linear memory",)),
    ("output_limit", ("exceeds the output limit",)),
    ("pred_failed", ("pred() returned",)),
    ("exit", ("proc_exit(", "exited with code")),
    ("trap", ("module trapped",)),
    ("abi", ("malloc_buffer(", "output location")),
    ("missing_data", ("input has expired", "binary was deleted")),
    ("internal", ("internal error",)),
)
OTHER_CAUSE = "module_error"


def failure_cause(message: str) -> str:
    for cause, phrases in CAUSES:
        if any(p in message for p in phrases):
            return cause
    return OTHER_CAUSE


# A Lua fragment for the script that finishes a task (broker/records.py), run
# before the record is marked finished. KEYS[1] is the task's record, KEYS[4]
# to KEYS[6] the counters and the two histograms; ARGV[4] the counter to bump,
# ARGV[5] the execution seconds ('' if none), ARGV[6] the finishing time.
COUNT_FINISH_LUA = "local buckets = {" + ", ".join(f"'{b}'" for b in BUCKET_LABELS) + "}" + """
local function observe(key, value)
  local bucket = '+Inf'
  for _, le in ipairs(buckets) do
    if value <= tonumber(le) then bucket = le; break end
  end
  redis.call('HINCRBY', key, bucket, 1)
  redis.call('HINCRBYFLOAT', key, 'sum', value)
  redis.call('HINCRBY', key, 'count', 1)
end
local previous = redis.call('HGET', KEYS[1], 'status')
if previous ~= 'succeeded' and previous ~= 'failed' then
  redis.call('HINCRBY', KEYS[4], ARGV[4], 1)
  if ARGV[5] ~= '' then observe(KEYS[5], tonumber(ARGV[5])) end
  local created = tonumber(redis.call('HGET', KEYS[1], 'createdAt') or '')
  if created then observe(KEYS[6], math.max(0, tonumber(ARGV[6]) - created)) end
end
"""
FINISH_KEYS = (keys.METRIC_COUNTS, keys.METRIC_EXEC_SECONDS, keys.METRIC_E2E_SECONDS)


def finish_args(succeeded: bool, message: str, exec_ms: float | None,
                finished_at: float) -> list[str]:
    """ARGV[4] to ARGV[6] of COUNT_FINISH_LUA."""
    counter = "succeeded" if succeeded else f"failed:{failure_cause(message)}"
    return [counter, "" if exec_ms is None else repr(exec_ms / 1000), repr(finished_at)]


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
    unacked: int = 0
    workers: dict[str, int] = field(default_factory=dict)  # live node -> pool size


def read(client: redis.Redis, queue: str) -> Snapshot:
    """Everything /metrics shows, in one round trip."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.METRIC_COUNTS)
    pipe.hgetall(keys.METRIC_EXEC_SECONDS)
    pipe.hgetall(keys.METRIC_E2E_SECONDS)
    pipe.llen(queue)
    pipe.hlen(keys.KOMBU_UNACKED)
    pipe.zrangebyscore(keys.WORKERS_SEEN, now() - HEARTBEAT_STALE_S, "+inf")
    counts, exec_h, e2e_h, depth, unacked, live = pipe.execute()
    counts = {k.decode(): int(v) for k, v in counts.items()}
    workers = dict(_parse_member(m) for m in live)
    return Snapshot(
        submitted=counts.get("submitted", 0), succeeded=counts.get("succeeded", 0),
        failed={k.split(":", 1)[1]: v for k, v in counts.items() if k.startswith("failed:")},
        exec_seconds=_histogram(exec_h), e2e_seconds=_histogram(e2e_h),
        queue_depth=depth, unacked=unacked,
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
