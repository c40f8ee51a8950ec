"""The queue protocol's one entry point: submit, claim, finish, take over.

Celery carries every call (calls.py); what Celery does not keep is kept beside it in
four Redis structures per call, written only by the `.lua` scripts beside this
module: the task record, its caller's calls in flight, its queue's queued set and
the running set of the node that claimed it. docs/queue.md draws a call's states
and names the test of each guarantee.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from importlib.resources import files

import msgpack
import redis

from wasmq.broker import keys, metrics, room
from wasmq.broker.causes import Cause
from wasmq.broker.clock import now
from wasmq.broker.protocol.record import Status, TaskRecord
from wasmq.broker.settings import Settings
from wasmq.broker.usage import Usage

ROOMY = ("submit", "finish")  # the scripts that store what calls keep: room.lua first
BUCKETS_LUA = f"local BUCKETS = {{{', '.join(map(repr, metrics.BUCKET_LABELS))}}}\n"


def script_source(name: str) -> str:
    """The text of `<name>.lua` beside this module, after what it uses of others':
    broker/room.lua's `make_room`, broker/metrics.py's histogram bounds."""
    text = files(__package__).joinpath(f"{name}.lua").read_text(encoding="utf-8")
    if name == "finish":
        text = BUCKETS_LUA + text
    return room.ROOM_LUA + text if name in ROOMY else text


@dataclass(frozen=True)
class Job:
    """What a worker needs to run one call. It travels as the Celery task's argument
    (without `data` when the input is too large to travel inline) and is kept with
    the record until the call finishes, so a call can be sent again."""

    tid: str
    sha256: str
    data: bytes | None = None
    limits: dict[str, float] | None = None
    caller: str = ""
    queue: str = ""

    def to_dict(self, *, with_data: bool = True) -> dict:
        return {**vars(self), "data": self.data if with_data else None}  # asdict: 25x slower

    @classmethod
    def from_dict(cls, raw: dict) -> "Job":
        return cls(**{k: v for k, v in raw.items() if k in cls.__dataclass_fields__})

    def packed(self) -> bytes:
        return msgpack.packb(self.to_dict(), use_bin_type=True)

    @classmethod
    def unpacked(cls, raw: bytes) -> "Job":
        return cls.from_dict(msgpack.unpackb(raw, raw=False))


RECORD_BYTES = 512  # what a task record costs Redis besides its input and result


@dataclass(frozen=True)
class RateCounter:
    """One rate rule's counter for this caller: `cost` counted in a fixed window."""

    key: str
    window_s: int
    allowance: int
    cost: int = 1


@dataclass(frozen=True)
class Admission:
    """What a caller's calls are created under, checked by submit.lua."""

    function_key: str
    caller: str
    max_inflight: int = 100
    counters: tuple[RateCounter, ...] = ()  # each with the rule's window and allowance
    quota: int = 2**62  # bytes the caller may keep in the store


@dataclass(frozen=True)
class NewTask:
    record: TaskRecord
    job: Job
    expected: bytes  # the function's stored record the call was validated against
    costs: tuple[int, ...] = ()  # one per admission counter

    @property
    def size(self) -> int:
        """Bytes it keeps until it finishes: its input, twice when it travels inline too."""
        return RECORD_BYTES + 2 * len(self.job.data or b"")


@dataclass(frozen=True)
class Admitted:
    ahead: int  # how many of its caller's calls were in flight before it


@dataclass(frozen=True)
class Refusal:
    """Why a call was not created: which of these is set."""

    rule: int | None = None  # the rate rule exceeded, `retry_after` seconds left in its window
    retry_after: int = 0
    stale: bool = False  # the function changed: `function` is its stored form (None: gone)
    function: bytes | None = None
    inflight: int | None = None  # the caller's calls in flight: its cap is reached
    kept: int | None = None  # bytes the caller keeps: its quota is reached
    full: bool = False  # Redis has no room for it (broker/room.lua)


@dataclass(frozen=True)
class Claim:
    state: str  # 'run' (with the job if the message came without), 'finished', 'stale',
    # 'missing' (see claim.lua)
    job: Job | None = None


@dataclass(frozen=True)
class Taken:
    """A call taken over from a node: send it again with `attempt`, or fail it."""

    job: Job
    attempt: int
    exhausted: bool


@dataclass
class Finished:
    """A call's outcome, as the worker stores it."""

    status: Status
    result: bytes | None = None
    message: str = ""
    cause: Cause | None = None
    stdout: str = ""
    stderr: str = ""
    exec_ms: float | None = None


