"""Task records: one Redis hash per task, with a TTL, saved and loaded here only.

Every change a task goes through is one pipeline or one Lua script, so a
record never half-changes and a finished task is published in the same step
that stores its result.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from enum import Enum

import msgpack
import redis

from broker import keys, metrics
from broker.clock import now


class Status(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (Status.SUCCEEDED, Status.FAILED)


def new_tid() -> str:
    """Scailable-style id with 128 random bits, so ids cannot be guessed."""
    return f"wasmqt-{secrets.token_hex(16)}"


@dataclass
class TaskRecord:
    tid: str
    cfid: str
    status: Status = Status.QUEUED
    createdAt: float = field(default_factory=now)
    startedAt: float | None = None
    finishedAt: float | None = None
    node: str = ""
    result: bytes | None = None
    message: str = ""
    stdout: str = ""
    stderr: str = ""
    attempts: int = 0
    execMs: float | None = None
    private: bool = False  # its function was private: retrieving it needs a key

    _FLOATS = ("createdAt", "startedAt", "finishedAt", "execMs")

    def to_hash(self) -> dict[str, bytes | str | float | int]:
        out: dict[str, bytes | str | float | int] = {}
        for name, value in self.__dict__.items():
            if value is None:
                continue
            if isinstance(value, Status):
                value = value.value
            elif isinstance(value, bool):
                value = int(value)
            out[name] = value
        return out

    @classmethod
    def from_hash(cls, raw: dict[bytes, bytes]) -> "TaskRecord":
        d = {k.decode(): v for k, v in raw.items()}
        rec = cls(tid=d.get("tid", b"").decode(), cfid=d.get("cfid", b"").decode())
        rec.status = Status(d.get("status", b"queued").decode())
        for name in cls._FLOATS:
            if name in d:
                setattr(rec, name, float(d[name]))
        for name in ("node", "message", "stdout", "stderr"):
            if name in d:
                setattr(rec, name, d[name].decode("utf-8", errors="replace"))
        rec.result = d.get("result")
        rec.attempts = int(d.get("attempts", 0))
        rec.private = d.get("private") == b"1"
        return rec


# Marks a task running unless it already finished (a redelivered message after
# a node died must not run a finished task again), and hands over the input
# when it travelled by reference: one round trip for both. The job kept for
# resending a lost message is dropped: from here on the message is kombu's
# to redeliver.
_CLAIM = """
redis.call('ZREM', KEYS[3], ARGV[3])
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing', false} end
if status == 'succeeded' or status == 'failed' then return {status, false} end
redis.call('HSET', KEYS[1], 'status', 'running', 'node', ARGV[1], 'startedAt', ARGV[2])
redis.call('HDEL', KEYS[1], 'job')
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
return {'running', redis.call('GET', KEYS[2])}
"""


# Stores the result, counts it (the metrics fragment), drops the input and
# the pending entry, and wakes the gateways: one round trip. KEYS: record,
# input, pending, then metrics.FINISH_KEYS; ARGV: tid, channel, TTL, then
# metrics.finish_args, then "1" to ship the record with the wake-up, then the
# record's field/value pairs. A shipped record (msgpack of the hash's
# field/value list, after a newline) spares the waiting gateway its HGETALL.
_FINISH = metrics.COUNT_FINISH_LUA + """
redis.call('HSET', KEYS[1], unpack(ARGV, 8))
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
if ARGV[7] == '1' then
  redis.call('PUBLISH', ARGV[2], ARGV[1] .. '\\n' .. cmsgpack.pack(redis.call('HGETALL', KEYS[1])))
else
  redis.call('PUBLISH', ARGV[2], ARGV[1])
