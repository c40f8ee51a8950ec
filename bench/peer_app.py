"""The hand-rolled peer: what a Python team writes instead of wasmq, as plainly as they would.

A Flask route that sends a Celery task and waits on `AsyncResult.get()`, served by
gunicorn (gthread, 2 processes x 16 threads), and a Celery prefork task that runs
the module on a fresh wasmtime instance per call, on the same Redis. No records,
no limits, no rate limiting, no fair share: the obvious service, for comparison.

    gunicorn -k gthread -w 2 --threads 16 bench.peer_app:web
    celery -A bench.peer_app worker --concurrency 2

PEER_REDIS_URL names the Redis; PEER_WASM the module file.
"""

from __future__ import annotations

import json
import os

import wasmtime
from celery import Celery
from flask import Flask, jsonify, request

REDIS_URL = os.environ.get("PEER_REDIS_URL", "redis://127.0.0.1:6379/0")
QUEUE = "bench-peer"

celery = Celery("peer", broker=REDIS_URL, backend=REDIS_URL)
celery.conf.update(task_default_queue=QUEUE, worker_prefetch_multiplier=1,
                   task_acks_late=True, worker_hijack_root_logger=False)

_engine = wasmtime.Engine()
_module = None


def _load() -> wasmtime.Module:
    global _module
    if _module is None:
        with open(os.environ["PEER_WASM"], "rb") as f:
            _module = wasmtime.Module(_engine, f.read())
    return _module


@celery.task(name="peer.run")
def run(data: str) -> str:
    store = wasmtime.Store(_engine)
    store.set_wasi(wasmtime.WasiConfig())
    linker = wasmtime.Linker(_engine)
    linker.define_wasi()
    ex = linker.instantiate(store, _load()).exports(store)
    try:
        ex["_start"](store)
    except wasmtime.ExitTrap:
        pass
    payload = data.encode() + b"\0"
    ptr = ex["malloc_buffer"](store, len(payload))
    ex["memory"].write(store, payload, ptr)
    ex["pred"](store)
    n, loc = ex["get_out_len"](store), ex["get_out_loc"](store)
    out = bytes(ex["memory"].read(store, loc, loc + n)).decode()
    ex["free_buffer"](store, ptr)
    return out


web = Flask(__name__)


@web.post("/task/<name>")
def task(name: str):  # noqa: ANN201 - as plain as it gets
    envelope = json.loads(request.get_data())
    result = run.delay(envelope["input"]["data"]).get(timeout=30)
    return jsonify({"statusCode": 1, "result": result})
