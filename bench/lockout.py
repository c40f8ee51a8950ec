"""Upload lockout: five identities flood builds; how long does a bystander's upload take?

Five API keys upload compile bombs (each takes WASMQ_COMPILE_TIMEOUT of CPU before it
is refused) as fast as the gateway takes them, each on a few connections, while a
sixth key uploads a small .wasm (built in its request) and a small model (answered
at once, then built as a job) one after the other. Before build places were shared
fairly, the five took every place: the bystander's uploads answered 503, and a cheap
model waited 114 s. The figures: the bystander's .wasm upload latency, its model's
upload-to-ready time, and how many of its uploads were refused.

`python -m bench.lockout` starts its own Redis and gateway (no worker: builds need
none) and prints them; `python -m bench` includes them; tests/test_hostile_models.py
pins the ordering that makes them hold.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

from bench.stats import percentile, timed_main

FLOODERS, CONNECTIONS_EACH = 5, 4


def run(seconds: float = 10.0) -> dict[str, object]:
    """A gateway of its own, the flood against it, the figures."""
    import requests

    from tests import bombs, modules
    from tests.localstack import start_gateway, start_redis
    from tests.support import child_env
    from tests.test_model_upload import mlp

    keys = [f"flooder{i}" for i in range(FLOODERS)] + ["bystander"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        redis_proc, redis_url = start_redis(work / "redis")
        env = child_env(WASMQ_REDIS_URL=redis_url, WASMQ_API_KEYS=",".join(keys),
                        WASMQ_COMPILE_TIMEOUT="2", WASMQ_GATEWAY_PROCESSES="1")
        gateway, url = start_gateway(env, work / "gateway.log")
        stop = threading.Event()
        flood_codes: dict[int, int] = {}
        lock = threading.Lock()
        bomb = bombs.many_locals()

        def flood(key: str) -> None:
            http = requests.Session()
            while not stop.is_set():
                try:
                    code = http.post(f"{url}/functions", files={"file": ("b.wasm", bomb)},
                                     headers={"Authorization": f"Bearer {key}"},
                                     timeout=120).status_code
                except requests.RequestException:
                    return  # the gateway stopped at the end of the run
                with lock:
                    flood_codes[code] = flood_codes.get(code, 0) + 1
                if code == 503:
                    time.sleep(0.05)

        try:
            threads = [threading.Thread(target=flood, args=(key,), daemon=True)
                       for key in keys[:FLOODERS] for _ in range(CONNECTIONS_EACH)]
            for thread in threads:
                thread.start()
            time.sleep(1.0)  # every place taken
            http = requests.Session()
            auth = {"Authorization": "Bearer bystander"}
            wasm_s: list[float] = []
            ready_s: list[float] = []
            refused = 0
            deadline = time.monotonic() + seconds
            seed = 0
            while time.monotonic() < deadline:
                started = time.monotonic()
                reply = http.post(f"{url}/functions", files={"file": ("e.wasm", modules.ECHO)},
                                  headers=auth, timeout=120)
                if reply.status_code == 201:
                    wasm_s.append(time.monotonic() - started)
                else:
                    refused += 1
                seed += 1
                started = time.monotonic()
                reply = http.post(f"{url}/functions", files={"file": ("m.onnx", mlp(seed=seed))},
                                  headers=auth, timeout=120)
                if reply.status_code != 202:
                    refused += 1
                    continue
                cfid = reply.json()["cfid"]
                while http.get(f"{url}/functions/{cfid}", timeout=30).json()["status"] == \
                        "building":
                    time.sleep(0.05)
                ready_s.append(time.monotonic() - started)
        finally:
            stop.set()
            gateway.stop()
            redis_proc.stop()

    def summary(name: str, values: list[float]) -> dict[str, object]:
        if not values:
            return {f"{name}_count": 0}
        return {f"{name}_p50_s": round(percentile(values, 50), 2),
                f"{name}_max_s": round(max(values), 2), f"{name}_count": len(values)}

    return {"flooders": FLOODERS, "connections_each": CONNECTIONS_EACH, "seconds": seconds,
            "flood_statuses": dict(sorted(flood_codes.items())), "bystander_refused": refused,
            **summary("bystander_wasm_upload", wasm_s),
            **summary("bystander_model_ready", ready_s)}


def report(figures: dict[str, object]) -> str:
    """The lockout's lines for the bench's printout."""
    lines = [f"upload lockout: {figures['flooders']} keys flood compile bombs "
             f"({figures['connections_each']} connections each, {figures['seconds']} s); "
             f"their answers {figures['flood_statuses']}"]
    for name, what in (("bystander_wasm_upload", "a small .wasm upload, built"),
                       ("bystander_model_ready", "a small model, upload to ready")):
        if figures.get(f"{name}_count"):
            lines.append(f"  another key's {what}: p50 {figures[f'{name}_p50_s']} s, max "
                         f"{figures[f'{name}_max_s']} s ({figures[f'{name}_count']} uploads)")
    lines.append(f"  its uploads refused: {figures['bystander_refused']}")
    if "load" in figures:
        lines.append(f"  machine load during the run: {figures['load']}")
    return "\n".join(lines)


def main() -> None:
    timed_main(__doc__, run, report)


if __name__ == "__main__":
    main()
