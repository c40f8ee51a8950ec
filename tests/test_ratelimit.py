"""Rate rules in the `limits` notation, for calls and for input bytes, counted by submit.lua."""

from __future__ import annotations

import uuid

import pytest
import redis
from flask import Flask

from tests.queue_bench import Bench, bench_fixture  # noqa: F401 - the fixture
from wasmq.api.ratelimit import RateRules, caller
from wasmq.broker.protocol.queue import Admitted
from wasmq.broker.settings import Settings

pytestmark = pytest.mark.fast


def test_every_rule_counts_and_the_first_one_exceeded_refuses(bench: Bench) -> None:
    settings = Settings(rate_limit="3/minute;5/hour", rate_limit_bytes="off")
    rules = RateRules(settings)
    source = {"REMOTE_ADDR": f"10.9.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"}
    with Flask(__name__).test_request_context(environ_base=source):
        who = caller(settings)
    counters = rules.counters(who, 10)
    costs = tuple(c.cost for c in counters)
    refusals = [bench.submit(bench.new(costs=costs), counters=counters) for _ in range(4)]
    assert all(isinstance(r, Admitted) for r in refusals[:3]) and refusals[3].rule == 0
    refused = rules.refused(refusals[3].rule, refusals[3].retry_after, who)
    assert "3 per 1 minute" in refused.message and "client address" in refused.message
    assert 0 < refused.retry_after <= 60
    client: redis.Redis = bench.client
    values = {k.decode(): int(client.get(k)) for k in
              client.scan_iter(match=f"*{source['REMOTE_ADDR']}*")}
    assert sorted(values.values()) == [3, 4]  # the hour rule was not reached the 4th time
    assert all(0 < client.ttl(k) <= 3600 for k in values)


def test_byte_rules_count_each_call_s_input_size() -> None:
    rules = RateRules(Settings(rate_limit="off", rate_limit_bytes="1000/minute"))
    with Flask(__name__).test_request_context():
        who = caller(Settings())
    (counter,) = rules.counters(who, 700)
    assert (counter.cost, counter.allowance, counter.window_s) == (700, 1000, 60)
    assert "1000 input bytes per 60 s" in rules.refused(0, 5, who).message


def test_no_rules_count_nothing() -> None:
    rules = RateRules(Settings(rate_limit="off", rate_limit_bytes="off"))
    with Flask(__name__).test_request_context():
        assert rules.counters(caller(Settings()), 10) == ()
