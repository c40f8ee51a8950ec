"""The rate rules a call is counted against, in Redis, across every gateway.

Counted per caller (api/caller.py). Polling `/retrieve` is not limited: it is
cheap and clients poll in loops.

The rules are parsed by the `limits` library (what Flask-Limiter is built on),
which also names each rule's counter. The counting is its fixed window
(INCRBY, EXPIRE on the first hit of a window), done inside submit.lua, the
script that creates the task: a submission pays one round trip for counting,
checking its function and queueing. Calls and input bytes have rules of their
own (`WASMQ_RATE_LIMIT`, `WASMQ_RATE_LIMIT_BYTES`); a byte rule counts the
call's input size.
"""

from __future__ import annotations

from dataclasses import dataclass

from limits import RateLimitItem, parse_many

from wasmq.api.caller import Caller
from wasmq.broker import keys
from wasmq.broker.errors import RateLimited
from wasmq.broker.protocol.queue import RateCounter
from wasmq.broker.settings import Settings, rate_enabled


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
