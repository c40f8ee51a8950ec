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
from dataclasses import dataclass

import redis

from wasmq.api.access import require_key_if_private
from wasmq.api.ratelimit import Caller, RateRules
from wasmq.broker import keys
from wasmq.broker.errors import TooLarge, TooManyInFlight, Unavailable
from wasmq.broker.limits import Limits
from wasmq.broker.protocol.messages import Job, JobMessages
from wasmq.broker.protocol.queue import Admission, NewTask, TaskQueue
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


class Submissions:
    def __init__(self, settings: Settings, client: redis.Redis, tasks: TaskQueue,
                 jobs: JobMessages) -> None:
        self.settings, self.redis, self.tasks, self.jobs = settings, client, tasks, jobs
        self.rules = RateRules(settings)
        self._functions: OrderedDict[str, Known] = OrderedDict()
        self._lock = threading.Lock()

    def function(self, cfid: str) -> Known:
        """The function calls are validated against (NotFound when there is none)."""
        with self._lock:
            known = self._functions.get(cfid)
        return known or self._remember(cfid, self.redis.get(keys.function(cfid)))

    def submit(self, cfid: str, data: bytes, who: Caller, *, tid: str) -> TaskRecord:
        """Create the call's task under the current function; the new task's record."""
        known = self.function(cfid)
        counters = self.rules.counters(who, len(data))
        for _ in range(ATTEMPTS):
            task = self._new_task(tid, cfid, known.record, data, who)
            refusal = self.tasks.enqueue(task, Admission(
                function_key=keys.function(cfid), expected=known.stored,
                caller=who.identity, counters=counters,
                max_inflight=self.settings.max_inflight))
            if refusal is None:
                return task.record
            if refusal.rule is not None:
                raise self.rules.refused(refusal.rule, refusal.retry_after, who)
            if refusal.inflight is not None:
                raise TooManyInFlight(
                    f"this {who.kind} has {refusal.inflight} tasks queued or running, the "
                    f"limit of {self.settings.max_inflight}; retry once some have finished",
                    retry_after=refusal.retry_after)
            counters = ()  # counted once
            known = self._remember(cfid, refusal.function)
        raise Unavailable(f"compute function '{cfid}' kept changing while the call was "
                          f"submitted; try again")

    def _new_task(self, tid: str, cfid: str, function: FunctionRecord, data: bytes,
                  who: Caller) -> NewTask:
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
                       job=job, message=self.jobs.encode(job),
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
