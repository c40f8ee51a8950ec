"""kombu's Redis transport, with one Redis client per channel instead of one per command,
and a record of which node holds each unacknowledged message.

Who holds what: kombu's `unacked` entries do not say which consumer holds a
message, so a dead node's messages wait for the visibility timeout. `QoS`
records each delivery tag in a hash of this node (keys.held), in the same
pipeline that writes kombu's entries, so that live nodes can put a dead
node's messages back at once (broker/nodes.py). Acknowledging, rejecting and
restoring at shutdown touch kombu's entries only while this node still holds
the message: a node that was paused and taken for dead must not remove the
entries of the node that now runs the message, nor push it back a second time.
tests/test_node_recovery.py pins each override to kombu's own path.

Taking a message: kombu's BRPOP takes it off the queue, and the record as
unacknowledged comes in a later command; a node killed in between (and the
reply may wait unread for as long as the node's pool is busy) lost the message,
which only the resend of lost messages found, minutes later. So a channel that
consumes one queue key takes with BLMOVE into the node's own taking list
(keys.taking), and take.lua moves it from there into kombu's entries and the held
record in one step; live nodes put a dead node's taking list back with its held
messages (requeue_dead.lua).

Restores that could not reach Redis: when a worker loses Redis (a primary killed, a
failover), Celery closes the connection while Redis is gone, so kombu's restore of
the delivered messages fails and they would wait for the visibility timeout. They are
remembered, and the process's next channel (Celery's reconnect) puts them back.

One client per channel: kombu's `Channel.conn_or_acquire` builds a new `redis.Redis` for every
publish, fanout event and acknowledgement. Each build fills redis-py's table
of response callbacks (a few hundred entries), which py-spy showed as the
largest single cost in a worker's main process (about a quarter of its CPU
under load). The clients share the channel's connection pool either way, so
reusing one changes nothing but the cost; a new pool (after a fork or a
reconnect) gets a new client.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from queue import Empty
from time import monotonic, sleep, time

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

from wasmq.broker import keys, nodes
from wasmq.broker.connections import storage_full
from wasmq.broker.protocol import lua

# What `broker_transport` names, so kombu loads this class for redis:// URLs,
# and the Sentinel flavour for sentinel:// ones.
PATH = "wasmq.broker.transport:Transport"
log = logging.getLogger("wasmq.worker")
# How often a message taken while Redis is full tries again to be recorded as unacked.
FULL_RETRY_S = 0.5
SENTINEL_PATH = "wasmq.broker.transport:SentinelTransport"
# (held key, delivery tag) of messages this process could not put back at close.
_unrestored: set[tuple[str, str]] = set()
# Taking lists (keys.taking) of this process that may hold a message no channel will
# record (a BLMOVE reply lost with its connection, a record that failed, a channel
# closed with a BLMOVE in flight): the next channel that takes from them puts them
# back first.
_give_back: set[str] = set()


class QoS(kombu_redis.QoS):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._queues: dict[tuple[str, str, int], str] = {}

    @property
    def held_key(self) -> str:
        # Read per call: the identity changes in a forked child.
        return keys.held(nodes.identity())

    def append(self, message: virtual.Message, delivery_tag: str) -> None:
        """kombu's `append`, plus the held record in the same step.

        A message this channel took with BLMOVE leaves the node's taking list in that
        step too (take.lua); if it is no longer there, live nodes took this node for
        dead and put it back on the queue, and it is not delivered here (`GivenBack`).

        When Redis refuses the write for memory, kombu raises and the worker's consumer
        dies ("Unrecoverable error"); so the write is retried until Redis has room
        again (results expire, an operator raises maxmemory); the consumer takes
        nothing else meanwhile."""
        delivery = message.delivery_info
        exchange, routing_key = delivery["exchange"], delivery["routing_key"]
        queues = self._restore_queues(message._raw, exchange, routing_key)
        channel = self.channel
        taken, channel._taken = channel._taken, None
        entry = dumps([message._raw, exchange, routing_key])
        while True:
            try:
                if taken is not None:
                    with channel.conn_or_acquire() as client:
                        script = lua.register(client, "take")
                        recorded = script(keys=[keys.taking(nodes.identity(), taken[0]),
                                                self.held_key, self.unacked_key,
                                                self.unacked_index_key],
                                          args=[taken[1], delivery_tag, time(), entry, queues])
                    if not recorded:
                        raise GivenBack(delivery_tag)
                else:
                    with self.pipe_or_acquire() as pipe:
                        pipe.zadd(self.unacked_index_key, {delivery_tag: time()}) \
                            .hset(self.unacked_key, delivery_tag, entry) \
                            .hset(self.held_key, delivery_tag, queues) \
                            .execute()
                break
            except redis.RedisError as exc:
                if not storage_full(exc):
                    if taken is not None:  # still in the taking list
                        _give_back.add(keys.taking(nodes.identity(), taken[0]))
                    raise
                log.warning("storage is full: waiting to record message %s as unacked",
                            delivery_tag)
                sleep(FULL_RETRY_S)
        virtual.QoS.append(self, message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        self._release(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if requeue:
            self._restore_if_held(delivery_tag, leftmost=True)
        else:
            self._release(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)

    def restore_unacked(self, client: redis.Redis | None = None) -> None:
        pending = [(self.held_key, tag) for tag in self._delivered]
        self._delivered.clear()
        try:
            with self.channel.conn_or_acquire(client) as client:
                while pending:
                    self._restore_if_held(pending[-1][1], client=client,
                                          held_key=pending[-1][0])
                    pending.pop()
        except (redis.RedisError, OSError) as exc:
            _unrestored.update(pending)
            log.warning("could not put back %d unacknowledged message(s) (%s); "
                        "they go back on the next connection", len(pending), exc)

    def restore_unrestored(self) -> None:
        """Put back what an earlier close of this process could not."""
        for held_key, tag in list(_unrestored):
            self._restore_if_held(tag, held_key=held_key)
            _unrestored.discard((held_key, tag))

    def _release(self, delivery_tag: str) -> bool:
        with self.channel.conn_or_acquire() as client:
            script = lua.register(client, "release_held")
            return bool(script(keys=[self.held_key, self.unacked_key, self.unacked_index_key],
                               args=[delivery_tag]))

    def _restore_if_held(self, tag: str, client: redis.Redis | None = None,
                         leftmost: bool = False, held_key: str | None = None) -> None:
        """kombu's restore, for a message this node still holds.

        Dropping the held record first means no live node can also restore
        it; kombu's restore is a transaction on the unacked entry, so the
        visibility sweep cannot push it twice either.
        """
        with self.channel.conn_or_acquire(client) as client:
            if client.hdel(held_key or self.held_key, tag):
                self.restore_by_tag(tag, client=client, leftmost=leftmost)

    def _restore_queues(self, payload: dict, exchange: str, routing_key: str) -> str:
        """The queues kombu's `_do_restore_message` would push this message into, as
        JSON; bindings are looked up once per exchange, routing key and priority."""
        channel = self.channel
        priority = channel._get_message_priority(payload, reverse=False)
        key = (exchange, routing_key, priority)
        found = self._queues.get(key)
        if found is None:
            found = self._queues[key] = json.dumps(
                [channel._q_for_pri(q, priority) for q in channel._lookup(exchange, routing_key)])
        return found


class GivenBack(Exception):
    """A message this node took was put back on the queue before it was recorded as
    held (the node was taken for dead meanwhile): it is not delivered here."""


class Channel(kombu_redis.Channel):
    QoS = QoS
    _shared_client: redis.Redis | None = None
    # wasmq sends no priorities, and one queue key lets BLMOVE take messages.
    priority_steps = [0]
    _taken: tuple[str, bytes] | None = None  # (queue, raw message) taken, not yet recorded
    _taking_from: str | None = None  # the queue of the BLMOVE in flight

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # it pings Redis: Redis is back
        if _unrestored:
            self.qos.restore_unrestored()

    # -- taking a message: BLMOVE into this node's taking list, not BRPOP -------------

    def _brpop_start(self, timeout: float | None = None) -> None:
        queues = self._queue_cycle.consume(len(self.active_queues))
        if len(queues) != 1 or len(self.priority_steps) != 1 or self.global_keyprefix:
            return super()._brpop_start(timeout)  # several keys: kombu's BRPOP
        queue = self._q_for_pri(queues[0], 0)
        taking = keys.taking(nodes.identity(), queue)
        if taking in _give_back:
            self._give_back_taken(taking, queue)
        self._in_poll = self.client.connection
        self._brpop_sent_at = monotonic()
        self._taking_from = queue
        self.client.connection.send_command(
            "BLMOVE", queue, taking, "RIGHT", "LEFT",
            self.brpop_timeout if timeout is None else timeout or 0)

    def _brpop_read(self, **options: object) -> bool:
        queue = self._taking_from
        if queue is None:
            return super()._brpop_read(**options)
        try:
            try:
                raw = self.client.parse_response(self.client.connection, "BLMOVE", **options)
            except self.connection_errors:
                # It may have moved a message whose reply is lost: given back later.
                self.client.connection.disconnect()
                _give_back.add(keys.taking(nodes.identity(), queue))
                raise
            if raw is None:
                raise Empty()
            self._queue_cycle.rotate(queue)
            if queue not in self.connection._callbacks:
                # No consumer any more (a close reading the last reply): kombu would
                # drop it; it goes back to the queue instead.
                taking = keys.taking(nodes.identity(), queue)
                _give_back.add(taking)
                self._give_back_taken(taking, queue)
                return True
            self._taken = (queue, raw)
            try:
                self.connection._deliver(loads(bytes_to_str(raw)), queue)
            except GivenBack as exc:
                log.warning("message %s went back to the queue while this node was taken "
                            "for dead; another node runs it", exc)
            except (redis.RedisError, OSError):
                if self._taken is not None:  # not recorded: the next take gives it back
                    _give_back.add(keys.taking(nodes.identity(), queue))
                raise
            except (ValueError, KeyError, TypeError) as exc:
                if self._taken is None:
                    raise  # recorded: not the message's fault
                # Not JSON, or not kombu's envelope: kombu raises here, which stops
                # Celery's consumer for good ("Unrecoverable error"). Dropped instead
                # (below, from the taking list), saying so.
                log.error("dropped a malformed message from queue %s (%s: %s): %r", queue,
                          type(exc).__name__, exc, raw[:200])
            finally:
                # Not recorded yet: delivered without an ack to wait for, or refused as
                # kombu refuses a malformed message; either way it leaves the list.
                unrecorded, self._taken = self._taken, None
                if unrecorded is not None and keys.taking(nodes.identity(), queue) \
                        not in _give_back:
                    with self.conn_or_acquire() as client:
                        client.lrem(keys.taking(nodes.identity(), queue), 1, raw)
            return True
        finally:
            self._in_poll = None
            self._taking_from = None
            self._flush_brpop_reauth()

    def _give_back_taken(self, taking: str, queue: str) -> None:
        """Put back, at the front of the queue, what this node took but never recorded
        (a lost reply, a failed record); a message still being recorded is then refused
        by take.lua, never run twice."""
        moved = 0
        with self.conn_or_acquire() as client:
            while client.lmove(taking, queue, "RIGHT", "RIGHT") is not None:
                moved += 1
        _give_back.discard(taking)
        if moved:
            log.warning("%d message(s) taken but never recorded went back to the queue", moved)

    def close(self) -> None:
        # kombu's close reads a pending reply; if that fails, the next channel gives back.
        if self._taking_from is not None:
            _give_back.add(keys.taking(nodes.identity(), self._taking_from))
        super().close()

    @contextmanager
    def conn_or_acquire(self, client: redis.Redis | None = None) -> Iterator[redis.Redis]:
        if client:
            yield client
            return
        shared = self._shared_client
        if self._closing and getattr(self.connection, "client", None) is None:
            # Celery's collect() let go of the transport's connection details before
            # this close, so no new pool can be made (kombu's own path raises
            # AttributeError here, which stops the consumer for good).
            if shared is None:
                raise redis.ConnectionError("the connection to Redis was already let go")
            yield shared
            return
        if shared is None or shared.connection_pool is not self.pool:
            shared = self._shared_client = self._create_client()
        yield shared


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """kombu's Sentinel channel (it asks the sentinels for the primary), with the
    held records and the shared client above."""


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel
