"""Per-app resources, opened once per process and reached through one accessor."""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery
from flask import current_app

from wasmq.api.ratelimit import RateRules
from wasmq.api.submission import Submissions
from wasmq.api.waiter import CompletionListener
from wasmq.broker.celery_app import make_celery
from wasmq.broker.connections import get_redis
from wasmq.broker.jobs import JobMessages
from wasmq.broker.records import TaskRecords
from wasmq.broker.registry import Registry
from wasmq.broker.settings import Settings
from wasmq.broker.store import RedisStore
from wasmq.toolchain.build import Builds


@dataclass
class Services:
    settings: Settings
    registry: Registry
    records: TaskRecords
    celery: Celery
    jobs: JobMessages
    listener: CompletionListener
    submissions: Submissions
    builds: Builds

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
                   submissions=Submissions(records, RateRules(settings)),
                   builds=Builds(settings))


def services() -> Services:
    return current_app.extensions["wasmq"]
