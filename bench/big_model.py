"""A 500 MB model end to end over HTTP: `python -m bench.big_model`.

VGG-19 (bench/zoo.py, random weights: 548 MB of ONNX) is uploaded to a gateway and
a worker of its own whose limits are raised as an operator would (the settings
below), against a Redis with the `maxmemory` `wasmq up` gives its embedded one.
The figures: the upload's answer time, the build's time (upload to `ready`), the
built module's size, the first call's time (the worker loads the module) and the
next one's, and the peak resident memory of Redis, the gateway, its build process and
the worker.
"""

from __future__ import annotations

import argparse
import base64
import json
import tempfile
import time
from pathlib import Path

import numpy as np

# What VGG-19 needs raised (each default refuses it, naming the setting).
LIMITS = {
    "WASMQ_MAX_MODULE_MB": "1024",  # the upload (548 MB) and the built module (607 MB)
    "WASMQ_COMPILE_MEMORY_MB": "8192",  # the build process plans and packs 548 MB
    "WASMQ_COMPILE_TIMEOUT": "600",
    "WASMQ_MAX_MEMORY_MB": "2048",  # the module's memory holds its weights
    "WASMQ_STORAGE_PER_CALLER_MB": "4096",  # upload, module and artifact
    "WASMQ_MODULE_CACHE_MB": "2048",
    "WASMQ_TASK_TIMEOUT": "120",
}


class PeakRss:
    """The largest resident size seen, every 0.2 s, of the gateway's serving processes,
    its build processes and the worker's processes (each the largest one of its kind):
    what a big module costs in memory on its way from the build to a worker."""

    KINDS = (("build", "wasmq.toolchain.build"), ("gateway", "wasmq gateway"),
             ("worker", "wasmq worker"))

    def __init__(self, *pids: int) -> None:
        import threading

        self.pids, self.peak = pids, dict.fromkeys((k for k, _ in self.KINDS), 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        from bench.stats import process_tree

        while not self._stop.wait(0.2):
            for pid in self.pids:
                for proc in process_tree(pid):
                    try:
                        line, rss = " ".join(proc.cmdline()), proc.memory_info().rss
                    except psutil.Error:
                        continue
                    for kind, mark in self.KINDS:
                        if mark in line:
                            self.peak[kind] = max(self.peak[kind], rss)
                            break

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join()
        return self.peak


def run(model_name: str = "VGG-19") -> dict[str, object]:
    import psutil
    import requests

    from bench.zoo import ZOO
    from tests.localstack import spawn, start_stack, wait_until
    from tests.support import child_env, envelope
    from wasmq.broker.redis_server import free_port, redis_command
    from wasmq.broker.settings import MB, default_redis_maxmemory_mb

    build, shape = ZOO[model_name]
    data = build().SerializeToString()
    image = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    data_field = json.dumps({"input": base64.b64encode(image.tobytes()).decode(), "type": "raw"})
    body = json.dumps(envelope(data_field))
    figures: dict[str, object] = {"model": model_name, "model_mb": round(len(data) / MB),
                                  "redis_maxmemory_mb": default_redis_maxmemory_mb(), **LIMITS}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "redis").mkdir()
        port = free_port()
        redis_proc = spawn(redis_command(work / "redis", port,
                                         maxmemory_mb=default_redis_maxmemory_mb()),
                           child_env(), work / "redis.log", "redis")
        redis_url = f"redis://127.0.0.1:{port}/0"
        import redis as redis_py

        client = redis_py.Redis.from_url(redis_url)
        wait_until(client.ping, what="redis")
        stack = start_stack(work, redis_url, concurrency=1, **LIMITS)
        peak = [0]
        rss = PeakRss(stack.gateway.popen.pid, stack.worker.popen.pid)
        try:
            redis_ps = psutil.Process(redis_proc.pid)
            started = time.monotonic()
            reply = requests.post(f"{stack.url}/functions",
                                  files={"file": ("vgg19.onnx", data)}, timeout=600)
            figures["upload_s"] = round(time.monotonic() - started, 1)
            figures["upload_status"] = reply.status_code
            if reply.status_code not in (201, 202):
                figures["refusal"] = reply.json().get("message")
                return figures
            cfid = reply.json()["cfid"]
            del data
            errors: list[str] = []
            while True:
                answer = requests.get(f"{stack.url}/functions/{cfid}", timeout=60)
                peak[0] = max(peak[0], redis_ps.memory_info().rss)
                record = answer.json()
                if answer.status_code != 200:  # the gateway busy or Redis away: said, not fatal
                    errors.append(f"{answer.status_code} {record.get('message')}")
                elif record["status"] != "building":
                    break
                time.sleep(1)
            figures["errors_while_building"] = errors
            figures["upload_to_ready_s"] = round(time.monotonic() - started, 1)
            figures["status"] = record["status"]
            model = record.get("model") or {}
            figures["build_plan_ms"] = model.get("planMs")  # what the record says
            figures["build_compile_ms"] = model.get("compileMs")
            figures["build_process_ms"] = model.get("buildMs")  # plan, compile, reply
            figures["build_store_ms"] = model.get("storeMs")  # module and artifact to Redis
            if record["status"] != "ready":
                figures["reason"] = record.get("reason") or record.get("message")
                return figures
            figures["module_mb"] = round(record["size"] / MB)
            for which in ("first_call", "second_call"):
                started = time.monotonic()
                answer = requests.post(f"{stack.url}/task/{cfid}?wait=300", data=body,
                                       timeout=600).json()
                figures[f"{which}_s"] = round(time.monotonic() - started, 2)
                figures[f"{which}_status"] = answer["statusCode"]
                figures[f"{which}_timings"] = answer.get("timings")
                if answer["statusCode"] != 1:
                    figures[f"{which}_message"] = answer["message"]
            peak[0] = max(peak[0], redis_ps.memory_info().rss)
            figures["redis_used_mb"] = round(client.info("memory")["used_memory"] / MB)
            figures["redis_peak_rss_mb"] = round(peak[0] / MB)
            for kind, most in rss.stop().items():
                figures[f"{kind}_peak_rss_mb"] = round(most / MB)
        finally:
            rss.stop()
            stack.stop()
            redis_proc.stop()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="VGG-19")
    args = parser.parse_args()
    for name, value in run(args.model).items():
        print(f"{name}: {value}")


if __name__ == "__main__":
    main()
