"""Rate limits on task submissions, counted in the same Redis.

Counted per valid API key, else per client address, so an unknown key cannot
buy a fresh allowance. Behind a reverse proxy the client address is the
proxy's unless the proxy's headers are trusted (see the README). Polling
`/retrieve` is not limited: it is cheap and clients poll in loops.

The `limits` library (what Flask-Limiter is built on) is used directly: one
Lua call per submission on the gateway's own Redis pool, and the window's
reset time is read only when a client is refused. Flask-Limiter's decorator
added response-header bookkeeping with further round trips to every call.
"""

from __future__ import annotations

import hashlib
import math
import time

from flask import Flask, request
from limits import parse_many
from limits.storage import RedisStorage
from limits.strategies import FixedWindowRateLimiter

from api.access import valid_key
from api.services import services
from broker import keys
from broker.connections import get_redis
from broker.errors import RateLimited
from broker.settings import Settings

LIMITED_ENDPOINTS = ("tasks.submit",)


def client_identity() -> str:
    key = valid_key(services().settings)
    if key is not None:  # a digest, so keys never sit in Redis in clear
        return "key:" + hashlib.sha256(key.encode()).hexdigest()[:32]
    return "addr:" + (request.remote_addr or "unknown")


class SubmissionLimiter:
    def __init__(self, settings: Settings) -> None:
        self.items = parse_many(settings.rate_limit)
        storage = RedisStorage(settings.redis_url, key_prefix=keys.RATE_LIMIT,
                               connection_pool=get_redis(settings).connection_pool)
        self.strategy = FixedWindowRateLimiter(storage)

    def check(self) -> None:
        who = client_identity()
        for item in self.items:
            if not self.strategy.hit(item, who):
                reset_at, _ = self.strategy.get_window_stats(item, who)
                kind = "API key" if who.startswith("key:") else "client address"
                raise RateLimited(f"rate limit of {item} exceeded for this {kind}; retry "
                                  f"after the time in the Retry-After header",
                                  retry_after=max(1, math.ceil(reset_at - time.time())))


def install_rate_limit(app: Flask, settings: Settings) -> SubmissionLimiter | None:
    if not settings.rate_limit_enabled:
        return None
    limiter = SubmissionLimiter(settings)

    @app.before_request
    def limit_submissions() -> None:
        if request.endpoint in LIMITED_ENDPOINTS:
            limiter.check()

    return limiter
