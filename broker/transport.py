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

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis
from kombu.transport import redis as kombu_redis

from wasmq.broker.connections import storage_full

log = logging.getLogger("wasmq.worker")
# How often a message taken while Redis is full tries again to be recorded as unacked.
FULL_RETRY_S = 0.5

# What `broker_transport` names, so kombu loads this class for redis:// URLs.
PATH = "wasmq.broker.transport:Transport"


class QoS(kombu_redis.QoS):
    """kombu's unacked bookkeeping, which waits out a full Redis.

    kombu takes a message off the queue (BRPOP) and then records it as unacked;
    when Redis refuses that write for memory, kombu raises, the worker's consumer
    dies ("Unrecoverable error"), and the message, in neither place, is lost. So the
    write is retried until Redis has room again (results expire, an operator
    raises maxmemory); the consumer takes nothing else meanwhile."""

    def append(self, message: object, delivery_tag: str) -> None:
        while True:
            try:
                return super().append(message, delivery_tag)
            except redis.RedisError as exc:
                if not storage_full(exc):
                    raise
                log.warning("storage is full: waiting to record message %s as unacked",
                            delivery_tag)
                time.sleep(FULL_RETRY_S)


class Channel(kombu_redis.Channel):
    QoS = QoS
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
