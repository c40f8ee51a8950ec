"""Session fixtures: a real redis-server, a real gateway on loopback, and real
Celery worker processes, started once and shared by the tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import Api, start_redis
from wasmq.localstack import Stack, start_stack


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    proc.stop()


@pytest.fixture(scope="session")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("stack"), redis_url)
    yield s
    s.stop()


@pytest.fixture()
def api(stack: Stack) -> Api:
    return Api(stack.url)
