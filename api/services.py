"""Per-app resources, opened once per process and reached through one accessor."""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery
from flask import current_app

from api.ratelimit import RateRules
from api.submission import Submissions
from api.waiter import CompletionListener
from broker.celery_app import make_celery
from broker.connections import get_redis
from broker.engine import make_engine
from broker.jobs import JobMessages
from broker.records import TaskRecords
from broker.registry import Registry
from broker.settings import Settings
from broker.store import RedisStore


@dataclass
class Services:
    settings: Settings
    registry: Registry
    records: TaskRecords
    celery: Celery
    jobs: JobMessages
    listener: CompletionListener
    submissions: Submissions

    @classmethod
    def build(cls, settings: Settings) -> "Services":
        client = get_redis(settings)
        celery = make_celery(settings)
        records = TaskRecords(client, settings.result_ttl)
        return cls(settings=settings,
                   registry=Registry(client, RedisStore(client)),
                   records=records,
                   celery=celery,
                   jobs=JobMessages(celery, settings.queue),
                   listener=CompletionListener(client),
                   submissions=Submissions(records, RateRules(settings)))

    _engine = None

    @property
    def engine(self):  # noqa: ANN201 - wasmtime.Engine, built on first upload
        if Services._engine is None:
            Services._engine = make_engine()
        return Services._engine


def services() -> Services:
    return current_app.extensions["wasmq"]
