"""Entry point for `celery -A workers.celery_main` (worker, inspect, events)."""

from broker.settings import Settings
from workers.node import build_worker_app

settings = Settings.from_env()
app = build_worker_app(settings)
