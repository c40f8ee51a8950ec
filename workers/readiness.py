"""A readiness file: a node says when it consumes and when each pool process is warm.

What starts a node (the tests, the bench, an orchestrator's probe) needs to
know when a call would be served by a warm process, not merely accepted.
Celery's own readiness is a log line and says nothing of the pool, so the node
writes it down instead: the main process appends `node <pid>` once it
consumes, each pool process `pool <pid>` once its warm-up is over (its handler
is connected after the warm-up's, and Celery runs a signal's handlers in the
order they were connected). Lines are appended in one write each, so
processes never interleave them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from celery import signals


def write_readiness(path: Path) -> None:
    """Start `path` afresh and have this node's processes append to it."""
    path.write_text("")

    def line(kind: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{kind} {os.getpid()}\n".encode())
        finally:
            os.close(fd)

    signals.worker_ready.connect(lambda **_: line("node"), weak=False,
                                 dispatch_uid="wasmq-ready-node")
    signals.worker_process_init.connect(lambda **_: line("pool"), weak=False,
                                        dispatch_uid="wasmq-ready-pool")


@dataclass
class Readiness:
    node: set[int]
    pool: set[int]

    @classmethod
    def read(cls, path: Path) -> Readiness:
        node: set[int] = set()
        pool: set[int] = set()
        try:
            text = path.read_text()
        except OSError:
            text = ""
        for entry in text.splitlines():
            kind, _, pid = entry.partition(" ")
            if pid.isdigit():
                (node if kind == "node" else pool).add(int(pid))
        return cls(node, pool)

    def ready(self, node_pid: int, processes: int, live: set[int] | None = None) -> bool:
        """The node `node_pid` consumes and `processes` pool processes (of `live`,
        when known: a replaced process's line stays in the file) are warm."""
        pool = self.pool if live is None else self.pool & live
        return node_pid in self.node and len(pool) >= processes
