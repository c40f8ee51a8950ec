"""One typed settings object, built from the environment once and passed down.

Every setting is read here, from `WASMQ_*` variables; tests build
`Settings(...)` directly. The command line is the one other reader of the
environment: `wasmq up` hands it on to the processes it starts, and takes
`WASMQ_REDIS_URL` and `WASMQ_DATA_DIR` from it to decide whether to start its
own Redis and where it keeps its data.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from urllib.parse import urlparse

from wasmq.broker.errors import ConfigError

MB = 1024 * 1024
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def available_cores() -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup (v2) CPU
    quota, so that a container on a large host sizes itself by its own limit."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
    cores = cores or os.cpu_count() or 1
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota: the affinity is the limit
    return cores


def default_redis_maxmemory_mb() -> int:
    """A quarter of this machine's memory, at most 4 GB: what a laptop survives."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError):
        return 1024
    return max(64, min(4096, ram // MB // 4))


@dataclass(frozen=True)
class Settings:
    """Every knob of wasmq; the env name of each is `WASMQ_<FIELD NAME>`."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    # Redis behind Sentinel: "host:port,host:port" of the sentinels and the name
    # they monitor. Then every client asks them for the current primary, and
    # redis_url gives only the database number.
    redis_sentinels: tuple[str, ...] = field(default_factory=tuple)
    redis_master: str = ""
    redis_password: str = ""  # the primary's and replicas' (requirepass)
    redis_sentinel_password: str = ""  # the sentinels' own, if they require one
    result_ttl: int = 24 * 3600
    sync_wait: float = 10.0
    task_timeout: float = 30.0
    max_memory_mb: int = 256
    max_input_mb: int = 16
    max_output_mb: int = 16
    max_module_mb: int = 64
    inline_input_kb: int = 256
    module_cache_mb: int = 256
    public_url: str = ""
    # The installation's default queue: functions run there unless they name another.
    queue: str = "wasmq"
    # The queues a worker node consumes (`wasmq worker -Q`); empty: the default queue.
    queues: tuple[str, ...] = field(default_factory=tuple)
    data_dir: str = ""
    api_keys: tuple[str, ...] = field(default_factory=tuple)
    # Task submissions per API key (or client address without one), in the
    # notation of the `limits` library ("100/second;2000/minute"); "off" disables.
    rate_limit: str = "500/second"
    # Input bytes submitted per API key (or address), in the same notation.
    rate_limit_bytes: str = "250000000/minute"
    # Tasks one API key (or address) may have queued or running at once:
    # OpenWhisk's default of 100 concurrent activations per namespace.
    max_inflight: int = 100
    # Calls of one caller to one function that arrive while its previous batch is on
    # its way travel together, up to this many in one message (api/batcher.py); 1: never.
    max_batch: int = 16  # chosen from the bench (README, Performance)
    # Bytes one API key (or address) may keep in the store at once: the inputs and
    # results of its calls until they expire (WASMQ_RESULT_TTL); 0: a sixteenth of
    # WASMQ_REDIS_MAXMEMORY_MB.
    storage_per_caller_mb: int = 0
    # Runs of a task whose worker process died before it fails for good.
    max_attempts: int = 3
    # Calls one gateway process holds open waiting for their task; past it a
    # call answers at once with statusCode 5 and its resultUrl.
    max_waiting: int = 4096
    # Seconds a request's body may pause, and take in all plus one per 64 KiB it brings;
    # past either, 408 (a client stalling or trickling its body would otherwise hold its
    # connection, and a place in its caller's cap, for ever).
    body_timeout: float = 60.0
    # One gateway process per two cores: a process serves about a thousand
    # calls a second, and on a small machine the workers need the other cores.
    gateway_processes: int = field(default_factory=lambda: max(1, available_cores() // 2))
    gateway_threads: int = 64
    prefetch_multiplier: int = 1
    # Builds of uploads (toolchain/build.py): CPU seconds and address space per
    # build, and how many may wait for a slot (one slot per core) per gateway process.
    compile_timeout: float = 10.0
    compile_memory_mb: int = 1024
    compile_queue: int = 16
    # Uploads one caller may have building or waiting for a slot at once, in one
    # gateway process: past it, 503, so one client cannot take every place.
    compile_per_caller: int = 4
    # A model's build is leased in Redis for this long, renewed while it runs: a
    # gateway that dies mid-build lets its lease expire, and another one resumes it.
    build_lease_s: float = 30.0
    # `maxmemory` of the embedded Redis (`wasmq up`), with `noeviction`: when full,
    # writes are refused ("storage is full") and nothing stored is evicted.
    redis_maxmemory_mb: int = field(default_factory=default_redis_maxmemory_mb)
    log_format: str = "json"

    @property
    def hard_time_limit(self) -> float:
        """Celery's backstop, only reached if epoch interruption failed.

        The grace scales with the limit (3 to 15 s) so short limits keep a
        short redelivery time; it also covers compiling a module, which runs
        before the epoch deadline starts.
        """
        return self.task_timeout + min(15.0, max(3.0, self.task_timeout))

    @property
    def visibility_timeout(self) -> int:
        """Seconds before an unacknowledged task is handed to another node.

        Derived from the task limit, so a dead node's tasks come back without
        the Redis transport's default hour (live nodes restore a dead node's
        messages within seconds; this is the last resort): twice the longest a
        message may legitimately be held, a batch's (its calls' budget plus one
        call's hard limit, workers/tasks.py), because a prefetched message waits
        at most one such run before its own starts. It must never be shorter
        than a message may legitimately be held, or live tasks would be handed
        out twice.
        """
        return int(math.ceil(2 * (self.task_timeout + self.hard_time_limit)))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> "Settings":
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(f"WASMQ_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(f.name, f.type, raw)
        settings = cls(**values)
        settings = replace(settings, **overrides) if overrides else settings
        settings.check()
        return settings

    @property
    def storage_quota(self) -> int:
        """Bytes a caller may keep in the store."""
        return (self.storage_per_caller_mb or max(1, self.redis_maxmemory_mb // 16)) * MB

    @property
    def consumed_queues(self) -> list[str]:
        """The queues a worker node of these settings consumes."""
        return list(self.queues) or [self.queue]

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        """(host, port) of each sentinel; empty without Sentinel."""
        out = []
        for item in self.redis_sentinels:
            host, _, port = item.rpartition(":")
            out.append((host.strip("[]"), int(port)))
        return out

    @property
    def redis_db(self) -> int:
        """The database number, from redis_url's path (Sentinel or not)."""
        path = urlparse(self.redis_url).path.strip("/")
        return int(path) if path.isdigit() else 0

    def check(self) -> None:
        for name in (self.queue, *self.queues):
            check_queue_name(name, "WASMQ_QUEUES" if name != self.queue else "WASMQ_QUEUE")
        for item in self.redis_sentinels:
            host, _, port = item.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(f"WASMQ_REDIS_SENTINELS: {item!r} is not host:port "
                                  "(e.g. 'sentinel-1:26379,sentinel-2:26379')")
        if self.redis_sentinels and not self.redis_master:
            raise ConfigError("WASMQ_REDIS_SENTINELS needs WASMQ_REDIS_MASTER: the name the "
                              "sentinels monitor (their 'sentinel monitor <name> ...')")
        if self.redis_master and not self.redis_sentinels:
            raise ConfigError("WASMQ_REDIS_MASTER is set without WASMQ_REDIS_SENTINELS")
        for name in ("sync_wait", "task_timeout", "compile_queue"):
            if getattr(self, name) < 0:
                raise ConfigError(f"WASMQ_{name.upper()} must not be negative")
        for name in ("result_ttl", "max_memory_mb", "max_input_mb", "max_output_mb",
                     "max_module_mb", "module_cache_mb", "prefetch_multiplier",
                     "max_inflight", "max_batch", "max_attempts", "max_waiting",
                     "compile_timeout", "compile_memory_mb", "redis_maxmemory_mb",
                     "build_lease_s", "compile_per_caller", "body_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"WASMQ_{name.upper()} must be a positive number")
        if self.log_format not in ("json", "text"):
            raise ConfigError(f"WASMQ_LOG_FORMAT must be 'json' or 'text', got "
                              f"{self.log_format!r}")
        for name in ("rate_limit", "rate_limit_bytes"):
            rate = getattr(self, name)
            if not rate_enabled(rate):
                continue
            from limits import parse_many

            try:
                parse_many(rate)
            except ValueError:
                raise ConfigError(f"WASMQ_{name.upper()}={rate!r} is not a rate such as "
                                  "'100/second' or '10/second;500/minute' (or 'off')") from None

    @property
    def rate_limit_enabled(self) -> bool:
        return rate_enabled(self.rate_limit)


def rate_enabled(rate: str) -> bool:
    return rate.strip().lower() not in ("", "off", "none", "0")


QUEUE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_queue_name(name: str, what: str = "queue") -> None:
    """A Celery queue name wasmq accepts: letters, digits, '.', '_', '-' (at most 64)."""
    if not QUEUE_NAME.fullmatch(name):
        raise ConfigError(f"{what}: {name!r} is not a queue name (1 to 64 letters, digits, "
                          f"'.', '_' or '-', starting with a letter or digit)")


def _parse(name: str, kind: object, raw: str) -> object:
    kind = str(kind)
    try:
        if kind.startswith("tuple"):
            return tuple(k.strip() for k in raw.split(",") if k.strip())
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        raise ConfigError(
            f"WASMQ_{name.upper()}={raw!r} is not a valid {kind}") from None
    return raw
