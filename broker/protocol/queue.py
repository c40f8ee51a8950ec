"""The queue protocol's one entry point: enqueue, claim, finish, resend, release.

Each step is one script (the `.lua` files beside this module), called with
keyword arguments and dataclasses; nothing else in wasmq writes a task record,
its pending entry, its caller's accounting or its queue message.

A task's life: `enqueue` (the gateway) creates its record and either queues
its message or holds it in its caller's backlog; `claim` (the worker process
that received the message) marks it running and releases the caller's next
held-back message; `finish` stores the result, counts it and wakes the
gateways; `unclaimed`/`resent` let nodes resend a message kombu lost;
`release_backlogs` unblocks a backlog whose queued messages were lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import redis

from wasmq.broker import keys, metrics
from wasmq.broker.causes import Cause
from wasmq.broker.clock import now
from wasmq.broker.protocol import lua
from wasmq.broker.protocol.messages import Job
from wasmq.broker.protocol.record import Status, TaskRecord
from wasmq.broker.protocol.wakeup import SHIP_LIMIT
from wasmq.broker.settings import Settings

# A message in the queue holds its caller's place for at most this long (release.lua).
STALL_S = 10


@dataclass(frozen=True)
class RateCounter:
    """One rate rule's counter for this caller: `cost` counted in a fixed window."""

    key: str
    window_s: int
    allowance: int
    cost: int = 1


@dataclass(frozen=True)
class Admission:
    """What a call is created under, checked by the script that creates it."""

    function_key: str
    expected: bytes  # the function's stored record that the call was validated against
    caller: str
    counters: tuple[RateCounter, ...] = ()  # empty when the call was counted already
    max_inflight: int = 100


@dataclass(frozen=True)
class NewTask:
    record: TaskRecord
    job: Job
    message: bytes  # the Celery message (JobMessages.encode)
    input_by_ref: bytes | None = None


@dataclass(frozen=True)
class Refusal:
    """Why a call was not created: a rate rule (its index) with the seconds left in
    its window; the function changed (`stale`, with its stored form now, None if
    gone); or the caller has `inflight` tasks queued or running already."""

    rule: int | None = None
    retry_after: int = 0
    stale: bool = False
    function: bytes | None = None
    inflight: int | None = None


@dataclass(frozen=True)
class Claim:
    """What the claim found: `running` (run it, with the input if it came by
    reference), `succeeded`/`failed` (already finished), `missing` (expired), or
    `exhausted` (its runs ended their worker process `attempts` times, the last
    one as `lost` says)."""

    state: str
    data: bytes | None = None
    attempts: int = 0
    lost: str = ""


@dataclass
class Finished:
    """A task's outcome, as the worker stores it."""

    status: Status
    result: bytes | None = None
    message: str = ""
    cause: Cause | None = None
    stdout: str = ""
    stderr: str = ""
    exec_ms: float | None = None
    extra: dict[str, str] = field(default_factory=dict)


