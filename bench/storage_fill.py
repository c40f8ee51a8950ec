"""Storage fill: one API key fills its storage quota; is everyone else still served?

One key calls a tiny module that answers 2 MB a call, on a few connections, as fast as
the gateway takes them: before the per-caller quota, 21 such calls filled a 512 MB store
and every other caller's calls answered 507 "storage is full" for a day. Here the store
is 512 MB (so the quota is its sixteenth, 32 MB) and a second key calls an echo and
uploads small modules meanwhile. The figures: the flooder's answers (200 until its
quota, then 507 naming it), the bytes it keeps, and the bystander's call and upload
latency and refusals.

`python -m bench.storage_fill` starts its own Redis, gateway and worker and prints them;
`python -m bench` includes them; tests/test_quota.py pins the behaviour.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import redis

from bench.stats import percentile, timed_main

STORE_MB, CONNECTIONS = 512, 4


def run(seconds: float = 10.0) -> dict[str, object]:
    from tests import hostile, modules
    from tests.localstack import start_redis, start_stack
    from tests.support import Api
    from wasmq.api.caller import caller_of
    from wasmq.broker.settings import Settings
    from wasmq.broker.usage import Usage

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        redis_proc, url = start_redis(work / "redis")
        stack = start_stack(work / "stack", url, WASMQ_API_KEYS="flooder,bystander",
                            WASMQ_REDIS_MAXMEMORY_MB=str(STORE_MB), WASMQ_MAX_BATCH="1")
        try:
            client = redis.Redis.from_url(url)
            client.config_set("maxmemory", f"{STORE_MB}mb")
            api = Api(stack.url)
            api.http.headers["Authorization"] = "Bearer flooder"
            big = api.deploy(hostile.OUTPUT_TOO_LARGE, name="two-megabytes")
            api.http.headers["Authorization"] = "Bearer bystander"
            echo = api.deploy(modules.ECHO, name="echo")
            stop, flood = time.monotonic() + seconds, Counter()

            def flooder() -> None:
                mine = Api(stack.url)
                mine.http.headers["Authorization"] = "Bearer flooder"
                while time.monotonic() < stop:
                    flood[mine.call(big, "x", wait=30).status_code] += 1

            threads = [threading.Thread(target=flooder) for _ in range(CONNECTIONS)]
            for t in threads:
                t.start()
            calls, uploads, refused = [], [], 0
            while time.monotonic() < stop:
                started = time.monotonic()
                answer = api.call(echo, "bystander", wait=30)
                calls.append(time.monotonic() - started)
                started = time.monotonic()
                upload = api.upload(modules.variant(modules.ECHO), "bystander's")
                uploads.append(time.monotonic() - started)
                refused += (answer.status_code != 200) + (upload.status_code != 201)
            for t in threads:
                t.join()
            who = caller_of(Settings(api_keys=("flooder",)), "flooder", "127.0.0.1").identity
            kept = Usage(Settings().result_ttl).kept(client, who)
        finally:
            stack.stop()
            redis_proc.stop()
    return {"seconds": seconds, "store_mb": STORE_MB, "flood_statuses": dict(flood),
            "flooder_keeps_mb": round(kept / 2**20, 1),
            "bystander_call_p50_ms": round(percentile(calls, 50) * 1000, 1),
            "bystander_call_p99_ms": round(percentile(calls, 99) * 1000, 1),
            "bystander_upload_p50_ms": round(percentile(uploads, 50) * 1000, 1),
            "bystander_upload_max_ms": round(max(uploads) * 1000, 1),
            "bystander_refused": refused, "bystander_count": len(calls)}


def report(figures: dict[str, object]) -> str:
    return "\n".join([
        f"storage fill: one key calls a 2 MB-answer module on {CONNECTIONS} connections "
        f"({figures['seconds']} s, a {figures['store_mb']} MB store); its answers "
        f"{figures['flood_statuses']}, it keeps {figures['flooder_keeps_mb']} MB",
        f"  another key's calls: p50 {figures['bystander_call_p50_ms']} ms, p99 "
        f"{figures['bystander_call_p99_ms']} ms; its uploads: p50 "
        f"{figures['bystander_upload_p50_ms']} ms, max {figures['bystander_upload_max_ms']} ms "
        f"({figures['bystander_count']} of each, {figures['bystander_refused']} refused)"])


def main() -> None:
    timed_main(__doc__, run, report)


if __name__ == "__main__":
    main()
