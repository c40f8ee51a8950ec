"""Submitting a call: validate it against its function, create its task in one script.

A submission needs its function's record before it can build the task (its
binary, limits, privacy), and the task must be created only if that record is
still current. Each gateway process keeps the records it has used; the script
that creates the task (enqueue.lua) checks that the stored record is byte for
byte the one the call was validated against, and answers with the current one
if not, so a replaced or deleted function is never run from a stale copy: the
call is validated again and retried. A function not yet known to this process
costs one extra read, once, before the request body is read.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, replace

import redis

from wasmq.api.access import require_key_if_private
from wasmq.api.ratelimit import Caller, RateRules
from wasmq.broker import keys
from wasmq.broker.errors import TooLarge, TooManyInFlight, Unavailable
from wasmq.broker.limits import Limits
from wasmq.broker.protocol.messages import Job, JobMessages
from wasmq.broker.protocol.queue import Admission, NewTask, RateCounter, Refusal, TaskQueue
from wasmq.broker.protocol.record import TaskRecord
from wasmq.broker.registry import FunctionRecord, Registry
from wasmq.broker.settings import Settings

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


class Submissions:
    def __init__(self, settings: Settings, client: redis.Redis, tasks: TaskQueue,
                 jobs: JobMessages) -> None:
        self.settings, self.redis, self.tasks, self.jobs = settings, client, tasks, jobs
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
        # A batch's calls travel in one message: theirs is made only if one goes alone.
        task = self._new_task(tid, cfid, known.record, data, who, encode=not self.batching)
        return Call(task, known, self.rules.counters(who, len(data)), who, cfid)

    def submit(self, cfid: str, data: bytes, who: Caller, *, tid: str) -> TaskRecord:
        """Create the call's task under the current function; the new task's record."""
        outcome = self.send([self.prepare(cfid, data, who, tid=tid)])[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def send(self, calls: list[Call]) -> list[TaskRecord | Exception]:
        """Create the tasks of one lane's calls, in one script and one message when
        there are several; each call's new record, or the error it answers with."""
        outcomes: list[TaskRecord | Exception] = []
        for call, refusal in zip(calls, self._enqueue(calls), strict=True):
            try:
                outcomes.append(call.task.record if refusal is None
                                else self._after_refusal(call, refusal))
            except Exception as exc:  # noqa: BLE001 - this call's answer, not the batch's
                outcomes.append(exc)
        return outcomes

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
            known = self._remember(call.cfid, refusal.function)
            task = self._new_task(call.task.record.tid, call.cfid, known.record,
                                  call.task.job.data if call.task.input_by_ref is None
                                  else call.task.input_by_ref, call.who)
            refusal = self.tasks.enqueue(task, self._admission(call, known, counted=False))
            if refusal is None:
                return task.record
        raise Unavailable(f"compute function '{call.cfid}' kept changing while the call was "
                          f"submitted; try again")

    def _admission(self, call: Call, known: Known, counted: bool) -> Admission:
        return Admission(function_key=keys.function(call.cfid), expected=known.stored,
                         caller=call.who.identity, counters=call.counters if counted else (),
                         max_inflight=self.settings.max_inflight)

    def _enqueue(self, calls: list[Call]) -> list[Refusal | None]:
        """One lane's calls, each with its refusal (None: created). Refused calls of a
        batch make the admitted ones go again, uncounted, in a message without them."""
        refusals: list[Refusal | None] = [None] * len(calls)
        pending, counted = list(range(len(calls))), True
        while pending:
            batch = [calls[i] for i in pending]
            first = batch[0]
            if len(batch) == 1:
                task = first.task if first.task.message else \
                    replace(first.task, message=self.jobs.encode(first.task.job))
                refusals[pending[0]] = self.tasks.enqueue(
                    task, self._admission(first, first.known, counted))
                return refusals
            message = self.jobs.encode_batch([c.task.job for c in batch])
            found, settled = self.tasks.enqueue_batch(
                [c.task for c in batch], [c.known.stored for c in batch], message,
                self._admission(first, first.known, counted),
                [tuple(r.cost for r in c.counters) if counted else () for c in batch])
            for i, refusal in zip(pending, found, strict=True):
                refusals[i] = refusal
            if settled:
                return refusals
            pending = [i for i, r in zip(pending, found, strict=True) if r is None]
            counted = False
        return refusals

    def _new_task(self, tid: str, cfid: str, function: FunctionRecord, data: bytes,
                  who: Caller, *, encode: bool = True) -> NewTask:
        require_key_if_private(self.settings, function.private, "calling this function",
                               who.presented)
        function.require_module()  # a model building or failed: 503 or 409, not a task
        limits = Limits.from_settings(self.settings).narrowed(function.limits)
        if len(data) > limits.max_input:
            raise TooLarge(f"input.data is {len(data)} bytes; the input limit of this function "
                           f"is {limits.max_input_mb:g} MB")
        inline = len(data) <= self.settings.inline_input_kb * 1024
        job = Job(tid=tid, sha256=function.sha256, data=data if inline else None,
                  limits=function.limits, caller=who.identity)
        return NewTask(record=TaskRecord(tid=tid, cfid=cfid, private=function.private,
                                         caller=who.identity),
                       job=job, message=self.jobs.encode(job) if encode else b"",
                       input_by_ref=None if inline else data)

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
