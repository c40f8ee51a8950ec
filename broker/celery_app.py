"""The Celery app, built by one factory from settings for gateway and workers alike."""

from __future__ import annotations

from celery import Celery

from broker import transport
from broker.settings import Settings

RUN_TASK = "wasmq.run"


def make_celery(settings: Settings) -> Celery:
    app = Celery("wasmq", broker=settings.redis_url)
    app.conf.update(
        broker_transport=transport.PATH,
        task_serializer="msgpack",
        accept_content=["msgpack"],
        result_serializer="msgpack",
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        task_default_queue=settings.queue,
        task_time_limit=settings.hard_time_limit,
        worker_send_task_events=True,
        # A "sent" event costs the gateway a publish per task under a lock
        # shared by its threads; Flower and `celery inspect` do without it.
        task_send_sent_event=False,
        worker_disable_rate_limits=True,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,
            "socket_connect_timeout": 2,
        },
        broker_pool_limit=64,
    )
    return app
