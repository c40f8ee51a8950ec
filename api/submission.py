"""Submitting a call: validate it against its function, create its task in one script.

Each gateway process keeps the function records it has used. submit.lua creates a
call only if the stored record is byte for byte the one it was validated against,
and answers with the current one if not: the call is validated again and retried, so
a replaced or deleted function never runs from a stale copy, and a known function
costs no read of its own.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import redis

from wasmq.api.access import require_key_if_private
from wasmq.api.errors import STORAGE_FULL
from wasmq.api.ratelimit import Caller, RateRules
from wasmq.broker import keys
from wasmq.broker.errors import (
    QuotaExceeded,
    StorageFull,
    TooLarge,
    TooManyInFlight,
    Unavailable,
)
from wasmq.broker.limits import Limits
from wasmq.broker.protocol.calls import Calls, priority
from wasmq.broker.protocol.queue import (
    Admission,
    Admitted,
    Finished,
    Job,
    NewTask,
    RateCounter,
    Refusal,
    TaskQueue,
)
from wasmq.broker.protocol.record import Status, TaskRecord
from wasmq.broker.registry import FunctionRecord, Registry
from wasmq.broker.settings import MB, Settings

CACHED_FUNCTIONS = 4096
ATTEMPTS = 3  # a function replaced this often during one call is a client's problem


@dataclass(frozen=True)
class Known:
    """A function as this process validates calls against it: its stored form too."""

    stored: bytes
    record: FunctionRecord


@dataclass(frozen=True)
class Call:
    """A validated call, ready to go to Redis alone or in a batch (api/batcher.py)."""

    task: NewTask
    known: Known
    counters: tuple[RateCounter, ...]
    who: Caller
    cfid: str

    @property
    def lane(self) -> tuple[str, str]:
        """Calls of one lane may share a batch: one caller's, to one function."""
        return self.who.identity, self.cfid


def quota_exceeded(settings: Settings, kind: str, kept: int) -> QuotaExceeded:
    """What a caller over its storage quota is told, for a call or an upload."""
    return QuotaExceeded(
        f"storage quota reached: this {kind} keeps {kept / MB:.1f} MB in the store (the "
        f"inputs, results and uploads of the last WASMQ_RESULT_TTL={settings.result_ttl} s), "
        f"its quota of {settings.storage_quota / MB:g} MB (WASMQ_STORAGE_PER_CALLER_MB); "
        f"retry once older results expire")


