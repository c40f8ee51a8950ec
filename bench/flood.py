"""The waiting flood: one caller holds thousands of waiting calls; does anyone else notice?

An attacker opens N connections at once, each `POST /task/<slow>?wait=W` to a
function that takes seconds. Meanwhile a second caller (another API key) probes:
`/healthz`, `GET /functions`, `GET /retrieve/<tid>`, and fast calls of its own
(`?wait=`). The figures are each probe's latency percentiles, and what the
attacker's calls got (how many waited, how many were refused with 429).

`python -m bench.flood` starts its own stack and prints them; the test suite
runs the same flood with generous bounds (tests/test_flood.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from bench.stats import percentile, run_async
from tests.support import envelope as scailable_envelope

SLOW_MS = 3000


def envelope(data: str) -> bytes:
    return json.dumps(scailable_envelope(data)).encode()


@dataclass
class Figures:
    attacker: Counter = field(default_factory=Counter)  # HTTP status -> calls
    probes: dict[str, list[float]] = field(default_factory=dict)  # name -> seconds

    def summary(self) -> dict[str, object]:
        out: dict[str, object] = {"attacker_statuses": dict(sorted(self.attacker.items()))}
        for name, values in self.probes.items():
            out[f"{name}_p50_ms"] = round(percentile(values, 50) * 1000, 1) if values else None
            out[f"{name}_p99_ms"] = round(percentile(values, 99) * 1000, 1) if values else None
            out[f"{name}_max_ms"] = round(max(values) * 1000, 1) if values else None
            out[f"{name}_count"] = len(values)
        return out


async def request(url: str, method: str, path: str, body: bytes = b"",
                  headers: dict[str, str] | None = None,
                  timeout: float = 60) -> tuple[int, bytes]:
    """One HTTP/1.1 request on its own connection: (status, body)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(parts.hostname, parts.port), timeout)
    try:
        fields = {"Content-Type": "application/json", **(headers or {})}
        head = [f"{method} {path} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close",
                f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in fields.items())]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    status_line, _, rest = raw.partition(b"\r\n")
    status = int(status_line.split()[1]) if status_line else 0
    return status, rest.partition(b"\r\n\r\n")[2]


async def _attack(url: str, slow: str, figures: Figures, n: int, wait: float,
                  key: str | None) -> None:
    headers = {"Authorization": f"Bearer {key}"} if key else {}

    async def one() -> None:
        try:
            status, _ = await request(url, "POST", f"/task/{slow}?wait={wait:g}",
                                      envelope(str(SLOW_MS)), headers, timeout=wait + 30)
        except (TimeoutError, OSError):
            status = 0
        figures.attacker[status] += 1

    await asyncio.gather(*(one() for _ in range(n)))


def multipart(field: str, filename: str, content: bytes) -> tuple[bytes, str]:
    """A one-file multipart/form-data body and its Content-Type."""
    boundary = "wasmq-flood-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; "
            f"filename=\"{filename}\"\r\nContent-Type: application/wasm\r\n\r\n").encode()
    return body + content + f"\r\n--{boundary}--\r\n".encode(), \
        f"multipart/form-data; boundary={boundary}"


async def _probe(url: str, name: str, method: str, path: str, figures: Figures,
                 until: float, body: bytes = b"", key: str | None = None,
                 every: float = 0.05, content_type: str = "") -> None:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if content_type:
        headers["Content-Type"] = content_type
    times = figures.probes.setdefault(name, [])
    while time.monotonic() < until:
        started = time.monotonic()
        try:
            status, _ = await request(url, method, path, body, headers, timeout=30)
        except (TimeoutError, OSError):
            status = 0
        elapsed = time.monotonic() - started
        times.append(elapsed if 200 <= status < 300 else max(elapsed, 30.0))
        await asyncio.sleep(max(0.0, every - elapsed))


async def flood(url: str, *, slow: str, fast: str, tid: str, attacker_key: str | None,
                other_key: str, module: bytes, n: int = 2000, wait: float = 20,
                seconds: float = 10) -> Figures:
    """Run the attack and the probes together for `seconds`; the figures. `module` is
    what the other client uploads once a second."""
    figures = Figures()
    upload, upload_type = multipart("file", "probe.wasm", module)
    attack = asyncio.ensure_future(_attack(url, slow, figures, n, wait, attacker_key))
    await asyncio.sleep(0.2)  # the probes measure while the attack is under way
    until = time.monotonic() + seconds
    await asyncio.gather(
        _probe(url, "healthz", "GET", "/healthz", figures, until),
        _probe(url, "functions", "GET", "/functions?limit=5", figures, until, key=other_key),
        _probe(url, "retrieve", "GET", f"/retrieve/{tid}", figures, until, key=other_key),
        _probe(url, "upload", "POST", "/functions", figures, until, upload, key=other_key,
               every=1.0, content_type=upload_type),
        _probe(url, "fast_call", "POST", f"/task/{fast}?wait=30", figures, until,
               envelope("quick"), key=other_key, every=0.2))
    attack.cancel()
    try:
        await attack
    except asyncio.CancelledError:
        pass
    return figures


def allow_connections(n: int) -> None:
    """Each connection is a descriptor of this process too."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 1024), hard))


def report(figures: dict[str, object]) -> str:
    """The flood's lines for the bench's printout."""
    lines = [f"flood: one client's {figures['connections']} calls at once, each waiting for a "
             f"{figures['slow_task_ms']} ms task; its answers {figures['attacker_statuses']}"]
    for probe in ("healthz", "functions", "retrieve", "upload", "fast_call"):
        lines.append(f"  another client's {probe}: p50 {figures[f'{probe}_p50_ms']} ms, "
                     f"p99 {figures[f'{probe}_p99_ms']} ms, max {figures[f'{probe}_max_ms']} ms "
                     f"({figures[f'{probe}_count']} calls)")
    if "load" in figures:
        lines.append(f"  machine load during the run: {figures['load']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=15)
    args = parser.parse_args()
    print(report(run(args.connections, args.seconds)))


def run(connections: int = 2000, seconds: float = 15) -> dict[str, object]:
    """A stack of its own, the flood against it, the figures."""
    import requests

    from tests import modules
    from tests.localstack import start_redis, start_stack

    allow_connections(connections)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        redis_proc, redis_url = start_redis(work / "redis")
        stack = start_stack(work / "stack", redis_url, WASMQ_API_KEYS="attacker,other",
                            WASMQ_TASK_TIMEOUT="30")
        try:
            auth = {"Authorization": "Bearer other"}

            def deploy(wasm: bytes) -> str:
                return requests.post(f"{stack.url}/functions", files={"file": wasm},
                                     headers=auth, timeout=30).json()["cfid"]

            slow, fast = deploy(modules.SLOW), deploy(modules.ECHO)
            tid = requests.post(f"{stack.url}/task/{fast}?wait=10", data=envelope("x"),
                                headers=auth, timeout=30).json()["tid"]
            figures = run_async(flood(stack.url, slow=slow, fast=fast, tid=tid,
                                        attacker_key="attacker", other_key="other",
                                        module=modules.ECHO, n=connections, seconds=seconds))
            return {"connections": connections, "slow_task_ms": SLOW_MS, **figures.summary()}
        finally:
            stack.stop()
            redis_proc.stop()


if __name__ == "__main__":
    main()
