"""The Celery app, built by one factory from settings for gateway and workers alike.

The delivery guarantees are this configuration, all of it Celery's: a message is
acknowledged after its task finished (`acks_late`); a pool process that dies
mid-task has its task retried (`task_retry_on_worker_lost`, capped by
WASMQ_MAX_ATTEMPTS); a dead node's messages come back after kombu's visibility
timeout, though live nodes send its calls again within seconds (recovery.py).
"""

from __future__ import annotations

from celery import Celery

from wasmq.broker.connections import (
    SOCKET_CONNECT_TIMEOUT,
    SOCKET_TIMEOUT,
    broker_transport_options,
    broker_url,
)
from wasmq.broker.protocol.calls import PRIORITY_STEPS
from wasmq.broker.settings import Settings


def make_celery(settings: Settings) -> Celery:
    app = Celery("wasmq", broker=broker_url(settings))
    app.conf.update(
        task_serializer="msgpack",
        accept_content=["msgpack"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_retry_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=settings.prefetch_multiplier,
        task_default_queue=settings.queue,
        task_default_priority=0,
        task_time_limit=settings.hard_time_limit,
        worker_send_task_events=True,
        task_send_sent_event=False,  # a publish per call; Flower does without it
        worker_disable_rate_limits=True,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a worker waits for Redis forever
        broker_connection_timeout=SOCKET_CONNECT_TIMEOUT,
        # Running tasks go on when Redis drops; claim.lua skips a redelivered copy.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,
            # Look for a dead node's reserved messages every 10 s (kombu's default: 100 s).
            "unacked_restore_interval": min(10, max(1, settings.visibility_timeout // 5)),
            "unacked_restore_throttle": 1,
            "priority_steps": PRIORITY_STEPS,
            "socket_connect_timeout": SOCKET_CONNECT_TIMEOUT,
            "socket_timeout": SOCKET_TIMEOUT,  # above kombu's 1 s BRPOP timeout
            "health_check_interval": 10,
            **broker_transport_options(settings),  # Sentinel's master name, if any
        },
        broker_pool_limit=64,
    )
    return app
