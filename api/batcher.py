"""Calls that arrive together travel together: group commit of submissions.

While one batch of a lane (a caller's calls to one function) is on its way to Redis,
the lane's calls that arrive meanwhile wait on the event loop, holding no thread, and
go as the next batch: one script, one Celery message. A call that arrives alone goes
at once (as Triton's dynamic batcher does by default), so batching adds no delay at
low load. Under load a lane also holds a batch that is not full while WASMQ_MAX_BATCH
of its calls are still unanswered (the workers have that many to run first, so a
fuller batch costs its calls no time and the workers fewer messages), for HOLD_S at
most. A client calling one call after another never has calls ahead: it is never held.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

# What `send` returns for each call: its outcome, or the exception it answers with.
Send = Callable[[list[Any]], list[Any]]
HOLD_S = 0.05  # the longest a batch waits to fill while the lane has calls in flight


@dataclass(eq=False)
class _Lane:
    waiting: list[tuple[Any, asyncio.Future]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class Batcher:
    def __init__(self, max_batch: int, send: Send, executor: Executor) -> None:
        self.max_batch, self.send, self.executor = max_batch, send, executor
        self._lanes: dict[Hashable, _Lane] = {}
        self._drains: set[asyncio.Task] = set()  # referenced until done
        self._inflight: dict[Hashable, int] = {}  # per lane: sent, waited for, unanswered

    def sent(self, lane_key: Hashable) -> None:
        """One of the lane's calls was sent and is now waited for."""
        self._inflight[lane_key] = self._inflight.get(lane_key, 0) + 1

    def answered(self, lane_key: Hashable) -> None:
        """A call `sent` counted is answered (or its wait ended)."""
        left = self._inflight.get(lane_key, 0) - 1
        if left > 0:
            self._inflight[lane_key] = left
        else:
            self._inflight.pop(lane_key, None)
        lane = self._lanes.get(lane_key)
        if lane is not None and left < self.max_batch:
            lane.changed.set()

    async def run(self, lane_key: Hashable, payload: object) -> Any:
        """Send `payload` in the next batch of its lane; its outcome once sent."""
        future = asyncio.get_running_loop().create_future()
        lane = self._lanes.get(lane_key)
        if lane is None:
            lane = self._lanes[lane_key] = _Lane()
            drain = asyncio.ensure_future(self._drain(lane_key, lane))
            self._drains.add(drain)
            drain.add_done_callback(self._drains.discard)
        lane.waiting.append((payload, future))
        if len(lane.waiting) >= self.max_batch:
            lane.changed.set()
        return await asyncio.shield(future)  # a client gone does not unsend its call

    async def _drain(self, lane_key: Hashable, lane: _Lane) -> None:
        loop = asyncio.get_running_loop()
        try:
            while lane.waiting:
                await self._hold(lane_key, lane)
                batch = lane.waiting[:self.max_batch]
                del lane.waiting[:self.max_batch]
                try:
                    outcomes = await loop.run_in_executor(
                        self.executor, self.send, [payload for payload, _ in batch])
                except Exception as exc:  # noqa: BLE001 - each call of the batch answers it
                    outcomes = [exc] * len(batch)
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    if not future.done():
                        future.set_result(outcome)
        finally:
            if self._lanes.get(lane_key) is lane:
                del self._lanes[lane_key]
            for _, future in lane.waiting:  # only if the loop is torn down mid-batch
                if not future.done():
                    future.cancel()

    async def _hold(self, lane_key: Hashable, lane: _Lane) -> None:
        deadline = asyncio.get_running_loop().time() + HOLD_S
        while len(lane.waiting) < self.max_batch and \
                self._inflight.get(lane_key, 0) >= self.max_batch:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return
            lane.changed.clear()
            try:
                await asyncio.wait_for(lane.changed.wait(), left)
            except TimeoutError:
                return
