"""Who holds which message, and the return of a dead node's messages, pinned to
kombu's own Redis transport: every override in broker/transport.py and the
restore in broker/protocol/requeue_dead.lua must leave Redis as kombu's own
path does (same entries, same restored message), plus the held records.

Real Redis (a private redis-server), real kombu connections; no worker needed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from kombu import Connection
from kombu.common import ignore_errors
from kombu.transport import redis as kombu_redis

from tests.support import start_redis, wait_until
from wasmq.broker import keys, nodes
from wasmq.broker import transport as wasmq_transport

QUEUE = "pinned"


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = start_redis(tmp_path_factory.mktemp("redis-pins"))
    yield url
    proc.stop()


@pytest.fixture()
def client(url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture()
def conn(url: str, client: redis.Redis) -> Iterator[Connection]:
    conn = Connection(url, transport=wasmq_transport.PATH)
    yield conn
    conn.release()


class Node:
    """One identity, as if in its own process: `nodes.identity()` while active."""

    def __init__(self, name: str) -> None:
        self.name = f"test:{name}"

    def __enter__(self) -> "Node":
        self._saved = nodes._identity
        import os

        nodes._identity = (os.getpid(), self.name)
        return self

    def __exit__(self, *exc: object) -> None:
        nodes._identity = self._saved


def deliver(conn: Connection, body: dict) -> object:
    """Publish one message and take it unacknowledged (kombu calls QoS.append)."""
    queue = conn.SimpleQueue(QUEUE)
    queue.put(body)
    return queue.get(timeout=5)


def test_kombu_s_unacked_key_names_are_the_ones_wasmq_reads() -> None:
    assert kombu_redis.Channel.unacked_key == keys.KOMBU_UNACKED
    assert kombu_redis.Channel.unacked_index_key == keys.KOMBU_UNACKED_INDEX
    assert wasmq_transport.Transport.Channel.QoS is wasmq_transport.QoS


def test_append_writes_kombu_s_entries_and_records_the_holder(conn, client) -> None:
    with Node("a") as node:
        message = deliver(conn, {"n": 1})
        tag = message.delivery_tag
        ours = client.hget(keys.KOMBU_UNACKED, tag)
        assert client.zscore(keys.KOMBU_UNACKED_INDEX, tag) is not None
        assert json.loads(client.hget(keys.held(node.name), tag)) == [QUEUE]
        # kombu's own append of the same message writes the same entry.
        client.delete(keys.KOMBU_UNACKED, keys.KOMBU_UNACKED_INDEX)
        qos = message.channel.qos
        kombu_redis.QoS.append(qos, qos._delivered[tag], tag)
        assert client.hget(keys.KOMBU_UNACKED, tag) == ours
        assert client.zscore(keys.KOMBU_UNACKED_INDEX, tag) is not None


def test_ack_leaves_redis_as_kombu_s_ack_does(conn, client) -> None:
    with Node("a") as node:
        ours = deliver(conn, {"n": 1})
        theirs = deliver(conn, {"n": 2})
        ours.ack()
        kombu_redis.QoS.ack(theirs.channel.qos, theirs.delivery_tag)
        for message in (ours, theirs):
            assert client.hget(keys.KOMBU_UNACKED, message.delivery_tag) is None
            assert client.zscore(keys.KOMBU_UNACKED_INDEX, message.delivery_tag) is None
        assert client.hlen(keys.held(node.name)) == 1  # kombu's path knows no holder
        assert theirs.delivery_tag.encode() in client.hkeys(keys.held(node.name))


def test_a_dead_node_s_message_comes_back_exactly_as_kombu_restores_it(conn, client) -> None:
    with Node("a") as node:
        message = deliver(conn, {"n": 1, "text": "é/\u2603", "list": [1, 2.5, None]})
        tag = message.delivery_tag
        kombu_redis.QoS.restore_by_tag(message.channel.qos, tag)
        kombu_restored = json.loads(client.rpop(QUEUE))
        again = deliver(conn, {"n": 1, "text": "é/\u2603", "list": [1, 2.5, None]})
        # Same content, new delivery tag: compare without it.
        restored = nodes.leave(client, node.name)
    assert restored == 1
    ours = json.loads(client.rpop(QUEUE))
    for payload, t in ((ours, again.delivery_tag), (kombu_restored, tag)):
        assert payload["properties"].pop("delivery_tag") == t
    assert ours == kombu_restored
    assert ours["headers"]["redelivered"] is True
    assert not client.exists(keys.KOMBU_UNACKED, keys.KOMBU_UNACKED_INDEX,
                             keys.held(node.name), QUEUE)


def test_a_restored_message_is_delivered_again_and_decodes_the_same(conn, client) -> None:
    body = {"n": 7, "data": "x" * 1000}
    with Node("a") as node:
        deliver(conn, body)
        assert nodes.leave(client, node.name) == 1
    with Node("b"):
        message = conn.SimpleQueue(QUEUE).get(timeout=5)
        assert message.payload == body
        assert message.delivery_info.get("redelivered") is True
        message.ack()
    assert not client.exists(keys.KOMBU_UNACKED, keys.KOMBU_UNACKED_INDEX)


def test_a_late_ack_from_a_node_taken_for_dead_leaves_the_new_holder_alone(conn,
                                                                          client) -> None:
    with Node("paused") as paused:
        late = deliver(conn, {"n": 1})
        nodes.leave(client, paused.name)  # as a live node does once it is silent
    with Node("live") as live:
        again = conn.SimpleQueue(QUEUE).get(timeout=5)
    assert again.delivery_tag == late.delivery_tag  # kombu keeps the tag on restore
    tag = late.delivery_tag
    with Node("paused"):
        late.ack()
        assert client.hget(keys.KOMBU_UNACKED, tag) is not None  # still the live node's
        assert client.hexists(keys.held(live.name), tag)
    with Node("live"):
        again.ack()
    assert not client.exists(keys.KOMBU_UNACKED, keys.KOMBU_UNACKED_INDEX,
                             keys.held(live.name))


def test_a_late_requeue_from_a_node_taken_for_dead_does_not_push_the_message_twice(
        conn, client) -> None:
    with Node("paused") as paused:
        late = deliver(conn, {"n": 1})
        nodes.leave(client, paused.name)
        assert client.llen(QUEUE) == 1
        late.reject(requeue=True)  # Celery does this when its pool process died
        late.channel.qos.restore_unacked()  # and this at shutdown
    assert client.llen(QUEUE) == 1


def test_a_requeue_by_the_holder_is_kombu_s_requeue(conn, client) -> None:
    with Node("a") as node:
        message = deliver(conn, {"n": 1})
        message.reject(requeue=True)
        assert client.llen(QUEUE) == 1
        assert not client.exists(keys.KOMBU_UNACKED, keys.held(node.name))


def test_a_silent_node_s_messages_are_restored_by_the_next_live_beat(conn, client) -> None:
    with Node("silent") as silent:
        deliver(conn, {"n": 1})
        deliver(conn, {"n": 2})
    assert nodes.beat(client, silent.name) == (True, 0, 0)
    assert nodes.beat(client, "test:live") == (True, 0, 0)  # silent is not stale yet
    assert client.llen(QUEUE) == 0
    seconds, micros = client.time()
    client.zadd(keys.NODES, {silent.name: seconds + micros / 1e6 - nodes.STALE_S - 1})
    assert nodes.beat(client, "test:live") == (False, 0, 0)  # live only just started
    client.hset(keys.NODES_BEATING_SINCE, "test:live", seconds - nodes.STALE_S)
    assert nodes.beat(client, "test:live") == (False, 1, 2)
    assert client.llen(QUEUE) == 2
    assert client.zscore(keys.NODES, silent.name) is None
    assert not client.exists(keys.KOMBU_UNACKED, keys.held(silent.name))
    # Back from a pause, it is listed again as new: its worker logs that.
    assert nodes.beat(client, silent.name)[0] is True


def test_after_an_outage_that_silenced_everyone_no_node_is_taken_for_dead(conn,
                                                                         client) -> None:
    with Node("other") as other:
        deliver(conn, {"n": 1})
    nodes.beat(client, other.name)
    seconds, _ = client.time()
    # Both were beating steadily, then Redis was gone for twice STALE_S.
    gone = seconds - 2 * nodes.STALE_S
    client.zadd(keys.NODES, {other.name: gone, "test:first-back": gone})
    client.hset(keys.NODES_BEATING_SINCE, mapping={other.name: gone - 60,
                                                   "test:first-back": gone - 60})
    assert nodes.beat(client, "test:first-back") == (False, 0, 0)
    assert client.hexists(keys.KOMBU_UNACKED, client.hkeys(keys.held(other.name))[0])


def test_each_process_start_is_a_new_node_identity(tmp_path: Path) -> None:
    code = "from wasmq.broker import nodes; print(nodes.identity(), nodes.identity())"
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout.split() for _ in range(2)]
    assert runs[0][0] == runs[0][1] and runs[1][0] == runs[1][1]
    assert runs[0][0] != runs[1][0]


def test_a_message_whose_restore_failed_while_redis_was_gone_comes_back_on_reconnect(
        tmp_path: Path) -> None:
    """What Celery's consumer does when it loses the broker (collect, then close: see
    `Consumer.on_connection_error_after_connected`), with the Redis that held a
    delivered message gone. kombu's close then raised AttributeError (the transport had
    let go of its connection), which stopped the consumer for good; and the message's
    restore could not reach Redis, so only the visibility timeout would have brought it
    back. It must come back on the node's next connection."""
    proc, url = start_redis(tmp_path / "redis")
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    conn = Connection(url, transport=wasmq_transport.PATH,
                      transport_options={"socket_timeout": 2})
    try:
        with Node("cut-off"):
            assert deliver(conn, {"n": 1}).payload == {"n": 1}
            proc.stop()  # SIGTERM: Redis writes its append-only file first
            # Celery's order: collect() (which lets go of the transport even when the
            # channel's close fails on the pending BRPOP's read), then close().
            conn._do_close_transport()
            ignore_errors(conn, conn.close)
            proc, _ = start_redis(tmp_path / "redis", port)
            again = Connection(url, transport=wasmq_transport.PATH)
            try:
                message = again.SimpleQueue(QUEUE).get(timeout=5)
                assert message.payload == {"n": 1}
                message.ack()
            finally:
                again.release()
    finally:
        proc.stop()


