"""Per-app resources, opened once per process and reached through one accessor."""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery
from flask import current_app

from api.ratelimit import SubmissionLimiter
from api.waiter import CompletionListener
from broker.celery_app import make_celery
from broker.connections import get_redis
from broker.engine import make_engine
from broker.jobs import JobMessages
from broker.records import TaskRecords
from broker.registry import FunctionRecord, Registry
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
    limiter: SubmissionLimiter | None  # None when rate limiting is off

    @classmethod
    def build(cls, settings: Settings) -> "Services":
        client = get_redis(settings)
        celery = make_celery(settings)
        return cls(settings=settings,
                   registry=Registry(client, RedisStore(client)),
                   records=TaskRecords(client, settings.result_ttl),
                   celery=celery,
                   jobs=JobMessages(celery, settings.queue),
                   listener=CompletionListener(client),
                   limiter=(SubmissionLimiter(settings, client)
                            if settings.rate_limit_enabled else None))

    def function_for_submission(self, cfid: str) -> FunctionRecord:
        """The function to run, after counting the call against the caller's rate limit."""
        if self.limiter is None:
            return self.registry.get(cfid)
        return self.limiter.function_for_submission(self.registry, cfid)

    _engine = None

    @property
    def engine(self):  # noqa: ANN201 - wasmtime.Engine, built on first upload
        if Services._engine is None:
            Services._engine = make_engine()
        return Services._engine


def services() -> Services:
    return current_app.extensions["wasmq"]
