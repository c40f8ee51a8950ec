"""Calls that arrive together travel together: group commit of submissions.

While one submission of a lane (a caller's calls to one function) is on its way
to Redis, the calls that arrive meanwhile wait, and go as one batch when it
returns: one script, one Celery message. A call that arrives alone goes at
once, alone, as Triton's dynamic batcher does by default, so batching adds no
delay at low load; under load the batch grows with the queue of calls, up to
WASMQ_MAX_BATCH.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)
class Item:
    """One call waiting for its batch; `send` sets `outcome` or `error`."""

    payload: Any
    outcome: Any = None
    error: BaseException | None = None
    done: bool = False


@dataclass(eq=False)
class _Lane:
    busy: bool = False
    waiting: list[Item] = field(default_factory=list)


class Batcher:
    def __init__(self, max_batch: int, send: Callable[[list[Item]], None]) -> None:
        self.max_batch, self.send = max_batch, send
        self._cond = threading.Condition()
        self._lanes: dict[Hashable, _Lane] = {}

    def run(self, lane_key: Hashable, payload: object) -> Item:
        """Send `payload` in the next batch of its lane; returns once it was sent."""
        item = Item(payload)
        with self._cond:
            lane = self._lanes.setdefault(lane_key, _Lane())
            lane.waiting.append(item)
        while True:
            with self._cond:
                while not item.done and lane.busy:
                    self._cond.wait()
                if item.done:
                    return item
                batch = lane.waiting[:self.max_batch]
                del lane.waiting[:self.max_batch]
                lane.busy = True
            try:
                self.send(batch)
            except BaseException as exc:  # noqa: BLE001 - handed to every caller of the batch
                for other in batch:
                    if not other.done and other.error is None and other.outcome is None:
                        other.error = exc
            finally:
                with self._cond:
                    for other in batch:
                        other.done = True
                    lane.busy = False
                    if not lane.waiting and self._lanes.get(lane_key) is lane:
                        del self._lanes[lane_key]
                    self._cond.notify_all()
