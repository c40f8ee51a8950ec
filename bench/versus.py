"""wasmq beside the hand-rolled peer (bench/peer_app.py): same module, same Redis.

The two stacks take turns round by round, so a noisy neighbour on the shared
machine slows them alike. Besides latency and throughput, each measured window
counts the CPU every process of the stack spent (user+sys, from /proc) and the
commands Redis ran (INFO commandstats), each divided by the calls answered.
Redis itself is shared and its CPU is not charged to either stack.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import psutil
import redis

from bench.load import Client, closed_loop
from bench.stats import loadavg, ms, percentile, process_tree

LEVELS = (16, 64, 256)


def cpu_seconds(pids: list[int]) -> float:
    """user+sys of these processes and all their descendants, from /proc."""
    total = 0.0
    for pid in pids:
        for proc in process_tree(pid):
            try:
                t = proc.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
    return total


def redis_commands(client: redis.Redis) -> int:
    return sum(command_counts(client).values())


def command_counts(client: redis.Redis) -> dict[str, int]:
    """Calls of each command so far (those run inside scripts included), INFO aside."""
    stats = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()
            if k != "cmdstat_info"}


def redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


class Meter:
    """CPU seconds of one stack's processes, Redis's CPU seconds and the commands
    it ran, over a window."""

    def __init__(self, client: redis.Redis, pids: list[int]) -> None:
        self.client, self.pids = client, pids
        self.mix: dict[str, int] = defaultdict(int)  # commands by name, every window
        self.redis_cpu = 0.0

    def measure(self, work: Callable[[], int]) -> tuple[float, int, int]:
        cpu, counts, rcpu = cpu_seconds(self.pids), command_counts(self.client), \
            redis_cpu(self.client)
        calls = work()
        after = command_counts(self.client)
        self.redis_cpu += redis_cpu(self.client) - rcpu
        for name, n in after.items():
            self.mix[name] += n - counts.get(name, 0)
        return cpu_seconds(self.pids) - cpu, sum(after.values()) - sum(counts.values()), calls


def versus(stacks: dict[str, tuple[str, bytes, list[int]]], redis_url: str, *, rounds: int,
           calls: int, seconds: float) -> dict:
    """`stacks`: name -> (url, raw request bytes, root pids). Figures per stack, and
    for each figure the ratio of the first stack to the second."""
    client = redis.Redis.from_url(redis_url)
    seq: dict[str, list[float]] = defaultdict(list)
    lat: dict[tuple[str, int], list[float]] = defaultdict(list)
    wall: dict[tuple[str, int], float] = defaultdict(float)
    cpu: dict[tuple[str, int], float] = defaultdict(float)
    cmds: dict[tuple[str, int], int] = defaultdict(int)
    answered: dict[tuple[str, int], int] = defaultdict(int)
    seq_clients = {name: Client(url) for name, (url, _, _) in stacks.items()}
    for name, (_, raw, _) in stacks.items():
        seq_clients[name].calls(raw, 50)  # warm every process and the keep-alive path
    load = []
    meters = {name: Meter(client, pids) for name, (_, _, pids) in stacks.items()}
    for _ in range(rounds):
        for name, (url, raw, _) in stacks.items():
            meter = meters[name]

            def sequential(name: str = name, raw: bytes = raw) -> int:
                got = seq_clients[name].calls(raw, calls)
                seq[name] += got
                return len(got)

            c, n, k = meter.measure(sequential)
            cpu[(name, 1)] += c
            cmds[(name, 1)] += n
            answered[(name, 1)] += k
            for clients in LEVELS:
                def loaded(url: str = url, raw: bytes = raw, clients: int = clients,
                           name: str = name) -> int:
                    got, elapsed = closed_loop(url, raw, clients, seconds)
                    lat[(name, clients)] += got
                    wall[(name, clients)] += elapsed
                    return len(got)

                c, n, k = meter.measure(loaded)
                cpu[(name, clients)] += c
                cmds[(name, clients)] += n
                answered[(name, clients)] += k
        load.append(loadavg())
    for c in seq_clients.values():
        c.close()
    out: dict = {"loadavg_per_round": load}
    for name in stacks:
        row: dict = {"sequential_p50_ms": ms(percentile(seq[name], 50)),
                     "sequential_p99_ms": ms(percentile(seq[name], 99))}
        for level in (1, *LEVELS):
            key = (name, level)
            if level != 1:
                row[f"c{level}_tasks_per_s"] = round(len(lat[key]) / wall[key], 1)
                row[f"c{level}_p99_ms"] = ms(percentile(lat[key], 99))
            row[f"c{level}_cpu_ms_per_call"] = round(1000 * cpu[key] / answered[key], 3)
            row[f"c{level}_redis_cmds_per_call"] = round(cmds[key] / answered[key], 2)
        calls = sum(answered[(name, level)] for level in (1, *LEVELS))
        row["redis_cpu_ms_per_call"] = round(1000 * meters[name].redis_cpu / calls, 3)
        row["redis_mix_per_call"] = {k: round(v / calls, 2) for k, v in
                                     sorted(meters[name].mix.items()) if v / calls >= 0.01}
        out[name] = row
    first, second = list(stacks)
    out["ratio"] = {k: round(out[first][k] / out[second][k], 2) for k in out[first]
                    if not isinstance(out[first][k], dict) and out[second][k]}
    return out


ROWS = [("sequential p50 (ms)", "sequential_p50_ms"), ("sequential p99 (ms)", "sequential_p99_ms"),
        ("Redis CPU per call, all windows (ms)", "redis_cpu_ms_per_call"),
        ("sequential: CPU per call (ms)", "c1_cpu_ms_per_call"),
        ("sequential: Redis commands per call", "c1_redis_cmds_per_call")]
for _level in LEVELS:
    ROWS += [(f"{_level} clients: tasks/s", f"c{_level}_tasks_per_s"),
             (f"{_level} clients: p99 (ms)", f"c{_level}_p99_ms"),
             (f"{_level} clients: CPU per call (ms)", f"c{_level}_cpu_ms_per_call"),
             (f"{_level} clients: Redis commands per call", f"c{_level}_redis_cmds_per_call")]


def table(figures: dict) -> str:
    names = [k for k in figures if k not in ("ratio", "loadavg_per_round")]
    width = max(len(label) for label, _ in ROWS) + 2
    lines = [f"{'':{width}}" + "".join(f"{n:>12}" for n in names) + f"{'ratio':>10}"]
    for label, key in ROWS:
        cells = "".join(f"{figures[n][key]:>12}" for n in names)
        lines.append(f"{label:{width}}{cells}{figures['ratio'].get(key, '-'):>10}")
    lines.append(f"load average after each round: {figures['loadavg_per_round']}")
    return "\n".join(lines)
