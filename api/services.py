"""Per-app resources, opened once per process and reached through one accessor."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from wasmq.api.submission import Submissions
from wasmq.api.waiter import CompletionListener
from wasmq.broker.builds import BuildStore
from wasmq.broker.celery_app import make_celery
from wasmq.broker.connections import get_redis
from wasmq.broker.protocol.calls import Calls
from wasmq.broker.protocol.queue import TaskQueue
from wasmq.broker.protocol.recovery import LiveQueues
from wasmq.broker.registry import Registry
from wasmq.broker.settings import Settings
from wasmq.broker.store import RedisStore
from wasmq.toolchain.build import Builds
from wasmq.toolchain.jobs import BuildJobs


@dataclass
class Services:
    settings: Settings
    registry: Registry
    tasks: TaskQueue
    listener: CompletionListener
    submissions: Submissions
    builds: Builds
    jobs: BuildJobs  # models: built in the background, resumed if a gateway dies
    live_queues: LiveQueues  # a queued call's reply says when no node consumes its queue

    @classmethod
    def build(cls, settings: Settings) -> "Services":
        client = get_redis(settings)
        tasks = TaskQueue.from_settings(client, settings)
        calls = Calls(make_celery(settings), settings.inline_input_kb * 1024)
        registry, builds = Registry(client, RedisStore(client)), Builds(settings)
        return cls(settings=settings,
                   registry=registry,
                   tasks=tasks,
                   listener=CompletionListener(client),
                   submissions=Submissions(settings, client, tasks, calls),
                   builds=builds,
                   jobs=BuildJobs(BuildStore(registry, settings.build_lease_s), builds,
                                  settings.build_lease_s),
                   live_queues=LiveQueues(client))


def services() -> Services:
    return current_app.extensions["wasmq"]
