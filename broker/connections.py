"""Redis clients built from settings; one pool per process, bytes in and out.

Timeouts and retries are bounded so that a Redis outage surfaces as an error
within seconds (the gateway answers 503) instead of hanging a request: one
retry covers a pooled socket that died with a Redis restart.
"""

from __future__ import annotations

import threading

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from wasmq.broker.settings import Settings

SOCKET_CONNECT_TIMEOUT = 2
SOCKET_TIMEOUT = 5

_lock = threading.Lock()
_clients: dict[str, redis.Redis] = {}


def get_redis(settings: Settings) -> redis.Redis:
    """A shared client per URL: connection pools are per process and thread-safe."""
    with _lock:
        client = _clients.get(settings.redis_url)
        if client is None:
            client = redis.Redis.from_url(
                settings.redis_url,
                socket_connect_timeout=SOCKET_CONNECT_TIMEOUT,
                socket_timeout=SOCKET_TIMEOUT,
                health_check_interval=30,
                # Retry once on a dropped connection, never on a timeout: a
                # Redis that hangs must cost a request one timeout, not several.
                retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.25), retries=1,
                            supported_errors=(redis.ConnectionError,)),
            )
            _clients[settings.redis_url] = client
        return client


def reset_clients() -> None:
    """Drop pools inherited across fork so children open their own sockets."""
    with _lock:
        _clients.clear()


# How Redis words a write refused for memory (maxmemory with noeviction); redis-py
# raises OutOfMemoryError for it, or a ResponseError when a script's call was refused
# (a pipeline's error drops the "OOM" prefix).
OOM_REPLY = "command not allowed when used memory > 'maxmemory'"


def storage_full(exc: BaseException) -> bool:
    """Whether Redis refused a write because it is full, not because it is unreachable."""
    return isinstance(exc, redis.exceptions.OutOfMemoryError) or OOM_REPLY in str(exc)
