"""Observability: /metrics for the whole cluster, JSON logs with the tid,
Celery's own tools (inspect) against wasmq workers, the liveness probe."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests import modules
from tests.support import INTSUM, ROOT, Api, wait_until
from wasmq.broker.celery_app import make_celery
from wasmq.broker.settings import Settings


def scrape(api: Api) -> dict[str, float]:
    response = requests.get(f"{api.url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return samples


def test_metrics_count_tasks_by_outcome_and_time_them(api: Api) -> None:
    ok, pred, trap = (api.deploy(m) for m in (INTSUM.read_bytes(), modules.FAILING_PRED,
                                                modules.TRAPPING))
    before = scrape(api)
    assert api.call(ok, "[1,2]").json()["statusCode"] == 1
    assert api.call(pred, "x").json()["statusCode"] == 0
    assert api.call(trap, "x").json()["statusCode"] == 0
    after = scrape(api)

    def delta(name: str) -> float:
        return after.get(name, 0) - before.get(name, 0)

    assert delta("wasmq_tasks_submitted_total") >= 3
    assert delta("wasmq_tasks_succeeded_total") >= 1
    assert delta("wasmq_tasks_failed_total{cause=pred_failed}") == 1
    assert delta("wasmq_tasks_failed_total{cause=trap}") == 1
    assert delta("wasmq_task_execution_seconds_count") >= 1
    assert delta("wasmq_task_end_to_end_seconds_count") >= 3
    assert delta("wasmq_task_end_to_end_seconds_sum") > 0
    assert after["wasmq_task_end_to_end_seconds_bucket{le=+Inf}"] == \
        after["wasmq_task_end_to_end_seconds_count"]
    assert after["wasmq_queue_depth"] >= 0 and "wasmq_tasks_running" in after
    assert after["wasmq_workers_live"] >= 1 and after["wasmq_worker_processes_live"] >= 2
    assert "/metrics" in requests.get(f"{api.url}/openapi.json", timeout=10).json()["paths"]


def test_a_module_too_big_for_the_memory_limit_counts_as_memory(api: Api) -> None:
    cfid = api.deploy(modules.wasm(pages=5000))  # 320 MB > the 256 MB limit
    before = scrape(api).get("wasmq_tasks_failed_total{cause=memory}", 0)
    body = api.call(cfid, "x").json()
    assert body["statusCode"] == 0 and "linear memory" in body["message"], body
    assert scrape(api)["wasmq_tasks_failed_total{cause=memory}"] == before + 1


def json_lines(text: str) -> list[dict]:
    lines = []
    for line in text.splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def test_gateway_and_worker_logs_are_json_lines_carrying_the_tid(api: Api, stack) -> None:
    cfid = api.deploy(INTSUM.read_bytes())
    tid = api.call(cfid, "[7,8]").json()["tid"]
    worker = wait_until(lambda: [r for r in json_lines(stack.worker.output())
                                 if r.get("tid") == tid], what="worker lines with the tid")
    assert "wasmq.worker" in {r["logger"] for r in worker}
    assert all({"time", "level", "pid", "message"} <= set(r) for r in worker)
    assert not any("[7,8]" in json.dumps(r) for r in worker), "inputs stay out of logs"
    gateway = wait_until(lambda: [r for r in json_lines(stack.gateway.output())
                                  if r.get("tid") == tid], what="gateway line with the tid")
    assert gateway[0]["logger"] == "wasmq.gateway.request" and gateway[0]["status"] == 200


def test_celery_inspect_ping_answers_from_the_wasmq_worker(stack) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "wasmq.workers.celery_main", "inspect", "ping",
         "--timeout", "5"], cwd=ROOT, env=stack.env, capture_output=True, text=True,
        timeout=60)
    assert result.returncode == 0, result.stderr
    name = f"w{stack.url.rsplit(':', 1)[1]}@{socket.gethostname()}"
    assert f"{name}: OK" in result.stdout and "pong" in result.stdout, result.stdout


def test_wasmq_alive_reads_the_worker_heartbeat(stack) -> None:
    beat = stack.workdir / "heartbeat"
    wait_until(beat.exists, what="heartbeat file")

    def alive(path: str, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "wasmq", "alive", path, *extra],
                              cwd=ROOT, env=stack.env, capture_output=True, text=True,
                              timeout=30)

    assert alive(str(beat)).returncode == 0
    stale = stack.workdir / "stale-heartbeat"
    stale.touch()
    os.utime(stale, (time.time() - 120, time.time() - 120))
    late = alive(str(stale), "--max-age", "60")
    # 120 s, or a little more on a loaded machine (the command takes a while to start)
    assert late.returncode == 1 and re.search(r"last heartbeat 12\d s ago", late.stderr)
    missing = alive(str(stack.workdir / "nothing"))
    assert missing.returncode == 1 and "no heartbeat" in missing.stderr


def test_task_events_reach_a_monitor_such_as_flower(stack, api: Api) -> None:
    """Celery sends every task event; a receiver (Flower, `celery events`) gets every one."""
    app = make_celery(Settings(redis_url=stack.redis_url))
    seen: dict[str, set[str]] = defaultdict(set)

    def on_event(event: dict) -> None:
        if event["type"].startswith("task-"):
            seen[event.get("uuid", "")].add(event["type"])

    with app.connection_for_read() as conn:
        receiver = app.events.Receiver(conn, handlers={"*": on_event})
        listening = threading.Thread(target=receiver.capture, kwargs={"wakeup": False},
                                     daemon=True)
        listening.start()
        cfid = api.deploy(INTSUM.read_bytes())
        called: list[str] = []

        def a_call_fully_seen() -> bool:
            # The first calls may run before the receiver has subscribed.
            called.append(api.call(cfid, "[[1, 2]]").json()["tid"])
            return any(seen[t] >= {"task-received", "task-started", "task-succeeded"}
                       for t in called)

        try:
            wait_until(a_call_fully_seen, timeout=30, interval=0.3, what="all three events")
        finally:
            receiver.should_stop = True
            listening.join(timeout=5)
    app.close()
