"""kombu's Redis transport, with one Redis client per channel instead of one per command.

kombu's `Channel.conn_or_acquire` builds a new `redis.Redis` for every
publish, fanout event and acknowledgement. Each build fills redis-py's table
of response callbacks (a few hundred entries), which py-spy showed as the
largest single cost in a worker's main process (about a quarter of its CPU
under load). The clients share the channel's connection pool either way, so
reusing one changes nothing but the cost; a new pool (after a fork or a
reconnect) gets a new client.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis
from kombu.transport import redis as kombu_redis

# What `broker_transport` names, so kombu loads this class for redis:// URLs.
PATH = "wasmq.broker.transport:Transport"


class Channel(kombu_redis.Channel):
    _shared_client: redis.Redis | None = None

    @contextmanager
    def conn_or_acquire(self, client: redis.Redis | None = None) -> Iterator[redis.Redis]:
        if client:
            yield client
            return
        shared = self._shared_client
        if shared is None or shared.connection_pool is not self.pool:
            shared = self._shared_client = self._create_client()
        yield shared


class Transport(kombu_redis.Transport):
    Channel = Channel