class Submissions:
    def __init__(self, settings: Settings, client: redis.Redis, tasks: TaskQueue,
                 calls: Calls) -> None:
        self.settings, self.redis, self.tasks, self.calls = settings, client, tasks, calls
        self.rules = RateRules(settings)
        self._functions: OrderedDict[str, Known] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def batching(self) -> bool:
        return self.settings.max_batch > 1

    def cached(self, cfid: str) -> Known | None:
        """The function as this process last saw it, without asking Redis."""
        with self._lock:
            return self._functions.get(cfid)

    def function(self, cfid: str) -> Known:
        """The function calls are validated against (NotFound when there is none)."""
        with self._lock:
            known = self._functions.get(cfid)
        if known is not None and known.record.status == "ready":
            return known
        # A model still building (or failed) changes without a call noticing: read it.
        return self._remember(cfid, self.redis.get(keys.function(cfid)))

    def prepare(self, cfid: str, data: bytes, who: Caller, *, tid: str) -> Call:
        """The call validated against its function as this process knows it (raises
        what the call answers with: NotFound, Forbidden, TooLarge)."""
        known = self.function(cfid)
        counters = self.rules.counters(who, len(data))
        return Call(self._new_task(tid, cfid, known, data, who, counters), known, counters,
                    who, cfid)

    def submit(self, cfid: str, data: bytes, who: Caller, *, tid: str) -> TaskRecord:
        """Create the call's task under the current function; the new task's record."""
        outcome = self.send([self.prepare(cfid, data, who, tid=tid)])[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def send(self, calls: list[Call]) -> list[TaskRecord | Exception]:
        """Create the tasks of one lane's calls in one script, and send those admitted
        through Celery (one message for several); each call's new record, or the error
        it answers with."""
        first = calls[0]
        answers = self.tasks.submit([c.task for c in calls], self._admission(first, True))
        admitted = [(c, a) for c, a in zip(calls, answers, strict=True)
                    if isinstance(a, Admitted)]
        if admitted:
            self._send([c.task.job for c, _ in admitted], priority(admitted[0][1].ahead))
        outcomes: list[TaskRecord | Exception] = []
        for call, answer in zip(calls, answers, strict=True):
            try:
                outcomes.append(call.task.record if isinstance(answer, Admitted)
                                else self._after_refusal(call, answer))
            except Exception as exc:  # noqa: BLE001 - this call's answer, not the batch's
                outcomes.append(exc)
        return outcomes

    def _send(self, jobs: list[Job], at: int) -> None:
        """Send created calls through Celery; if that fails, they fail now (their
        records say why) and the error is the calls' answer."""
        try:
            self.calls.send(jobs, priority=at)
        except Exception as exc:
            try:
                self.tasks.finish([(j, Finished(Status.FAILED, message=(
                    "the call could not be queued (Redis did not take its message); "
                    "call it again"))) for j in jobs], node="")
            except redis.RedisError:
                pass  # its record expires; the caller was told 503
            raise Unavailable("the call could not be queued: Redis did not take its "
                              "message; try again") from exc

    def _after_refusal(self, call: Call, refusal: Refusal) -> TaskRecord:
        """Raise the error a refused call answers with; a call refused because its
        function changed is validated again and goes alone, uncounted (counted once)."""
        for _ in range(ATTEMPTS):
            if refusal.rule is not None:
                raise self.rules.refused(refusal.rule, refusal.retry_after, call.who)
            if refusal.inflight is not None:
                raise TooManyInFlight(
                    f"this {call.who.kind} has {refusal.inflight} tasks queued or running, "
                    f"the limit of {self.settings.max_inflight}; retry once some have "
                    f"finished", retry_after=refusal.retry_after)
            if refusal.kept is not None:
                raise quota_exceeded(self.settings, call.who.kind, refusal.kept)
            if refusal.full:
                raise StorageFull(STORAGE_FULL)
            known = self._remember(call.cfid, refusal.function)
            job = call.task.job
            task = self._new_task(job.tid, call.cfid, known, job.data or b"", call.who, ())
            answer = self.tasks.submit([task], self._admission(call, False))[0]
            if isinstance(answer, Admitted):
                self._send([task.job], priority(answer.ahead))
                return task.record
            refusal = answer
        raise Unavailable(f"compute function '{call.cfid}' kept changing while the call was "
                          f"submitted; try again")

    def _admission(self, call: Call, counted: bool) -> Admission:
        return Admission(function_key=keys.function(call.cfid), caller=call.who.identity,
                         max_inflight=self.settings.max_inflight,
                         counters=call.counters if counted else (),
                         quota=self.settings.storage_quota)

    def _new_task(self, tid: str, cfid: str, known: Known, data: bytes, who: Caller,
                  counters: tuple[RateCounter, ...]) -> NewTask:
        function = known.record
        require_key_if_private(self.settings, function.private, "calling this function",
                               who.presented)
        function.require_module()  # a model building or failed: 503 or 409, not a task
        limits = Limits.from_settings(self.settings).narrowed(function.limits)
        if len(data) > limits.max_input:
            raise TooLarge(f"input.data is {len(data)} bytes; the input limit of this function "
                           f"is {limits.max_input_mb:g} MB")
        queue = function.queue or self.settings.queue
        job = Job(tid=tid, sha256=function.sha256, data=data, limits=function.limits,
                  caller=who.identity, queue=queue)
        record = TaskRecord(tid=tid, cfid=cfid, private=function.private, caller=who.identity,
                            queue=queue)
        return NewTask(record=record, job=job, expected=known.stored,
                       costs=tuple(c.cost for c in counters))

    def _remember(self, cfid: str, stored: bytes | None) -> Known:
        if stored is None:
            with self._lock:
                self._functions.pop(cfid, None)
        known = Known(stored, Registry.parse(cfid, stored))  # NotFound when it is gone
        with self._lock:
            self._functions[cfid] = known
            self._functions.move_to_end(cfid)
            while len(self._functions) > CACHED_FUNCTIONS:
                self._functions.popitem(last=False)
        return known
