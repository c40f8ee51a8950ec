"""Rate limits on task submissions, counted in the same round trip that looks up the function.

Counted per valid API key, else per client address, so an unknown key cannot
buy a fresh allowance. Behind a reverse proxy the client address is the
proxy's unless the proxy's headers are trusted (see the README). Polling
`/retrieve` is not limited: it is cheap and clients poll in loops.

The rules are parsed by the `limits` library (what Flask-Limiter is built on),
which also names each rule's counter. The counting is its fixed window
(INCR, EXPIRE on the first hit of a window), done here in one Lua script
that then reads the function's record: a submission pays one round trip for
both instead of one each (the library's own call was a tenth of the gateway's
CPU in py-spy). A refused client learns when its window ends from the same
script.
"""

from __future__ import annotations

import hashlib

import redis
from flask import request
from limits import parse_many

from api.access import valid_key
from broker import keys
from broker.errors import RateLimited
from broker.registry import FunctionRecord, Registry
from broker.settings import Settings

# KEYS[1]: the function's record; KEYS[2..]: one counter per rule.
# ARGV: each rule's window in seconds and allowance, in pairs.
_COUNT_THEN_GET = """
for i = 2, #KEYS do
  local hits = redis.call('INCR', KEYS[i])
  if hits == 1 then redis.call('EXPIRE', KEYS[i], ARGV[2 * i - 3]) end
  if hits > tonumber(ARGV[2 * i - 2]) then
    return {i - 1, redis.call('TTL', KEYS[i])}
  end
end
return {0, redis.call('GET', KEYS[1])}
"""


def client_identity(settings: Settings) -> str:
    key = valid_key(settings)
    if key is not None:  # a digest, so keys never sit in Redis in clear
        return "key:" + hashlib.sha256(key.encode()).hexdigest()[:32]
    return "addr:" + (request.remote_addr or "unknown")


class SubmissionLimiter:
    def __init__(self, settings: Settings, client: redis.Redis) -> None:
        self.settings = settings
        self.items = parse_many(settings.rate_limit)
        self._script = client.register_script(_COUNT_THEN_GET)

    def function_for_submission(self, registry: Registry, cfid: str) -> FunctionRecord:
        """Counts this submission against the caller's allowance, then looks up `cfid`."""
        who = client_identity(self.settings)
        counters = [f"{keys.RATE_LIMIT}:{item.key_for(who)}" for item in self.items]
        windows = [n for item in self.items for n in (item.get_expiry(), item.amount)]
        refused_by, value = self._script(keys=[keys.function(cfid), *counters], args=windows)
        if refused_by:
            kind = "API key" if who.startswith("key:") else "client address"
            raise RateLimited(f"rate limit of {self.items[refused_by - 1]} exceeded for this "
                              f"{kind}; retry after the time in the Retry-After header",
                              retry_after=max(1, value))
        return registry.parse(cfid, value)
