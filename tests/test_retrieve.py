"""`GET /retrieve/<tid>` shows a task's captured logs and its timings."""

from __future__ import annotations

import re
from datetime import datetime

from tests import hostile, modules
from tests.support import Api

# Writes a line to stdout and one to stderr, then echoes its input.
LOGGER = modules.wasm(imports=modules.FD_WRITE, extra=hostile.WRITE,
                      data='(data (i32.const 100) "to stdout\\n") '
                           '(data (i32.const 120) "to stderr\\n")', pred="""
    (call $write (i32.const 1) (i32.const 100) (i32.const 10))
    (call $write (i32.const 2) (i32.const 120) (i32.const 10))
    (i32.const 0)""")


def _when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def test_retrieve_shows_logs_timings_and_node_of_a_finished_task(api: Api) -> None:
    tid = api.call(api.deploy(LOGGER), "logged").json()["tid"]
    body = api.retrieve(tid).json()
    assert body["statusCode"] == 1 and body["result"] == "logged"
    assert body["logs"] == {"stdout": "to stdout\n", "stderr": "to stderr\n"}
    timings = body["timings"]
    queued, started, finished = (_when(timings[k]) for k in
                                 ("queuedAt", "startedAt", "finishedAt"))
    assert queued <= started <= finished
    assert timings["execMs"] > 0 and timings["queueMs"] >= 0
    assert timings["totalMs"] >= timings["execMs"]
    assert re.fullmatch(r".+:\d+", body["worker"])
    assert body["attempts"] == 1 and body["status"] == "succeeded"


def test_retrieve_keeps_the_logs_of_a_failed_task(api: Api) -> None:
    tid = api.call(api.deploy(hostile.PRED_FAILS_WITH_STDERR), "x").json()["tid"]
    body = api.retrieve(tid).json()
    assert body["statusCode"] == 0 and body["status"] == "failed"
    assert body["logs"]["stderr"] == "bad input: expected digits"
    assert body["timings"]["finishedAt"] is not None and body["node"]
