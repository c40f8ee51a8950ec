"""Which nodes are alive, and the return of a dead node's messages within seconds.

kombu's Redis transport keeps a delivered message in its `unacked` hash until
it is acknowledged, and gives it to another consumer only after the visibility
timeout (150 s at the default task limit), because those entries do not say
who holds them. So each node also records the delivery tags it holds
(broker/transport.py, in kombu's own pipeline), takes each message off the
queue into a list of its own until that record is written (BLMOVE: with kombu's
BRPOP, a node that died between the two lost the message), and beats every HEARTBEAT_S
into one sorted set; every live node's beat is a script (requeue_dead.lua) that
also finds the nodes silent for STALE_S and puts their messages back at the
front of the queue, atomically. A node judges others only after beating
steadily for STALE_S itself, so a Redis outage (restart, failover) that
silenced every node is not taken for their deaths. A node killed, or a whole host gone, has its
tasks running elsewhere about STALE_S + HEARTBEAT_S after its death.

A node's identity is made once per process start, so a node restarted under
the same name is a new node and never mistaken for (or restored as) the dead
one. A node that was merely paused past STALE_S comes back to find its messages
gone: its late acknowledgements touch nothing (release_held.lua), and its
copies of those tasks may run a second time, which at-least-once delivery
allows (the finish script keeps the first answer).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from collections.abc import Sequence

import redis

from wasmq.broker import keys
from wasmq.broker.protocol import lua

HEARTBEAT_S = 1.0  # how often a node says it is alive
# Silent for longer: dead. Several beats, so a node slowed by a loaded host, a
# garbage collection or a Redis round trip is not taken for dead.
STALE_S = 4.0
MAX_DEAD_PER_BEAT = 16  # bounds how long one beat's script may run
# A longer pause between two of its own beats (Redis unreachable, the node
# paused) and a node first beats STALE_S again before it judges others.
MAX_GAP_S = 2.5 * HEARTBEAT_S

_identity: tuple[int, str] | None = None


def identity() -> str:
    """This process's node identity: host, pid and a random part, made once per start.

    Forked children (the pool) get their own, though only the consuming main
    process holds messages.
    """
    global _identity
    pid = os.getpid()
    if _identity is None or _identity[0] != pid:
        _identity = (pid, f"{socket.gethostname()}:{pid}:{secrets.token_hex(4)}")
    return _identity[1]


def beat(client: redis.Redis, node: str, queues: Sequence[str] = ()) -> tuple[bool, int, int]:
    """Say that `node` is alive and put back the messages of nodes that are not
    (those they held, and those they had taken off `queues` without recording yet).

    Returns (whether this node was unlisted, dead nodes restored, messages restored).
    """
    was_new, dead, restored = _run(client, node, queues)
    return bool(was_new), int(dead), int(restored)


def leave(client: redis.Redis, node: str, queues: Sequence[str] = ()) -> int:
    """A node stopping: what it still holds goes back now, and it is no longer listed."""
    return int(_run(client, "", queues, node)[2])


def _run(client: redis.Redis, beating: str, queues: Sequence[str], *forced: str) -> list[int]:
    script = lua.register(client, "requeue_dead")
    return script(keys=[keys.NODES, keys.NODES_BEATING_SINCE, keys.KOMBU_UNACKED,
                        keys.KOMBU_UNACKED_INDEX],
                  args=[keys.HELD_PREFIX, keys.TAKING_PREFIX, json.dumps(list(queues)),
                        beating, STALE_S, MAX_DEAD_PER_BEAT, MAX_GAP_S, *forced])
