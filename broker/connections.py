"""Redis clients built from settings; one pool per process, bytes in and out.

Timeouts and retries are bounded so that a Redis outage surfaces as an error
within seconds (the gateway answers 503) instead of hanging a request: one
retry covers a pooled socket that died with a Redis restart.

Behind Sentinel (`WASMQ_REDIS_SENTINELS`) every client is redis-py's
sentinel-managed client: each new connection asks the sentinels for the
current primary, and a connection to a primary that was demoted fails (as a
ConnectionError), so after a failover the next command reaches the new one.
During the switch commands fail like any outage: 503 with a message.
"""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import quote

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from wasmq.broker.settings import Settings

SOCKET_CONNECT_TIMEOUT = 2
SOCKET_TIMEOUT = 5

_lock = threading.Lock()
_clients: dict[tuple, redis.Redis] = {}


def _key(settings: Settings) -> tuple:
    return (settings.redis_url, settings.redis_sentinels, settings.redis_master,
            settings.redis_password, settings.redis_sentinel_password)


def get_redis(settings: Settings) -> redis.Redis:
    """A shared client per Redis: connection pools are per process and thread-safe."""
    with _lock:
        client = _clients.get(_key(settings))
        if client is None:
            client = _clients[_key(settings)] = new_client(
                settings, health_check_interval=30,
                # Retry once on a dropped connection, never on a timeout: a
                # Redis that hangs must cost a request one timeout, not several.
                retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.25), retries=1,
                            supported_errors=(redis.ConnectionError,)))
        return client


def new_client(settings: Settings, **options: Any) -> redis.Redis:
    """A client with its own pool (for a thread that must not share one), following
    the Sentinel primary when one is configured."""
    options = {"socket_connect_timeout": SOCKET_CONNECT_TIMEOUT,
               "socket_timeout": SOCKET_TIMEOUT, **options}
    if not settings.redis_sentinels:
        return redis.Redis.from_url(settings.redis_url, **options)
    sentinel_options = {"socket_connect_timeout": SOCKET_CONNECT_TIMEOUT,
                        "socket_timeout": SOCKET_TIMEOUT}
    if settings.redis_sentinel_password:
        sentinel_options["password"] = settings.redis_sentinel_password
    sentinel = Sentinel(settings.sentinels, sentinel_kwargs=sentinel_options)
    return sentinel.master_for(settings.redis_master, db=settings.redis_db,
                               password=settings.redis_password or None, **options)


def broker_url(settings: Settings) -> str:
    """The URL kombu connects to: the Redis URL, or kombu's list of sentinels."""
    if not settings.redis_sentinels:
        return settings.redis_url
    auth = f":{quote(settings.redis_password, safe='')}@" if settings.redis_password else ""
    return ";".join(f"sentinel://{auth}{f'[{host}]' if ':' in host else host}:{port}/"
                    f"{settings.redis_db}" for host, port in settings.sentinels)


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    """What kombu's sentinel transport needs beyond the URL (nothing without Sentinel)."""
    if not settings.redis_sentinels:
        return {}
    options: dict[str, Any] = {"master_name": settings.redis_master}
    sentinel_kwargs: dict[str, Any] = {"socket_connect_timeout": SOCKET_CONNECT_TIMEOUT,
                                       "socket_timeout": SOCKET_TIMEOUT}
    if settings.redis_sentinel_password:
        sentinel_kwargs["password"] = settings.redis_sentinel_password
    options["sentinel_kwargs"] = sentinel_kwargs
    return options


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
