"""A gateway process's build places, shared fairly across callers.

At most `slots` builds run at once (one per core) and `queue` more wait; past that,
an upload is refused at once (BuildsBusy, 503). Issue 22 found that per-caller caps
alone are not fairness: five identities times WASMQ_COMPILE_PER_CALLER took every
place, and every other upload was refused or waited (a cheap model 114 s). So:

* a caller holds at most its share of the places (them divided among the callers
  holding some, and never more than `per_caller`);
* a newcomer finding every place taken is still admitted while some caller holds more
  than its share (the places over the bound are at most those callers' excess, so the
  bound holds within a factor of two);
* a free slot goes to the waiting caller served least since it came, oldest first:
  callers take turns, so a newcomer's build runs after at most one of each other's.

What it cannot do: with more identities than places, each holding one, a newcomer is
refused like anyone else; identities are API keys, else client addresses.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from wasmq.broker.errors import BuildsBusy


class Places:
    def __init__(self, slots: int, queue: int, per_caller: int) -> None:
        self.slots, self.queue, self.per_caller = slots, queue, per_caller
        self._cond = threading.Condition()
        self._held: Counter[str] = Counter()  # places (building or waiting), per caller
        self._running: Counter[str] = Counter()  # slots, per caller
        # Builds started per caller since it last held no place: who is served next.
        self._served: Counter[str] = Counter()
        self._waiting: dict[int, str] = {}  # ticket -> caller, waiting for a slot
        self._tickets = itertools.count()

    @property
    def capacity(self) -> int:
        return self.slots + self.queue

    def admit(self, caller: str) -> None:
        """Take a place for `caller` (a client's identity; "" for the server's own
        resumed builds, which no share bounds), or BuildsBusy at once."""
        with self._cond:
            held = self._held[caller]
            holders = len(self._held) + (0 if held else 1)
            share = max(1, self.capacity // holders)
            admitted = sum(self._held.values())
            excess = sum(max(0, n - share) for c, n in self._held.items() if c != caller)
            if admitted >= self.capacity and not (held == 0 and caller
                                                  and admitted - self.capacity < excess):
                raise BuildsBusy(
                    f"the server is building {self.slots} uploads and {self.queue} more are "
                    f"waiting (WASMQ_COMPILE_QUEUE); send this one again in a few seconds")
            if caller and held >= min(self.per_caller, share):
                raise BuildsBusy(
                    f"this client already has {held} uploads building or waiting to be "
                    f"built, its share of the {self.capacity} places while {holders} clients "
                    f"build (WASMQ_COMPILE_PER_CALLER={self.per_caller}); send this one "
                    f"again once one of them is done")
            self._held[caller] += 1

    def leave(self, caller: str) -> None:
        """Give back a place `admit` took."""
        with self._cond:
            self._held[caller] -= 1
            if self._held[caller] <= 0:
                del self._held[caller]
                self._served.pop(caller, None)

    @contextmanager
    def slot(self, caller: str) -> Iterator[None]:
        """A running slot, once it is `caller`'s turn (it holds a place)."""
        with self._cond:
            ticket = next(self._tickets)
            self._waiting[ticket] = caller
            try:
                while sum(self._running.values()) >= self.slots or self._next() != ticket:
                    self._cond.wait()
            finally:
                del self._waiting[ticket]
                self._cond.notify_all()
            self._running[caller] += 1
            self._served[caller] += 1
        try:
            yield
        finally:
            with self._cond:
                self._running[caller] -= 1
                if self._running[caller] <= 0:
                    del self._running[caller]
                self._cond.notify_all()

    def _next(self) -> int:
        """The waiting build of the caller served least so far, oldest first."""
        return min(self._waiting, key=lambda t: (self._served[self._waiting[t]], t))
