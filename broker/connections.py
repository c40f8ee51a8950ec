"""Redis clients built from settings; one pool per process, bytes in and out."""

from __future__ import annotations

import threading

import redis

from broker.settings import Settings

_lock = threading.Lock()
_clients: dict[str, redis.Redis] = {}


def get_redis(settings: Settings) -> redis.Redis:
    """A shared client per URL: connection pools are per process and thread-safe."""
    with _lock:
        client = _clients.get(settings.redis_url)
        if client is None:
            client = redis.Redis.from_url(
                settings.redis_url,
                socket_connect_timeout=2,
                socket_timeout=10,
                health_check_interval=30,
                retry_on_timeout=True,
            )
            _clients[settings.redis_url] = client
        return client


def reset_clients() -> None:
    """Drop pools inherited across fork so children open their own sockets."""
    with _lock:
        _clients.clear()
