"""Submitting a call in one round trip: rate limits, the function, the task and its message.

A submission needs its function's record before it can build the task (its
binary, limits, privacy), and the task must be created only if that record is
still current. Each gateway process keeps the records it has used; the
script that creates the task checks the stored record is byte for byte the
one the call was validated against, and answers with the current one if not,
so a replaced or deleted function is never run from a stale copy: the call
is validated again and retried. A function not yet known to this process
costs one extra round trip, once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from wasmq.api.ratelimit import RateRules
from wasmq.broker import keys
from wasmq.broker.errors import Unavailable
from wasmq.broker.records import Admission, TaskRecords
from wasmq.broker.registry import FunctionRecord, Registry

CACHED_FUNCTIONS = 4096
ATTEMPTS = 3  # a function replaced this often during one call is a client's problem

# Called with the function to validate the call against and build its task:
# returns the arguments of `TaskRecords.create` (record, input, job, message).
Build = Callable[[FunctionRecord], tuple]


class Submissions:
    def __init__(self, records: TaskRecords, rules: RateRules) -> None:
        self.records = records
        self.rules = rules
        self._functions: OrderedDict[str, tuple[bytes, FunctionRecord]] = OrderedDict()
        self._lock = threading.Lock()

    def known(self, cfid: str) -> tuple[bytes, FunctionRecord] | None:
        with self._lock:
            return self._functions.get(cfid)

    def look_up(self, cfid: str) -> tuple[bytes, FunctionRecord]:
        """Count the call and read its function, for a function this process has not
        seen: errors (404, 429) come before the request body is read."""
        counters, windows = self.rules.counters()
        refusal = self.records.admit(Admission(keys.function(cfid), b"", counters, windows))
        if refusal.rule is not None:
            raise self.rules.refused(refusal.rule, refusal.retry_after)
        return self._remember(cfid, refusal.function)

    def create(self, cfid: str, build: Build, *, counted: bool) -> tuple:
        """Create the task `build` makes for the current function; what it built."""
        raw, function = self.known(cfid) or self.look_up(cfid)
        for _ in range(ATTEMPTS):
            counters, windows = ([], []) if counted else self.rules.counters()
            task = build(function)
            refusal = self.records.create(
                *task, admission=Admission(keys.function(cfid), raw, counters, windows))
            counted = True
            if refusal is None:
                return task
            if refusal.rule is not None:
                raise self.rules.refused(refusal.rule, refusal.retry_after)
            raw, function = self._remember(cfid, refusal.function)
        raise Unavailable(f"compute function '{cfid}' kept changing while the call was "
                          f"submitted; try again")

    def _remember(self, cfid: str, raw: bytes | None) -> tuple[bytes, FunctionRecord]:
        if raw is None:
            with self._lock:
                self._functions.pop(cfid, None)
        function = Registry.parse(cfid, raw)  # NotFound when it is gone
        with self._lock:
            self._functions[cfid] = (raw, function)
            self._functions.move_to_end(cfid)
            while len(self._functions) > CACHED_FUNCTIONS:
                self._functions.popitem(last=False)
        return raw, function
