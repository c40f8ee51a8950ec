"""Rate limits on task submissions, counted in the script that creates the task.

Counted per valid API key, else per client address, so an unknown key cannot
buy a fresh allowance. Behind a reverse proxy the client address is the
proxy's unless the proxy's headers are trusted (see the README). Polling
`/retrieve` is not limited: it is cheap and clients poll in loops.

The rules are parsed by the `limits` library (what Flask-Limiter is built on),
which also names each rule's counter. The counting is its fixed window
(INCR, EXPIRE on the first hit of a window), done inside the Lua script that
creates the task (broker/records.py): a submission pays one round trip for
counting, checking its function and queueing (the library's own call was a
tenth of the gateway's CPU in py-spy, and a round trip of its own).
"""

from __future__ import annotations

import hashlib

from flask import request
from limits import parse_many

from wasmq.api.access import valid_key
from wasmq.broker import keys
from wasmq.broker.errors import RateLimited
from wasmq.broker.settings import Settings


def client_identity(settings: Settings) -> str:
    key = valid_key(settings)
    if key is not None:  # a digest, so keys never sit in Redis in clear
        return "key:" + hashlib.sha256(key.encode()).hexdigest()[:32]
    return "addr:" + (request.remote_addr or "unknown")


class RateRules:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.items = parse_many(settings.rate_limit) if settings.rate_limit_enabled else []

    def counters(self) -> tuple[list[str], list[int]]:
        """This request's counter for each rule, and each rule's window and allowance."""
        if not self.items:
            return [], []
        who = client_identity(self.settings)
        return ([f"{keys.RATE_LIMIT}:{item.key_for(who)}" for item in self.items],
                [n for item in self.items for n in (item.get_expiry(), item.amount)])

    def refused(self, rule: int, retry_after: int) -> RateLimited:
        kind = "API key" if valid_key(self.settings) is not None else "client address"
        return RateLimited(f"rate limit of {self.items[rule]} exceeded for this {kind}; retry "
                           f"after the time in the Retry-After header", retry_after=retry_after)
