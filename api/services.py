"""Per-app resources, opened once per process and reached through one accessor."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from wasmq.api.ratelimit import RateRules
from wasmq.api.submission import Submissions
from wasmq.api.waiter import CompletionListener
from wasmq.broker.celery_app import make_celery
from wasmq.broker.connections import get_redis
from wasmq.broker.engine import make_engine
from wasmq.broker.jobs import JobMessages
from wasmq.broker.records import TaskRecords
from wasmq.broker.registry import Registry
from wasmq.broker.settings import Settings
from wasmq.broker.store import RedisStore


@dataclass
class Services:
    settings: Settings
    registry: Registry
    records: TaskRecords
    jobs: JobMessages
    listener: CompletionListener
    submissions: Submissions

    @classmethod
    def build(cls, settings: Settings) -> "Services":
        client = get_redis(settings)
        records = TaskRecords(client, settings.result_ttl)
        return cls(settings=settings,
                   registry=Registry(client, RedisStore(client)),
                   records=records,
                   jobs=JobMessages(make_celery(settings), settings.queue),
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
