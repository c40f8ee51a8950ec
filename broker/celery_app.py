"""The Celery app, built by one factory from settings for gateway and workers alike.

Delivery guarantees come from this configuration: a message is acknowledged
only after its task finished (`acks_late`), a worker process that dies puts its
message back (`reject_on_worker_lost`), and a message whose node died entirely
comes back after `Settings.visibility_timeout`, swept for every few seconds.
"""

from __future__ import annotations

from celery import Celery

from wasmq.broker import transport
from wasmq.broker.connections import (
    SOCKET_CONNECT_TIMEOUT,
    SOCKET_TIMEOUT,
    broker_transport_options,
    broker_url,
)
from wasmq.broker.settings import Settings

RUN_TASK = "wasmq.run"
RUN_BATCH = "wasmq.run_batch"  # calls that travel together (workers/batch.py)

# A publish that cannot reach Redis gives up after about half a second, so the
# gateway answers 503 instead of hanging a request thread (kombu's default
# retries for much longer).
PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2,
                        "interval_max": 0.3}


def restore_interval(settings: Settings) -> int:
    """How often live consumers look for messages a dead node left unacknowledged.

    kombu's default (every 10th call of a 10 s timer) would add 100 s to a
    visibility timeout of seconds.
    """
    return max(1, min(10, settings.visibility_timeout // 5))


def make_celery(settings: Settings) -> Celery:
    app = Celery("wasmq", broker=broker_url(settings))
    app.conf.update(
        broker_transport=transport.SENTINEL_PATH if settings.redis_sentinels else transport.PATH,
        task_serializer="msgpack",
        accept_content=["msgpack"],
        result_serializer="msgpack",
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=settings.prefetch_multiplier,
        task_default_queue=settings.queue,
        task_time_limit=settings.hard_time_limit,
        worker_send_task_events=True,
        # A "sent" event costs the gateway a publish per task under a lock
        # shared by its threads; Flower and `celery inspect` do without it.
        task_send_sent_event=False,
        worker_disable_rate_limits=True,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_connection_retry=True,
        broker_connection_max_retries=None,  # a worker waits for Redis forever
        broker_connection_timeout=SOCKET_CONNECT_TIMEOUT,
        # Running tasks keep going when Redis drops: their record is written
        # once it is back, and the claim script skips a redelivered copy.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        task_publish_retry_policy=PUBLISH_RETRY_POLICY,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,
            "unacked_restore_interval": restore_interval(settings),
            "unacked_restore_throttle": 1,
            "unacked_mutex_expire": min(300, settings.visibility_timeout),
            "socket_connect_timeout": SOCKET_CONNECT_TIMEOUT,
            "socket_timeout": SOCKET_TIMEOUT,  # above kombu's 1 s BRPOP timeout
            "health_check_interval": 10,
            **broker_transport_options(settings),  # Sentinel's master name, if any
        },
        broker_pool_limit=64,
    )
    return app
