"""Thousands of waiting calls from one caller freeze nothing: health checks, listings,
polls and another caller's fast calls keep being answered (bench/flood.py measures)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.flood import SLOW_MS, allow_connections, flood
from tests import modules
from tests.stacks import PrivateStack
from tests.support import Api, run_async

CONNECTIONS = 2000


@pytest.fixture(scope="module")
def flooded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateStack]:
    stack = PrivateStack.start(tmp_path_factory.mktemp("flood"),
                               WASMQ_API_KEYS="attacker,other", WASMQ_TASK_TIMEOUT="30")
    stack.start_worker("flood", concurrency=2)
    yield stack
    stack.stop()


def test_two_thousand_waiting_calls_leave_everyone_else_served(flooded: PrivateStack) -> None:
    allow_connections(CONNECTIONS)
    api = Api(flooded.url)
    api.http.headers["Authorization"] = "Bearer other"
    slow, fast = api.deploy(modules.SLOW), api.deploy(modules.ECHO)
    tid = api.call(fast, "x", wait=10).json()["tid"]
    figures = run_async(flood(flooded.url, slow=slow, fast=fast, tid=tid,
                                attacker_key="attacker", other_key="other",
                                module=modules.ECHO, n=CONNECTIONS, seconds=8))
    summary = figures.summary()
    print(summary)
    statuses = figures.attacker
    # In flight: at most 100 (WASMQ_MAX_INFLIGHT), and one more for each that finished;
    # the rest were refused at once, not queued.
    assert statuses[429] >= CONNECTIONS - 100 - 2 * statuses[200] - statuses[0], summary
    # Generous bounds that only a frozen gateway crosses (the figures go to bench/):
    for probe in ("healthz", "functions", "retrieve", "upload"):
        assert summary[f"{probe}_count"] >= 5, summary
        assert summary[f"{probe}_p99_ms"] < 3000, summary  # frozen, it took 20 s and more
    # The other caller's fast call waits for about one of the attacker's tasks, not its
    # backlog of 100 (which would be 100 x 3 s / 2 processes = 150 s).
    assert summary["fast_call_max_ms"] < 3 * SLOW_MS, summary