# Dies at the one point kombu's BRPOP could not survive: the message is off the queue,
# not yet recorded as held (kombu's `basic_consume` callback calls QoS.append next).
DIES_TAKING = """
import os, signal, sys
from kombu import Connection
from wasmq.broker import nodes
from wasmq.broker import transport

def die(self, message, delivery_tag):
    os.kill(os.getpid(), signal.SIGKILL)

transport.QoS.append = die
print(nodes.identity(), flush=True)
Connection(sys.argv[1], transport=transport.PATH).SimpleQueue(sys.argv[2]).get(timeout=10)
"""


def test_a_node_killed_between_taking_a_message_and_recording_it_loses_nothing(
        conn, client, url) -> None:
    """The lost call of issue 12: a node killed right after taking a message off the
    queue (or while its reply waited unread behind a busy pool) had it in neither
    the queue nor the unacknowledged entries, so only the resend of lost messages,
    minutes later, ran it. Taken with BLMOVE, it waits in the node's taking list, and
    comes back with the node's held messages."""
    conn.SimpleQueue(QUEUE).put({"n": 1, "data": "x" * 100})
    sent = client.lindex(QUEUE, 0)
    child = subprocess.run([sys.executable, "-c", DIES_TAKING, url, QUEUE],
                           capture_output=True, text=True, timeout=60)
    assert child.returncode == -9, child.stderr
    node = child.stdout.split()[0]
    assert client.llen(QUEUE) == 0 and not client.exists(keys.KOMBU_UNACKED)
    assert client.lrange(keys.taking(node, QUEUE), 0, -1) == [sent]
    assert nodes.leave(client, node, [QUEUE]) == 1  # as live nodes do once it is silent
    assert client.lrange(QUEUE, 0, -1) == [sent]  # as it was sent: it never ran
    assert not client.exists(keys.taking(node, QUEUE))
    with Node("live"):
        message = conn.SimpleQueue(QUEUE).get(timeout=5)
        assert message.payload == {"n": 1, "data": "x" * 100}
        message.ack()
    assert not client.exists(keys.KOMBU_UNACKED, keys.KOMBU_UNACKED_INDEX, QUEUE)