end
"""

# Records up to this size (result and logs) travel with their wake-up.
SHIP_LIMIT = 16 * 1024


def parse_wakeup(data: bytes) -> tuple[str, bytes]:
    """A completion message: the tid, and the packed record if one was shipped."""
    tid, _, packed = data.partition(b"\n")
    return tid.decode(errors="replace"), packed


def unpack_shipped(packed: bytes) -> "TaskRecord | None":
    """The shipped record, or None if there is none or it cannot be read (then the
    waiter reads the record from Redis, as for a large one)."""
    if not packed:
        return None
    try:
        flat = msgpack.unpackb(packed, raw=True)
        record = TaskRecord.from_hash(dict(zip(flat[::2], flat[1::2], strict=True)))
    except (ValueError, TypeError, KeyError, msgpack.UnpackException):
        return None
    return record if record.status.finished else None


class TaskRecords:
    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self.redis = client
        self.ttl = ttl
        self._claim = client.register_script(_CLAIM)
        self._finish = client.register_script(_FINISH)

    def load_scripts(self) -> None:
        """Spares a new worker process the NOSCRIPT round trip on its first task."""
        for script in (self._claim, self._finish):
            self.redis.script_load(script.script)

    def create(self, record: TaskRecord, input_by_ref: bytes | None = None,
               job: bytes | None = None, message: tuple[str, bytes] | None = None) -> None:
        """One MULTI, so the record, its input and its queue message exist together.

        `job`: the queue message's arguments, kept until a worker claims the task
        so that a message lost inside kombu (a worker killed between taking it
        from the queue and recording it as unacknowledged) can be sent again.
        `message`: (queue, message bytes from broker/jobs.py), pushed last."""
        fields = record.to_hash()
        pipe = self.redis.pipeline()
        if job is not None:
            fields["job"] = job
            pipe.zadd(keys.PENDING, {record.tid: now()})
        pipe.hset(keys.task(record.tid), mapping=fields)
        pipe.expire(keys.task(record.tid), self.ttl)
        if input_by_ref is not None:
            pipe.set(keys.task_input(record.tid), input_by_ref, ex=self.ttl)
        metrics.count_submitted(pipe)
        if message is not None:
            pipe.lpush(*message)
        pipe.execute()

    def get(self, tid: str) -> TaskRecord | None:
        raw = self.redis.hgetall(keys.task(tid))
        return TaskRecord.from_hash(raw) if raw else None

    def claim(self, tid: str, node: str) -> tuple[str, bytes | None]:
        state, data = self._claim(keys=[keys.task(tid), keys.task_input(tid), keys.PENDING],
                                  args=[node, now(), tid])
        return state.decode(), (data or None)

    def finish(self, tid: str, status: Status, *, result: bytes | None = None,
               message: str = "", stdout: str = "", stderr: str = "",
               exec_ms: float | None = None) -> None:
        finished_at = now()
        fields: dict[str, bytes | str | float] = {
            "status": status.value, "finishedAt": finished_at, "message": message,
            "stdout": stdout, "stderr": stderr}
        if result is not None:
            fields["result"] = result
        if exec_ms is not None:
            fields["execMs"] = exec_ms
        self._finish(
            keys=[keys.task(tid), keys.task_input(tid), keys.PENDING, *metrics.FINISH_KEYS],
            args=[tid, keys.DONE_CHANNEL, self.ttl,
                  *metrics.finish_args(status == Status.SUCCEEDED, message, exec_ms,
                                       finished_at),
                  "1" if len(result or b"") + len(stdout) + len(stderr) <= SHIP_LIMIT else "0",
                  *(x for pair in fields.items() for x in pair)])

    def unclaimed(self, older_than: float, limit: int = 100) -> list[tuple[str, bytes]]:
        """Tasks still queued whose message went out before `older_than` (epoch
        seconds), with their job; entries that finished or expired are dropped."""
        tids = [t.decode() for t in self.redis.zrangebyscore(keys.PENDING, "-inf", older_than,
                                                           start=0, num=limit)]
        if not tids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for tid in tids:
            pipe.hmget(keys.task(tid), "status", "job")
        out, done = [], []
        for tid, (status, job) in zip(tids, pipe.execute(), strict=True):
            if status == Status.QUEUED.value.encode() and job:
                out.append((tid, job))
            else:
                done.append(tid)
        if done:
            self.redis.zrem(keys.PENDING, *done)
        return out

    def resent(self, tid: str) -> None:
        self.redis.zadd(keys.PENDING, {tid: now()}, xx=True)
