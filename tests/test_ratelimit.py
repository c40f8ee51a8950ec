"""Rate limits, counted in the script that creates a task: the `limits` notation, per window."""

from __future__ import annotations

import uuid

import pytest
import redis
from flask import Flask

from wasmq.api.ratelimit import RateRules
from wasmq.api.submission import Submissions
from wasmq.broker.errors import NotFound, RateLimited
from wasmq.broker.records import TaskRecords
from wasmq.broker.settings import Settings

pytestmark = pytest.mark.fast


def test_every_rule_counts_and_the_first_one_exceeded_refuses(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    settings = Settings(redis_url=redis_url, rate_limit="3/minute;5/hour")
    submissions = Submissions(TaskRecords(client, 60), RateRules(settings))
    cfid = f"missing-{uuid.uuid4()}"
    source = {"REMOTE_ADDR": f"10.9.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"}
    with Flask(__name__).test_request_context(environ_base=source):
        for _ in range(3):  # an unknown function still counts: the lookup comes second
            with pytest.raises(NotFound):
                submissions.look_up(cfid)
        with pytest.raises(RateLimited) as refused:
            submissions.look_up(cfid)
    assert "3 per 1 minute" in refused.value.message
    assert 0 < refused.value.retry_after <= 60
    counters = {k.decode(): int(client.get(k)) for k in
                client.scan_iter(match=f"*{source['REMOTE_ADDR']}*")}
    assert sorted(counters.values()) == [3, 4]  # the hour rule was not reached the 4th time
    assert all(0 < client.ttl(k) <= 3600 for k in counters)


def test_no_rules_count_nothing(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    rules = RateRules(Settings(redis_url=redis_url, rate_limit="off"))
    with Flask(__name__).test_request_context():
        assert rules.counters() == ([], [])
        with pytest.raises(NotFound):
            Submissions(TaskRecords(client, 60), rules).look_up(f"missing-{uuid.uuid4()}")
