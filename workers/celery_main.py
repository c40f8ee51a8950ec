"""Entry point for `celery -A wasmq.workers.celery_main` (worker, inspect, events)."""

from wasmq.broker.settings import Settings
from wasmq.workers.node import build_worker_app

settings = Settings.from_env()
app = build_worker_app(settings)
