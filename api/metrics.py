"""`GET /metrics`: Prometheus text for the whole cluster, not this process.

The counters and histograms are kept in Redis by the task pipelines (see
broker/metrics.py), so any gateway process answers with the same figures; a
custom collector reads them in one round trip per scrape.
"""

from __future__ import annotations

from collections.abc import Iterator

import redis
from flask import Blueprint, Response, jsonify, request
from flask.typing import ResponseReturnValue
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from wasmq.api.services import services
from wasmq.broker import metrics
from wasmq.broker.causes import Cause
from wasmq.broker.errors import Unavailable
from wasmq.broker.protocol import recovery

bp = Blueprint("metrics", __name__)


class ClusterCollector(Collector):
    def __init__(self, client: redis.Redis, queue: str) -> None:
        self.redis, self.queue = client, queue

    def collect(self) -> Iterator[Metric]:
        snap = metrics.read(self.redis, self.queue)
        yield _counter("wasmq_tasks_submitted", "Tasks accepted by the gateways.",
                       snap.submitted)
        yield _counter("wasmq_tasks_succeeded", "Tasks that finished with a result.",
                       snap.succeeded)
        failed = CounterMetricFamily("wasmq_tasks_failed",
                                     "Tasks that failed, by cause.", labels=["cause"])
        # Every cause has its series from the start, so a rate() over it works.
        for cause in sorted({c.value for c in Cause} | set(snap.failed)):
            failed.add_metric([cause], snap.failed.get(cause, 0))
        yield failed
        yield _histogram("wasmq_task_execution_seconds",
                         "Time the module ran (instantiate to output), per task.",
                         snap.exec_seconds)
        yield _histogram("wasmq_task_end_to_end_seconds",
                         "Time from submission to the stored result, per task.",
                         snap.e2e_seconds)
        yield GaugeMetricFamily("wasmq_queue_depth", "Tasks waiting in the default queue.",
                                value=snap.queue_depth)
        yield GaugeMetricFamily("wasmq_tasks_running",
                                "Tasks claimed by a worker node and not yet finished.",
                                value=snap.running)
        yield GaugeMetricFamily("wasmq_workers_live",
                                "Worker nodes with a heartbeat in the last "
                                f"{metrics.HEARTBEAT_STALE_S:g} s.", value=len(snap.workers))
        yield GaugeMetricFamily("wasmq_worker_processes_live",
                                "Pool processes of the live worker nodes.",
                                value=sum(snap.workers.values()))


def _counter(name: str, doc: str, value: int) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _histogram(name: str, doc: str, h: metrics.Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, buckets=h.buckets, sum_value=h.sum)


@bp.get("/metrics")
def scrape() -> ResponseReturnValue:
    svc = services()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(svc.tasks.redis, svc.settings.queue))
    # The text format (or OpenMetrics) the scraper asks for, as the library's
    # own HTTP handler negotiates it.
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    try:
        body = encode(registry)
    except redis.RedisError as exc:
        raise Unavailable(f"metrics are kept in Redis, which is unavailable ({exc})") from None
    return Response(body, content_type=content_type)


@bp.get("/metrics/queues")
def queues() -> ResponseReturnValue:
    """Per Celery queue: calls waiting and live nodes consuming it, as JSON (KEDA's
    metrics-api scaler reads `<queue>.queued`: deploy/k8s/keda.yaml)."""
    svc = services()
    try:
        return jsonify(metrics.queues(svc.tasks.redis, svc.settings.queue, recovery.STALE_S))
    except redis.RedisError as exc:
        raise Unavailable(f"metrics are kept in Redis, which is unavailable ({exc})") from None
