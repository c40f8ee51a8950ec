"""broker/metrics.py LiveQueues: which queues live nodes consume, read on a thread of
its own, at most one read at a time."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from wasmq.broker.metrics import LiveQueues

pytestmark = pytest.mark.fast


def test_reads_that_outlast_the_refresh_period_do_not_pile_up() -> None:
    """A read slower than `every_s` (Redis slow or unreachable: each one waits for its
    socket timeout) queued one more read per period on the reader thread, without
    bound: long after the replies stopped asking, the backlog still read Redis."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(512)
    asked: list[float] = []  # when a command reached the server
    held: list[socket.socket] = []
    stop = threading.Event()

    def hear(conn: socket.socket) -> None:
        conn.settimeout(0.1)
        while not stop.is_set():
            try:
                if not conn.recv(65536):
                    return
            except TimeoutError:
                continue
            except OSError:
                return
            asked.append(time.monotonic())

    def accept() -> None:  # a Redis that reads every command and never answers
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            held.append(conn)
            threading.Thread(target=hear, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    client = redis.Redis(port=server.getsockname()[1], socket_timeout=0.3,
                         socket_connect_timeout=0.3, retry=Retry(NoBackoff(), 0))
    live = LiveQueues(client, 4.0, every_s=0.05)
    try:
        for _ in range(30):  # 1.5 s of replies asking, every 0.05 s
            assert live.serves("q")  # not known yet: it may be served
            time.sleep(0.05)
        asked_until = time.monotonic()
        time.sleep(2.0)
        late = [t for t in asked if t > asked_until + 1.0]
    finally:
        stop.set()
        thread.join(5)
        time.sleep(0.2)  # its listeners see `stop`
        for conn in held:
            conn.close()
        server.close()
        client.close()
    assert asked, "no read reached the server"
    assert not late, f"{len(late)} reads more than 1 s after the last reply asked"
