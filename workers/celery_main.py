"""Entry point for `celery -A workers.celery_main` (worker, inspect, events)."""

from broker.celery_app import make_celery
from broker.settings import Settings
from workers.tasks import register_tasks

settings = Settings.from_env()
app = make_celery(settings)
register_tasks(app, settings)
