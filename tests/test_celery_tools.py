"""What Celery's own tools see of wasmq's calls: a call is a Celery task whose id is its
tid, a failed call is FAILURE in Celery's events, a running call is listed by `celery
inspect active`. Real Redis, gateway and worker; Celery's public event receiver and
remote control, as Flower and `celery events` use them."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from celery import Celery

from tests import modules
from tests.support import wait_until
from wasmq.broker.celery_app import make_celery
from wasmq.broker.settings import Settings

TRAPS = modules.wasm("(unreachable) (i32.const 0)")


@contextmanager
def events_of(app: Celery) -> Iterator[list[dict]]:
    """Every task event the workers send, as `celery events` receives them."""
    seen: list[dict] = []
    ready = threading.Event()
    with app.connection() as conn:
        receiver = app.events.Receiver(conn, handlers={"*": seen.append})
        thread = threading.Thread(
            target=lambda: (ready.set(), receiver.capture(limit=None, timeout=None,
                                                          wakeup=False)), daemon=True)
        thread.start()
        ready.wait(5)
        time.sleep(1)  # subscribed
        try:
            yield seen
        finally:
            receiver.should_stop = True
            thread.join(5)


def test_a_failed_call_is_a_failure_in_celery_s_events_with_its_cause(private) -> None:
    stack = private(WASMQ_MAX_BATCH="1")
    stack.start_worker("a", concurrency=1)
    api = stack.api()
    app = make_celery(Settings(redis_url=stack.redis_url))
    traps, echo = api.deploy(TRAPS, name="traps"), api.deploy(modules.ECHO, name="echo")
    with events_of(app) as seen:
        failed = api.call(traps, "x", wait=20).json()
        ok = api.call(echo, "fine", wait=20).json()
        assert failed["statusCode"] == 0 and ok["statusCode"] == 1
        wait_until(lambda: {e.get("uuid") for e in seen if e["type"] in
                            ("task-failed", "task-succeeded")} >= {failed["tid"], ok["tid"]},
                   timeout=20, what="the events of both calls")
    by_tid = {(e["uuid"], e["type"]): e for e in seen if "uuid" in e}
    failure = by_tid[(failed["tid"], "task-failed")]
    assert "trapped" in failure["exception"] and failed["tid"] in failure["exception"]
    assert (failed["tid"], "task-succeeded") not in by_tid
    assert (ok["tid"], "task-succeeded") in by_tid
    received = by_tid[(ok["tid"], "task-received")]
    assert received["name"] == "wasmq.run" and ok["tid"] in received["args"]
    assert "fine" not in received["args"]  # the input is not shown to monitors


def test_celery_inspect_active_lists_a_running_call_by_its_tid(private) -> None:
    stack = private(WASMQ_MAX_BATCH="1")
    stack.start_worker("a", concurrency=1)
    api = stack.api()
    app = make_celery(Settings(redis_url=stack.redis_url))
    slow = api.deploy(modules.SLOW, name="slow")
    tid = api.call(slow, "4000 running", wait=0).json()["tid"]
    wait_until(lambda: api.retrieve(tid).json()["status"] == "running", what="the call running")
    active = app.control.inspect(timeout=5).active() or {}
    running = [task for tasks in active.values() for task in tasks]
    assert [t["id"] for t in running] == [tid], active
    assert running[0]["name"] == "wasmq.run"
    assert api.poll(tid, timeout=30)["result"] == "4000 running"


def test_a_call_whose_node_died_is_a_retry_in_celery_s_events(private) -> None:
    stack = private(WASMQ_MAX_BATCH="1")
    doomed = stack.start_worker("a", concurrency=1)
    api = stack.api()
    app = make_celery(Settings(redis_url=stack.redis_url))
    slow = api.deploy(modules.SLOW, name="slow")
    with events_of(app) as seen:
        tid = api.call(slow, "1500 held", wait=0).json()["tid"]
        wait_until(lambda: api.retrieve(tid).json()["status"] == "running", what="running")
        doomed.signal(signal.SIGKILL)
        stack.start_worker("b", concurrency=1)
        assert api.poll(tid, timeout=60)["result"] == "1500 held"
        wait_until(lambda: any(e["type"] == "task-retried" and e.get("uuid") == tid
                               for e in seen), timeout=20, what="the retry event")
    retried = next(e for e in seen if e["type"] == "task-retried" and e.get("uuid") == tid)
    assert "was lost" in retried["exception"]
    received = [e for e in seen if e["type"] == "task-received" and e.get("uuid") == tid]
    assert received and received[-1]["retries"] == 1  # sent again as its second attempt