class TaskQueue:
    def __init__(self, client: redis.Redis, *, ttl: int, queue: str, share: int = 1,
                 max_attempts: int = 3) -> None:
        self.redis = client
        self.ttl, self.queue, self.share, self.max_attempts = ttl, queue, share, max_attempts
        self._enqueue = lua.register(client, "enqueue")
        self._claim = lua.register(client, "claim")
        self._finish = lua.register(client, "finish")
        self._release = lua.register(client, "release")
        self._finish_batch = lua.register(client, "finish_batch")
        self._split = lua.register(client, "split")

    @classmethod
    def from_settings(cls, client: redis.Redis, settings: Settings) -> "TaskQueue":
        return cls(client, ttl=settings.result_ttl, queue=settings.queue,
                   share=settings.queue_share, max_attempts=settings.max_attempts)

    def load_scripts(self) -> None:
        """Spares a new worker process the NOSCRIPT round trip on its first task."""
        for script in (self._enqueue, self._claim, self._finish, self._release,
                       self._finish_batch, self._split):
            self.redis.script_load(script.script)

    # -- the gateway ------------------------------------------------------------

    def enqueue(self, task: NewTask, admission: Admission) -> Refusal | None:
        """Create the task, its input and its message together, if `admission` holds."""
        refusals, _ = self.enqueue_batch([task], [admission.expected], task.message, admission,
                                         [tuple(c.cost for c in admission.counters)])
        return refusals[0]

    def enqueue_batch(self, batch: list[NewTask], expected: list[bytes], message: bytes,
                      admission: Admission,
                      costs: list[tuple[int, ...]]) -> tuple[list[Refusal | None], bool]:
        """Create one caller's calls to one function together, in one script and one
        message (`message`, built for all of them), each admitted or refused on its
        own as `enqueue` would. Returns each call's refusal (None: admitted) and
        whether that is final: when some were refused and others admitted, nothing
        was created, and the admitted ones must be sent again in a message of their
        own (without counters: every call was counted)."""
        caller = admission.caller
        args: list = [self.ttl, now(), message, admission.max_inflight, self.share, caller,
                      len(batch), len(admission.counters)]
        args += [x for c in admission.counters for x in (c.window_s, c.allowance)]
        for task, stored, cost in zip(batch, expected, costs, strict=True):
            fields = task.record.to_hash()
            fields["job"] = task.job.packed()
            items = [x for pair in fields.items() for x in pair]
            args += [task.record.tid, stored, task.input_by_ref or b"", len(items), *items,
                     *cost]
        reply = self._enqueue(
            keys=[keys.PENDING, keys.METRIC_COUNTS, self.queue, admission.function_key,
                  keys.inflight(caller), keys.queued(caller), keys.backlog(caller),
                  keys.BACKLOGS, *(c.key for c in admission.counters)],
            args=args)
        settled = reply[0] != b"rebuild"
        if not settled:
            reply = reply[1:]
        function = reply[len(batch)] if len(reply) > len(batch) else None
        out: list[Refusal | None] = []
        for answer in reply[:len(batch)]:
            kind, _, detail = answer.decode().partition(":")
            if kind in ("queued", "duplicate"):
                out.append(None)
            elif kind == "limited":
                rule, _, left = detail.partition(":")
                out.append(Refusal(rule=int(rule) - 1, retry_after=max(1, int(left))))
            elif kind == "busy":
                out.append(Refusal(inflight=int(detail), retry_after=1))
            else:
                out.append(Refusal(stale=True, function=function or None))
        return out, settled

    def get(self, tid: str) -> TaskRecord | None:
        raw = self.redis.hgetall(keys.task(tid))
        return TaskRecord.from_hash(raw) if raw else None

    # -- the worker ---------------------------------------------------------------

    def claim(self, job: Job, node: str) -> Claim:
        return self.claim_batch([job], node)[0]

    def send_claim(self, job: Job, node: str) -> "SentClaim":
        """Send the claim and return without its answer: Redis marks the task running
        at once while the caller runs it; `SentClaim.answer()` then says whether it
        should have. Spares a task the wait for a round trip before it starts."""
        return SentClaim(self, job, node)

    @staticmethod
    def _claim_keys(jobs: list[Job], queue: str) -> list[str]:
        caller = jobs[0].caller
        return [keys.PENDING, queue, keys.queued(caller), keys.backlog(caller), keys.BACKLOGS]

    def _claim_args(self, jobs: list[Job], node: str) -> list:
        args: list = [node, now(), self.max_attempts, self.share, jobs[0].caller, jobs[0].tid]
        for job in jobs:
            args += [job.tid, "1" if job.data is None else "0"]
        return args

    def claim_batch(self, jobs: list[Job], node: str) -> list[Claim]:
        """Claim every call of one message (all one caller's), in one script."""
        return _claims(self._claim(keys=self._claim_keys(jobs, self.queue),
                                   args=self._claim_args(jobs, node)))

    def finish_batch(self, done: list[tuple[Job, Finished]]) -> list[bool]:
        """Store several outcomes of one caller's batch, each unless its task already
        finished, and wake their waiters with one message; True for each stored."""
        finished_at = now()
        args: list = [keys.DONE_CHANNEL, self.ttl, repr(finished_at)]
        for job, outcome in done:
            fields = _finish_fields(outcome, finished_at)
            size = len(outcome.result or b"") + len(outcome.stdout) + len(outcome.stderr)
            args += [job.tid, metrics.counter(outcome.status, outcome.cause),
                     "" if outcome.exec_ms is None else repr(outcome.exec_ms / 1000),
                     "1" if size <= SHIP_LIMIT else "0", 2 * len(fields),
                     *(x for pair in fields.items() for x in pair)]
        reply = self._finish_batch(
            keys=[keys.PENDING, keys.inflight(done[0][0].caller), keys.METRIC_COUNTS,
                  keys.METRIC_EXEC_SECONDS, keys.METRIC_E2E_SECONDS], args=args)
        return [bool(x) for x in reply]

    def split(self, parts: list[tuple[Job, bytes]], node: str, *, undo: bool,
              unclaimed: str = "") -> int:
        """Send each of a batch's unfinished calls (all one caller's) on as a message of
        its own, through the caller's backlog (`parts`: each job with its single
        message); with `undo`, the calls this node claimed go back to queued first;
        `unclaimed`: the batch message's id when it left the queue with no claim (a
        redelivery), so it gives up its caller's place. How many were sent on."""
        if not parts:
            return 0
        caller = parts[0][0].caller
        args: list = [now(), node, "1" if undo else "0", self.share, caller, self.ttl,
                      unclaimed]
        for job, message in parts:
            args += [job.tid, job.packed(), message]
        return int(self._split(keys=[self.queue, keys.PENDING, keys.queued(caller),
                                     keys.backlog(caller), keys.BACKLOGS], args=args))

    def finish(self, job: Job, outcome: Finished) -> bool:
        """Store the outcome unless the task already finished; True if stored."""
        finished_at = now()
        fields = _finish_fields(outcome, finished_at)
        size = len(outcome.result or b"") + len(outcome.stdout) + len(outcome.stderr)
        return bool(self._finish(
            keys=[keys.task(job.tid), keys.task_input(job.tid), keys.PENDING,
                  keys.inflight(job.caller), keys.METRIC_COUNTS, keys.METRIC_EXEC_SECONDS,
                  keys.METRIC_E2E_SECONDS],
            args=[job.tid, keys.DONE_CHANNEL, self.ttl, metrics.counter(outcome.status,
                                                                       outcome.cause),
                  "" if outcome.exec_ms is None else repr(outcome.exec_ms / 1000),
                  repr(finished_at), "1" if size <= SHIP_LIMIT else "0",
                  *(x for pair in fields.items() for x in pair)]))

    # -- maintenance, run by every worker node's heartbeat ------------------------------

    def unclaimed(self, older_than: float, limit: int = 100) -> list[Job]:
        """Tasks still queued whose message went into the queue before `older_than`
        (epoch seconds) and was not claimed since; entries that finished or expired
        are dropped."""
        tids = [t.decode() for t in self.redis.zrangebyscore(keys.PENDING, "-inf", older_than,
                                                           start=0, num=limit)]
        if not tids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for tid in tids:
            pipe.hmget(keys.task(tid), "status", "job", "held")
        out, done = [], []
        for tid, (status, job, held) in zip(tids, pipe.execute(), strict=True):
            if status == Status.QUEUED.value.encode() and job:
                if not held:  # held back in its caller's backlog: not lost, only waiting
                    out.append(Job.unpacked(job))
            else:
                done.append(tid)
        if done:
            self.redis.zrem(keys.PENDING, *done)
        return out

    def resent(self, tid: str) -> None:
        self.redis.zadd(keys.PENDING, {tid: now()}, xx=True)

    def release_backlogs(self) -> int:
        """Held-back messages let into the queue because their caller's queued ones
        were lost or cancelled; how many."""
        return int(self._release(keys=[keys.BACKLOGS, keys.PENDING, self.queue],
                                 args=[now(), self.share, STALL_S]))


