"""What one caller may hold of a gateway process, and what all of them may: the app's
bounds, as hooks around every request and the way it runs blocking work.

A gateway process serves every request on one event loop; what blocks (a Redis
round trip, a build, a form) runs on a pool of WASMQ_GATEWAY_THREADS threads, and a
call that waits for its task waits on the loop, holding no thread. Each bound, and
what it protects:

* Requests: at most QUEUED_PER_CALLER of one caller's requests are in the app at once
  (waiting for a thread, for their task, or served), and QUEUED_PER_PROCESS of all
  callers'; past them 429 at once. They protect the process's memory and the loop's
  time: each admitted request holds a request object, its body and a task.
* Threads: a caller runs at most a sixteenth of the threads (at least 2) at once; its
  other blocking work waits its turn here, holding no thread. This protects everyone
  else's share of the threads, and of the one GIL they share: a caller with many busy
  threads would take most of every other request's time slices.
* Waits: at most WASMQ_MAX_WAITING calls wait for their task per process; past it a
  call answers at once with statusCode 5 and its resultUrl, as Scailable's contract
  allows. This bounds the waiters the completion listener wakes and the connections
  held open.
* Call rate, counted in this process: a submission past WASMQ_RATE_LIMIT here is
  refused before it costs a round trip to Redis (the cluster-wide count, the one that
  holds across gateways, is Redis's: api/ratelimit.py). At most REFUSALS_KEPT callers'
  windows are kept.
* Refusals: a caller whose submission was just refused with 429 (its tasks in flight,
  a rate rule) gets the same reply for REFUSED_HOLD_S without a round trip, so a
  flood's burst is refused here, cheaply. At most REFUSALS_KEPT callers are held.

`/healthz` is outside the per-caller counts: a probe is answered whoever floods.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import copy_context
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from limits import parse_many
from quart import Quart, Response, current_app, has_request_context, request

from wasmq.api.caller import SCOPE_KEY, read_caller
from wasmq.broker.errors import RateLimited, TooManyInFlight
from wasmq.broker.settings import Settings

QUEUED_PER_CALLER = 512
QUEUED_PER_PROCESS = 8192
REFUSED_HOLD_S = 0.25
REFUSALS_KEPT = 100_000
SUBMIT = "tasks.submit"
COUNTED = "wasmq.counted"  # in the scope: the caller a request is counted against
UNCOUNTED = frozenset({"meta.healthz"})

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(eq=False)
class _Slots:
    """One caller's share: its requests in the app and its threads."""

    threads: asyncio.Semaphore
    requests: int = 0


@dataclass(frozen=True)
class _Held:
    until: float  # time.monotonic()
    status: int
    headers: list[tuple[str, str]]
    body: bytes


class Bounds:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.threads = ThreadPoolExecutor(settings.gateway_threads,
                                          thread_name_prefix="wasmq-http")
        self.per_caller = max(2, settings.gateway_threads // 16)
        self.slots: dict[str, _Slots] = {}
        self.requests = 0
        self.waiting = 0
        self.refused: dict[str, _Held] = {}
        self.rules = parse_many(settings.rate_limit) if settings.rate_limit_enabled else []
        self.windows: dict[tuple[int, str], tuple[float, int]] = {}  # start, calls counted

    def register(self, app: Quart) -> None:
        app.extensions["wasmq.bounds"] = self
        app.before_request(self._admit)
        app.after_request(self._remember_refusal)
        app.teardown_request(self._release)

    # Threads

    def on_thread(self, func: Callable[P, T]) -> Callable[P, Awaitable[T]]:
        """`func` made awaitable: run on the pool, within its caller's share of it."""
        @functools.wraps(func)
        async def run(*args: P.args, **kwargs: P.kwargs) -> T:
            slots = self.slots.get(request.scope[SCOPE_KEY].identity) \
                if has_request_context() and SCOPE_KEY in request.scope else None
            call = functools.partial(copy_context().run, functools.partial(func, *args, **kwargs))
            if slots is None:
                return await asyncio.get_running_loop().run_in_executor(self.threads, call)
            async with slots.threads:
                return await asyncio.get_running_loop().run_in_executor(self.threads, call)

        return run

    # Waits

    @contextmanager
    def wait_place(self):  # noqa: ANN201 - a context manager of bool
        """Yields whether one more call may wait for its task now."""
        if self.waiting >= self.settings.max_waiting:
            yield False
            return
        self.waiting += 1
        try:
            yield True
        finally:
            self.waiting -= 1

    # Hooks

    async def _admit(self) -> Response | None:
        scope, endpoint = request.scope, request.endpoint
        who = scope[SCOPE_KEY] = read_caller(self.settings, scope)
        if endpoint in UNCOUNTED:
            return None
        if endpoint == SUBMIT:
            held = self._still_refused(who.identity)
            if held is not None:
                return Response(held.body, held.status, held.headers)
            self._count_rate(who.identity)
        if self.requests >= QUEUED_PER_PROCESS:
            raise TooManyInFlight(f"more than {QUEUED_PER_PROCESS} requests are waiting to "
                                  f"be served; retry later", retry_after=1)
        slots = self.slots.get(who.identity)
        if slots is None:
            slots = self.slots[who.identity] = _Slots(asyncio.Semaphore(self.per_caller))
        if slots.requests >= QUEUED_PER_CALLER:
            raise TooManyInFlight(f"more than {QUEUED_PER_CALLER} requests of this caller "
                                  f"are waiting to be served; retry later", retry_after=1)
        slots.requests += 1
        self.requests += 1
        scope[COUNTED] = who.identity
        return None

    async def _release(self, exc: BaseException | None) -> None:
        who = request.scope.pop(COUNTED, None)
        if who is None:
            return
        self.requests -= 1
        slots = self.slots.get(who)
        if slots is not None:
            slots.requests -= 1
            if slots.requests <= 0:
                del self.slots[who]  # the table holds only callers being served

    async def _remember_refusal(self, response: Response) -> Response:
        if request.endpoint == SUBMIT and response.status_code == 429:
            if len(self.refused) >= REFUSALS_KEPT:
                self.refused.clear()
            self.refused[request.scope[SCOPE_KEY].identity] = _Held(
                time.monotonic() + REFUSED_HOLD_S, response.status_code,
                list(response.headers.items()), await response.get_data())
        return response

    def _still_refused(self, who: str) -> _Held | None:
        held = self.refused.get(who)
        if held is None:
            return None
        if held.until < time.monotonic():
            del self.refused[who]
            return None
        return held

    def _count_rate(self, who: str) -> None:
        """A fixed window per rule and caller, from its first call, as the `limits`
        library counts; a dict, since its MemoryStorage starts a timer thread every
        few calls to expire them."""
        now = time.monotonic()
        if len(self.windows) >= REFUSALS_KEPT:
            self.windows.clear()
        for i, item in enumerate(self.rules):
            start, calls = self.windows.get((i, who), (now, 0))
            if now - start >= item.get_expiry():
                start, calls = now, 0
            if calls >= item.amount:
                raise RateLimited(f"rate limit of {item} exceeded for this caller; retry "
                                  f"after the time in the Retry-After header",
                                  retry_after=max(1, int(start + item.get_expiry() - now) + 1))
            self.windows[(i, who)] = (start, calls + 1)


def bounds() -> Bounds:
    return current_app.extensions["wasmq.bounds"]