def test_a_message_taken_by_a_node_then_taken_for_dead_is_delivered_once(
        conn, client, monkeypatch) -> None:
    """A node paused between taking a message and recording it is taken for dead and its
    message put back; when it resumes, it must not run it too (another node will)."""
    record = wasmq_transport.QoS.append
    paused: list[str] = []

    def pause_there(self, message, delivery_tag):  # live nodes act while it is paused
        if not paused:
            paused.append(delivery_tag)
            assert nodes.leave(client, nodes.identity(), [QUEUE]) == 1
        return record(self, message, delivery_tag)

    monkeypatch.setattr(wasmq_transport.QoS, "append", pause_there)
    queue = conn.SimpleQueue(QUEUE)
    queue.put({"n": 1})
    with Node("resumed") as node:
        message = queue.get(timeout=5)  # the copy put back, taken again
        with pytest.raises(queue.Empty):
            queue.get(timeout=1)
        assert message.payload == {"n": 1} and message.delivery_tag == paused[0]
        assert client.hkeys(keys.held(node.name)) == [message.delivery_tag.encode()]
        message.ack()
    assert not client.exists(keys.KOMBU_UNACKED, keys.taking(node.name, QUEUE), QUEUE)


def test_a_message_taken_as_a_consumer_closes_is_delivered_again_once(url, client) -> None:
    """A channel closed while its BLMOVE waits (Celery's reconnect, a warm shutdown) reads
    the message that BLMOVE took and puts it back (kombu's close), or, if that read fails,
    its process's next channel does: either way nothing stays in the taking list."""
    with Node("closing") as node:
        first = Connection(url, transport=wasmq_transport.PATH)
        queue = first.SimpleQueue(QUEUE)
        with pytest.raises(queue.Empty):
            queue.get(timeout=0.2)  # leaves a BLMOVE waiting (kombu's 1 s timeout)
        producer = Connection(url, transport=wasmq_transport.PATH)
        producer.SimpleQueue(QUEUE).put({"n": 1})
        producer.release()
        wait_until(lambda: client.llen(keys.taking(node.name, QUEUE)) == 1,
                   what="the waiting BLMOVE to take it")
        first.release()
        again = Connection(url, transport=wasmq_transport.PATH)
        try:
            message = again.SimpleQueue(QUEUE).get(timeout=5)
            assert message.payload == {"n": 1}
            message.ack()
            with pytest.raises(queue.Empty):
                again.SimpleQueue(QUEUE).get(timeout=0.5)
        finally:
            again.release()
    assert not client.exists(keys.taking(node.name, QUEUE), QUEUE, keys.KOMBU_UNACKED)