class TaskQueue:
    def __init__(self, client: redis.Redis, *, ttl: int, max_attempts: int = 3) -> None:
        self.redis, self.ttl, self.max_attempts = client, ttl, max_attempts
        self.usage = Usage(ttl)
        self.scripts = {name: client.register_script(script_source(name))
                        for name in ("submit", "claim", "finish", "requeue", "nodes")}

    @classmethod
    def from_settings(cls, client: redis.Redis, settings: Settings) -> "TaskQueue":
        return cls(client, ttl=settings.result_ttl, max_attempts=settings.max_attempts)

    def load_scripts(self) -> None:
        """Spares a new worker process the NOSCRIPT round trip on its first task."""
        for script in self.scripts.values():
            self.redis.script_load(script.script)

    def get(self, tid: str) -> TaskRecord | None:
        raw = self.redis.hgetall(keys.task(tid))
        return TaskRecord.from_hash(raw) if raw else None

    # -- the gateway -----------------------------------------------------------------

    def submit(self, tasks: list[NewTask], admission: Admission) -> list[Admitted | Refusal]:
        """Create one caller's calls to one function (all of one queue), each admitted
        or refused on its own."""
        at = now()
        window = self.usage.window(admission.caller, at)
        _, expire_at = self.usage.current(admission.caller, at)
        args: list = [self.ttl, at, admission.max_inflight, len(admission.counters),
                      len(window), admission.quota, expire_at, sum(t.size for t in tasks)]
        args += [x for c in admission.counters for x in (c.window_s, c.allowance)]
        for task in tasks:
            fields = task.record.to_hash()
            fields["job"] = task.job.packed()
            args += [task.expected, 2 * len(fields),
                     *(x for pair in fields.items() for x in pair), *task.costs, task.size]
        reply = self.scripts["submit"](
            keys=[keys.METRIC_COUNTS, admission.function_key, keys.inflight(admission.caller),
                  keys.queued(tasks[0].job.queue), keys.ROOM,
                  *(c.key for c in admission.counters),
                  *window, *(keys.task(t.record.tid) for t in tasks)],
            args=args)
        function = reply[len(tasks)] if len(reply) > len(tasks) else None
        out: list[Admitted | Refusal] = []
        for answer in reply[:len(tasks)]:
            kind, _, detail = answer.decode().partition(":")
            if kind == "queued":
                out.append(Admitted(int(detail)))
            elif kind == "limited":
                rule, _, left = detail.partition(":")
                out.append(Refusal(rule=int(rule) - 1, retry_after=max(1, int(left))))
            elif kind == "busy":
                out.append(Refusal(inflight=int(detail), retry_after=1))
            elif kind == "quota":
                out.append(Refusal(kept=int(detail), retry_after=self.usage.span))
            elif kind == "full":
                out.append(Refusal(full=True))
            else:
                out.append(Refusal(stale=True, function=function or None))
        return out

    # -- the worker --------------------------------------------------------------------

    def claim(self, jobs: list[Job], node: str, retries: int) -> list[Claim]:
        """Start the calls of one message (jobs without data get theirs from the record)."""
        args: list = [node, now(), retries, f"{socket.gethostname()}:{os.getpid()}"]
        for job in jobs:
            args += [job.tid, "1" if job.data is None else "0"]
        flat = self.scripts["claim"](
            keys=[keys.running(node), keys.queued(jobs[0].queue),
                  *(keys.task(j.tid) for j in jobs)], args=args)
        return [Claim(state.decode(), Job.unpacked(job) if job else None)
                for state, job in zip(flat[::2], flat[1::2], strict=True)]

    def finish(self, done: list[tuple[Job, Finished]], node: str, *,
               only_queued: bool = False) -> list[bool]:
        """Store outcomes of one caller's calls (each unless it finished already; with
        `only_queued`, only while it is still queued) and wake their waiters at once."""
        finished_at = now()
        usage_key, expire_at = self.usage.current(done[0][0].caller, finished_at)
        sizes = [len(o.result or b"") + len(f"{o.stdout}{o.stderr}{o.message}".encode())
                 for _, o in done]
        args: list = [keys.DONE_CHANNEL, self.ttl, repr(finished_at), expire_at, sum(sizes),
                      "1" if only_queued else "0"]
        for (job, outcome), size in zip(done, sizes, strict=True):
            fields = _finish_fields(outcome, finished_at)
            args += [job.tid, metrics.counter(outcome.status, outcome.cause),
                     "" if outcome.exec_ms is None else repr(outcome.exec_ms / 1000),
                     size, 2 * len(fields), *(x for pair in fields.items() for x in pair)]
        reply = self.scripts["finish"](
            keys=[keys.inflight(done[0][0].caller), keys.running(node),
                  keys.queued(done[0][0].queue), keys.METRIC_COUNTS,
                  keys.METRIC_EXEC_SECONDS, keys.METRIC_E2E_SECONDS, usage_key, keys.ROOM,
                  *(keys.task(job.tid) for job, _ in done)], args=args)
        return [bool(x) for x in reply]

    # -- taking calls over (a dead node's, a split batch's, a stopping node's) -----------

    def take(self, from_node: str, to_node: str, tids: list[str]) -> list[Taken]:
        """`from_node`'s calls, or with `from_node` '' calls whose message was lost."""
        if not tids:
            return []
        flat = self.scripts["requeue"](
            keys=[keys.running(from_node or to_node), keys.running(to_node),
                  *(keys.task(t) for t in tids)],
            args=["take", from_node, to_node, self.max_attempts, *tids])
        return [Taken(Job.unpacked(job), int(attempt), state == b"exhausted")
                for attempt, job, state in zip(flat[::3], flat[1::3], flat[2::3], strict=True)]

    def handed(self, node: str, sent: list[Taken]) -> int:
        """The calls `node` took over and sent again are queued (no longer its own)."""
        if not sent:
            return 0
        return int(self.scripts["requeue"](
            keys=[keys.running(node),
                  *(k for t in sent for k in (keys.task(t.job.tid), keys.queued(t.job.queue)))],
            args=["handed", node, now(), *(x for t in sent for x in (t.job.tid, t.attempt))]))


def _finish_fields(outcome: Finished, finished_at: float) -> dict[str, bytes | str | float]:
    fields: dict[str, bytes | str | float] = {
        "status": outcome.status.value, "finishedAt": finished_at,
        "message": outcome.message, "stdout": outcome.stdout, "stderr": outcome.stderr}
    if outcome.result is not None:
        fields["result"] = outcome.result
    if outcome.exec_ms is not None:
        fields["execMs"] = outcome.exec_ms
    if outcome.status == Status.FAILED:
        fields["cause"] = (outcome.cause or Cause.MODULE_ERROR).value
    return fields
