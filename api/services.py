"""Per-app resources, opened once per process and reached through one accessor."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from quart import current_app

from wasmq.api.batcher import Batcher
from wasmq.api.submission import Submissions
from wasmq.api.waiter import CompletionListener
from wasmq.broker.builds import BuildStore
from wasmq.broker.celery_app import make_celery
from wasmq.broker.connections import get_redis
from wasmq.broker.metrics import LiveQueues
from wasmq.broker.protocol.calls import Calls
from wasmq.broker.protocol.queue import TaskQueue
from wasmq.broker.protocol.recovery import STALE_S
from wasmq.broker.registry import Registry
from wasmq.broker.settings import Settings
from wasmq.broker.store import RedisStore
from wasmq.toolchain.build import Builds
from wasmq.toolchain.jobs import BuildJobs

SENDERS = 8  # threads sending batches to Redis; each lane has at most one batch on its way


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
    batcher: Batcher  # sends calls, alone or together

    @classmethod
    def build(cls, settings: Settings) -> "Services":
        client = get_redis(settings)
        tasks = TaskQueue.from_settings(client, settings)
        calls = Calls(make_celery(settings), settings.inline_input_kb * 1024)
        registry, builds = Registry(client, RedisStore(client)), Builds(settings)
        submissions = Submissions(settings, client, tasks, calls)
        return cls(settings=settings,
                   registry=registry,
                   tasks=tasks,
                   listener=CompletionListener(client),
                   submissions=submissions,
                   builds=builds,
                   jobs=BuildJobs(BuildStore(registry, settings.build_lease_s), builds,
                                  settings.build_lease_s),
                   live_queues=LiveQueues(client, STALE_S),
                   batcher=Batcher(settings.max_batch, submissions.send,
                                   ThreadPoolExecutor(SENDERS, thread_name_prefix="wasmq-send")))


def services() -> Services:
    return current_app.extensions["wasmq"]
