"""The floor: a bare Celery task, no wasm, no records, through the same Redis.

Same transport settings as wasmq's own app (msgpack, acks_late, prefetch 1),
plus a Redis result backend so the client can wait for a round trip the usual
Celery way. `celery -A bench.floor_app worker` runs it.
"""

from __future__ import annotations

from celery import Celery

from wasmq.broker.celery_app import make_celery
from wasmq.broker.settings import Settings

QUEUE = "bench-floor"


def make_floor_app(settings: Settings) -> Celery:
    """Task events are off unless the worker is started with -E, as in stock Celery."""
    app = make_celery(settings)
    app.conf.update(result_backend=settings.redis_url, task_ignore_result=False,
                    result_serializer="msgpack",  # wasmq's app accepts nothing else
                    task_default_queue=QUEUE, worker_send_task_events=False)

    @app.task(name="bench.noop", shared=False)
    def noop(x: int) -> int:
        return x

    return app


app = make_floor_app(Settings.from_env())
