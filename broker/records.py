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

from wasmq.broker import keys, metrics
from wasmq.broker.clock import now


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


# Creates a task: counts it against its caller's rate limits, checks that the
# function is still the one the caller validated the call against, then writes
# the record, its input and the pending entry, counts it and queues its
# message, all or nothing. KEYS: record, input, pending, counters, queue,
# function, then one rate-limit counter per rule. ARGV: TTL, now, tid, input
# by reference (''), message (''), '1' to check the function, its expected
# record, '1' to add a pending entry, the number n of record field/value
# items, those n items, then each rule's window and allowance.
_CREATE = """
local n = tonumber(ARGV[9])
-- Already there: this is redis-py sending the script again after a dropped
-- connection swallowed its first answer. Queue nothing twice.
if n > 0 and redis.call('EXISTS', KEYS[1]) == 1 then return {'queued', false} end
for i = 7, #KEYS do
  local w = 9 + n + 2 * (i - 7)
  local hits = redis.call('INCR', KEYS[i])
  if hits == 1 then redis.call('EXPIRE', KEYS[i], ARGV[w + 1]) end
  if hits > tonumber(ARGV[w + 2]) then return {'limited', i - 6, redis.call('TTL', KEYS[i])} end
end
if ARGV[6] == '1' then
  local fn = redis.call('GET', KEYS[6])
  if fn ~= ARGV[7] then return {'stale', fn} end
end
if n == 0 then return {'looked', false} end
redis.call('HSET', KEYS[1], unpack(ARGV, 10, 9 + n))
redis.call('EXPIRE', KEYS[1], ARGV[1])
if ARGV[8] == '1' then redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3]) end
if ARGV[4] ~= '' then redis.call('SET', KEYS[2], ARGV[4], 'EX', ARGV[1]) end
redis.call('HINCRBY', KEYS[4], 'submitted', 1)
if ARGV[5] ~= '' then redis.call('LPUSH', KEYS[5], ARGV[5]) end
return {'queued', false}
"""


@dataclass
class Admission:
    """What a submission is created under, checked in the script that creates it.

    `function`: the function record's key and the stored form the caller
    validated the call against (b"" when it has none yet: the script then
    only counts and looks it up). `counters`: rate-limit counters to count
    this submission against (none when it was counted already), with each
    rule's window in seconds and allowance in `windows`."""

    function_key: str
    expected: bytes
    counters: list[str] = field(default_factory=list)
    windows: list[int] = field(default_factory=list)


@dataclass
class Refusal:
    """Why a submission was not created: a rate rule (its index) refused it, with
    the seconds left in its window, or the function changed (its stored form
    now, None if it is gone)."""

    rule: int | None = None
    retry_after: int = 0
    function: bytes | None = None


class SentClaim:
    """A claim written to its own connection, its answer read later (once)."""

    def __init__(self, records: "TaskRecords", tid: str, node: str) -> None:
        self.records, self.tid, self.node = records, tid, node
        self.pool = records.redis.connection_pool
        self.conn = self.pool.get_connection()
        try:
            claim_keys = records._claim_keys(tid)
            self.conn.send_command("EVALSHA", records._claim.sha, len(claim_keys), *claim_keys,
                                   node, now(), tid)
        except BaseException:
            self.pool.release(self.conn)
            raise

    def answer(self) -> str:
        try:
            state, _ = self.conn.read_response()
        except redis.exceptions.NoScriptError:  # Redis restarted: nothing ran, claim now
            return self.records.claim(self.tid, self.node)[0]
        except BaseException:
            self.conn.disconnect()  # an unread reply must not reach the next user
            raise
        finally:
            self.pool.release(self.conn)
        return state.decode()


class TaskRecords:
    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self.redis = client
        self.ttl = ttl
        self._claim = client.register_script(_CLAIM)
        self._finish = client.register_script(_FINISH)
        self._create = client.register_script(_CREATE)

    def load_scripts(self) -> None:
        """Spares a new worker process the NOSCRIPT round trip on its first task."""
        for script in (self._claim, self._finish, self._create):
            self.redis.script_load(script.script)

    def create(self, record: TaskRecord, input_by_ref: bytes | None = None,
               job: bytes | None = None, message: tuple[str, bytes] | None = None,
               admission: Admission | None = None) -> Refusal | None:
        """One script, so the record, its input and its queue message exist together,
        and only if `admission` holds; else why not.

        `job`: the queue message's arguments, kept until a worker claims the task
        so that a message lost inside kombu (a worker killed between taking it
        from the queue and recording it as unacknowledged) can be sent again.
        `message`: (queue, message bytes from broker/jobs.py), pushed last."""
        fields = record.to_hash()
        if job is not None:
            fields["job"] = job
        items = [x for pair in fields.items() for x in pair]
        queue, body = message or ("", b"")
        return self._admit(admission, record.tid, items, input_by_ref or b"", queue, body,
                           pending=job is not None)

    def admit(self, admission: Admission) -> Refusal:
        """Count and look up only, creating nothing: what `create` would say."""
        refusal = self._admit(admission, "", [], b"", "", b"", pending=False)
        return refusal if refusal is not None else Refusal(function=None)

    def _admit(self, admission: Admission | None, tid: str, items: list, input_by_ref: bytes,
               queue: str, body: bytes, *, pending: bool) -> Refusal | None:
        adm = admission or Admission(function_key="", expected=b"")
        outcome, *detail = self._create(
            keys=[keys.task(tid), keys.task_input(tid), keys.PENDING, keys.METRIC_COUNTS,
                  queue or keys.PENDING, adm.function_key or keys.PENDING, *adm.counters],
            args=[self.ttl, now(), tid, input_by_ref, body, "1" if admission else "0",
                  adm.expected, "1" if pending else "0", len(items), *items, *adm.windows])
        if outcome == b"queued":
            return None
        if outcome == b"limited":
            return Refusal(rule=int(detail[0]) - 1, retry_after=max(1, int(detail[1])))
        return Refusal(function=detail[0] if outcome == b"stale" else None)

    def get(self, tid: str) -> TaskRecord | None:
        raw = self.redis.hgetall(keys.task(tid))
        return TaskRecord.from_hash(raw) if raw else None

    def claim(self, tid: str, node: str) -> tuple[str, bytes | None]:
        state, data = self._claim(keys=self._claim_keys(tid), args=[node, now(), tid])
        return state.decode(), (data or None)

    def claim_sent(self, tid: str, node: str) -> "SentClaim":
        """Send the claim and return without its answer: Redis marks the task running
        at once, while the caller runs it; `SentClaim.answer()` then says whether it
        should have (a redelivered task that already finished must not be stored
        again). Spares a task the wait for a round trip before it starts."""
        return SentClaim(self, tid, node)

    @staticmethod
    def _claim_keys(tid: str) -> list[str]:
        return [keys.task(tid), keys.task_input(tid), keys.PENDING]

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
