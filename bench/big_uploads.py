"""Big uploads at once: how long does `/healthz` take while twenty 60 MB uploads arrive?

Issue 22: uploads held whole in memory took a gateway to about 2 GB with `/healthz`
over 3 s; spooled to disk, the memory held but `/healthz` still took 88-184 ms p99
on a loaded two-core machine, the event loop busy with the uploads' bodies. The
figures: `/healthz` latency (p50, p99, max, probed every 20 ms from one connection)
while `--uploads` concurrent uploads of `--mb` MB each (a .wasm that does not
validate: refused 400 after it is read, or 503 while build places are full) are
sent, how long the uploads took, and how much the gateway's processes grew.

`python -m bench.big_uploads [--uploads 20] [--mb 60] [--runs 1]` starts its own
Redis and one gateway process (no worker: nothing runs) and prints them;
tests/test_hostile_models.py pins generous bounds.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.stats import loadavg, percentile


def run(uploads: int = 20, mb: int = 60) -> dict[str, object]:
    """A gateway of its own, the uploads against it, the figures."""
    import psutil
    import requests
    import urllib3

    from tests.localstack import start_gateway, start_redis
    from tests.support import HealthProbe, PeakRss, child_env

    junk = b"\0asm\x01\0\0\0" + bytes(mb << 20)
    # Encoded once: one encoding per upload would cost this process a copy each.
    body, content_type = urllib3.encode_multipart_formdata({"file": ("j.wasm", junk)})
    del junk
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        redis_proc, redis_url = start_redis(work / "redis")
        env = child_env(WASMQ_REDIS_URL=redis_url, WASMQ_GATEWAY_PROCESSES="1",
                        WASMQ_COMPILE_PER_CALLER="1000")
        gateway, url = start_gateway(env, work / "gateway.log")
        try:
            me = psutil.Process(gateway.pid)
            pids = [me.pid] + [p.pid for p in me.children(recursive=True)]
            def upload(_: int) -> int:
                return requests.post(f"{url}/functions", data=body, timeout=600,
                                     headers={"Content-Type": content_type}).status_code

            with PeakRss(*pids) as rss, HealthProbe(url) as probe:
                time.sleep(0.5)  # a few probes before
                started = time.monotonic()
                with ThreadPoolExecutor(uploads) as pool:
                    codes = list(pool.map(upload, range(uploads)))
                took = time.monotonic() - started
        finally:
            gateway.stop()
            redis_proc.stop()
    latencies = sorted(probe.latencies)
    return {"uploads": uploads, "mb": mb, "statuses": {c: codes.count(c) for c in set(codes)},
            "uploads_s": round(took, 2), "probes": len(latencies),
            "healthz_p50_ms": round(percentile(latencies, 50) * 1000, 1),
            "healthz_p99_ms": round(percentile(latencies, 99) * 1000, 1),
            "healthz_max_ms": round(max(latencies) * 1000, 1),
            "gateway_grew_mb": round(rss.grew_mb), "load": loadavg()}


def report(figures: dict[str, object]) -> str:
    """The run's line for the bench's printout."""
    return (f"{figures['uploads']} uploads of {figures['mb']} MB at once "
            f"(answers {figures['statuses']}, all in {figures['uploads_s']} s): /healthz "
            f"p50 {figures['healthz_p50_ms']} ms, p99 {figures['healthz_p99_ms']} ms, max "
            f"{figures['healthz_max_ms']} ms over {figures['probes']} probes; gateway grew "
            f"{figures['gateway_grew_mb']} MB; load {figures['load']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=20)
    parser.add_argument("--mb", type=int, default=60)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    for _ in range(args.runs):
        print(report(run(args.uploads, args.mb)), flush=True)


if __name__ == "__main__":
    main()
