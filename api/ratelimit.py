"""Who a call comes from, and the rate rules it is counted against.

Counted per valid API key, else per client address, so an unknown key cannot
buy a fresh allowance. Behind a reverse proxy the client address is the
proxy's unless the proxy's headers are trusted (see the README). Polling
`/retrieve` is not limited: it is cheap and clients poll in loops.

The rules are parsed by the `limits` library (what Flask-Limiter is built on),
which also names each rule's counter. The counting is its fixed window
(INCRBY, EXPIRE on the first hit of a window), done inside enqueue.lua, the
script that creates the task: a submission pays one round trip for counting,
checking its function and queueing. Calls and input bytes have rules of their
own (`WASMQ_RATE_LIMIT`, `WASMQ_RATE_LIMIT_BYTES`); a byte rule counts the
call's input size.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from flask import request
from limits import RateLimitItem, parse_many

from wasmq.api.access import presented_key, server_key
from wasmq.broker import keys
from wasmq.broker.errors import RateLimited
from wasmq.broker.protocol.queue import RateCounter
from wasmq.broker.settings import Settings, rate_enabled


@dataclass(frozen=True)
class Caller:
    """A call's submitter: `identity` names its counters and accounting in Redis."""

    identity: str
    by_key: bool
    presented: str | None = None  # the key sent, valid or not: private functions check it

    @property
    def kind(self) -> str:
        return "API key" if self.by_key else "client address"


def identity(settings: Settings, presented: str | None, address: str) -> str:
    """A valid key's digest (keys never sit in Redis in clear), else the address, so an
    unknown key buys no allowance of its own."""
    key = server_key(settings, presented)
    if key is not None:
        return "key:" + hashlib.sha256(key.encode()).hexdigest()[:32]
    return "addr:" + (address or "unknown")


def caller(settings: Settings) -> Caller:
    return caller_of(settings, presented_key(), request.remote_addr or "")


def caller_of(settings: Settings, presented: str | None, address: str) -> Caller:
    key = server_key(settings, presented)
    return Caller(identity(settings, key, address), key is not None, presented)


@dataclass(frozen=True)
class _Rule:
    item: RateLimitItem
    per_byte: bool

    def describe(self) -> str:
        return f"{self.item.amount} input bytes per {self.item.get_expiry()} s" \
            if self.per_byte else str(self.item)


class RateRules:
    def __init__(self, settings: Settings) -> None:
        self.rules = [_Rule(item, per_byte)
                      for rate, per_byte in ((settings.rate_limit, False),
                                             (settings.rate_limit_bytes, True))
                      if rate_enabled(rate) for item in parse_many(rate)]

    def counters(self, who: Caller, size: int) -> tuple[RateCounter, ...]:
        """This call's counter for each rule, with what the call costs under it."""
        return tuple(RateCounter(key=f"{keys.RATE_LIMIT}:{'b:' if r.per_byte else ''}"
                                     f"{r.item.key_for(who.identity)}",
                                 window_s=r.item.get_expiry(), allowance=r.item.amount,
                                 cost=size if r.per_byte else 1)
                     for r in self.rules)

    def refused(self, rule: int, retry_after: int, who: Caller) -> RateLimited:
        return RateLimited(f"rate limit of {self.rules[rule].describe()} exceeded for this "
                           f"{who.kind}; retry after the time in the Retry-After header",
                           retry_after=retry_after)