def _finish_fields(outcome: Finished, finished_at: float) -> dict[str, bytes | str | float]:
    fields: dict[str, bytes | str | float] = {
        "status": outcome.status.value, "finishedAt": finished_at,
        "message": outcome.message, "stdout": outcome.stdout, "stderr": outcome.stderr,
        **outcome.extra}
    if outcome.result is not None:
        fields["result"] = outcome.result
    if outcome.exec_ms is not None:
        fields["execMs"] = outcome.exec_ms
    if outcome.status == Status.FAILED:
        fields["cause"] = (outcome.cause or Cause.MODULE_ERROR).value
    return fields


def _claims(flat: list) -> list[Claim]:
    out = []
    for i in range(0, len(flat), 4):
        state, data, attempts, lost = flat[i:i + 4]
        out.append(Claim(state.decode(), data or None, int(attempts),
                         lost.decode(errors="replace") if lost else ""))
    return out


class SentClaim:
    """A claim written to its own connection, its answer read later (once)."""

    def __init__(self, tasks: TaskQueue, job: Job, node: str) -> None:
        self.tasks, self.job, self.node = tasks, job, node
        self.pool = tasks.redis.connection_pool
        self.conn = self.pool.get_connection()
        try:
            claim_keys = tasks._claim_keys([job], tasks.queue)
            self.conn.send_command("EVALSHA", tasks._claim.sha, len(claim_keys), *claim_keys,
                                   *tasks._claim_args([job], node))
        except BaseException:
            self.pool.release(self.conn)
            raise

    def answer(self) -> Claim:
        try:
            reply = self.conn.read_response()
        except redis.exceptions.NoScriptError:  # Redis restarted: nothing ran, claim now
            return self.tasks.claim(self.job, self.node)
        except BaseException:
            self.conn.disconnect()  # an unread reply must not reach the next user
            raise
        finally:
            self.pool.release(self.conn)
        return _claims(reply)[0]
