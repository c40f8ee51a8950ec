"""One channel, listened to for as long as the process lives, across Redis outages.

The gateway's completion listener and the workers' upload listener both need
a thread that survives anything: a dropped connection, a restarted Redis, a
bug in a handler. Messages published while it was not subscribed are lost
(pub/sub keeps nothing), so `on_subscribed` runs on every (re)subscription
for the caller to make up for a gap, and `on_lost` whenever it ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis

log = logging.getLogger("wasmq.subscription")


def listen_forever(client: redis.Redis, channel: str, on_message: Callable[[bytes], None], *,
                   what: str, on_subscribed: Callable[[], None] = lambda: None,
                   on_lost: Callable[[], None] = lambda: None) -> None:
    backoff = 0.1
    while True:
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(channel)
            on_subscribed()
            backoff = 0.1
            while True:
                # A bounded wait keeps redis-py's health checks running and
                # never trips the client's socket timeout on a quiet channel.
                message = pubsub.get_message(timeout=1.0)
                if message and message.get("type") == "message":
                    on_message(message["data"])
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            log.warning("%s lost Redis (%s); reconnecting", what, exc)
        except Exception:  # the thread must outlive any surprise
            log.exception("%s failed; resubscribing", what)
        finally:
            on_lost()
            try:
                pubsub.close()
            except Exception:  # closing a dead connection may itself fail
                pass
        time.sleep(backoff)
        backoff = min(backoff * 2, 2.0)
