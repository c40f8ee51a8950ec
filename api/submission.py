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
from wasmq.api.batcher import Batcher, Item
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
class _Call:
    """A validated call waiting in the batcher (api/batcher.py)."""

    task: NewTask
    known: Known
    counters: tuple[RateCounter, ...]
    caller: str
    function_key: str


class Submissions:
    def __init__(self, settings: Settings, client: redis.Redis, tasks: TaskQueue,
                 jobs: JobMessages) -> None:
        self.settings, self.redis, self.tasks, self.jobs = settings, client, tasks, jobs
        self.rules = RateRules(settings)
        self._functions: OrderedDict[str, Known] = OrderedDict()
        self._lock = threading.Lock()
        self.batcher = Batcher(settings.max_batch, self._send)

    def function(self, cfid: str) -> Known:
        """The function calls are validated against (NotFound when there is none)."""
        with self._lock:
            known = self._functions.get(cfid)
        return known or self._remember(cfid, self.redis.get(keys.function(cfid)))

    def submit(self, cfid: str, data: bytes, who: Caller, *, tid: str) -> TaskRecord:
        """Create the call's task under the current function; the new task's record."""
        known = self.function(cfid)
        counters = self.rules.counters(who, len(data))
        if self.settings.max_batch > 1:
            task = self._new_task(tid, cfid, known.record, data, who, encode=False)
            item = self.batcher.run((who.identity, cfid), _Call(
                task, known, counters, who.identity, keys.function(cfid)))
            if item.error is not None:
                raise item.error
            if item.outcome is None:
                return task.record
            self._raise_for(item.outcome, who)
            counters = ()  # counted once
            known = self._remember(cfid, item.outcome.function)
        for _ in range(ATTEMPTS):
            task = self._new_task(tid, cfid, known.record, data, who)
            refusal = self.tasks.enqueue(task, Admission(
                function_key=keys.function(cfid), expected=known.stored,
                caller=who.identity, counters=counters,
                max_inflight=self.settings.max_inflight))
            if refusal is None:
                return task.record
            self._raise_for(refusal, who)
            counters = ()  # counted once
            known = self._remember(cfid, refusal.function)
        raise Unavailable(f"compute function '{cfid}' kept changing while the call was "
                          f"submitted; try again")

    def _raise_for(self, refusal: Refusal, who: Caller) -> None:
        """Raise the error a refused call answers with; a stale function returns."""
        if refusal.rule is not None:
            raise self.rules.refused(refusal.rule, refusal.retry_after, who)
        if refusal.inflight is not None:
            raise TooManyInFlight(
                f"this {who.kind} has {refusal.inflight} tasks queued or running, the "
                f"limit of {self.settings.max_inflight}; retry once some have finished",
                retry_after=refusal.retry_after)

    def _send(self, items: list[Item]) -> None:
        """The batcher's send: one batch of one caller's calls to one function, each
        item's outcome its refusal (None: created). Refused calls of a batch make the
        admitted ones go again, uncounted, in a message without them."""
        calls: list[_Call] = [item.payload for item in items]
        counted = True
        while items:
            if len(items) == 1:
                call = calls[0]
                task = replace(call.task, message=self.jobs.encode(call.task.job))
                items[0].outcome = self.tasks.enqueue(task, Admission(
                    function_key=call.function_key, expected=call.known.stored,
                    caller=call.caller, counters=call.counters if counted else (),
                    max_inflight=self.settings.max_inflight))
                return
            first = calls[0]
            message = self.jobs.encode_batch([c.task.job for c in calls])
            refusals, settled = self.tasks.enqueue_batch(
                [c.task for c in calls], [c.known.stored for c in calls], message,
                Admission(function_key=first.function_key, expected=first.known.stored,
                          caller=first.caller, counters=first.counters if counted else (),
                          max_inflight=self.settings.max_inflight),
                [tuple(r.cost for r in c.counters) if counted else () for c in calls])
            for item, refusal in zip(items, refusals, strict=True):
                item.outcome = refusal
            if settled:
                return
            kept = [i for i, r in enumerate(refusals) if r is None]
            items, calls, counted = [items[i] for i in kept], [calls[i] for i in kept], False

    def _new_task(self, tid: str, cfid: str, function: FunctionRecord, data: bytes,
                  who: Caller, *, encode: bool = True) -> NewTask:
        require_key_if_private(self.settings, function.private, "calling this function")
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
