"""Registry changes are atomic (issue 20, point 3), and a full store fails builds at
once while reads go on (issue 22, point 8)."""

from __future__ import annotations

import json
import random
import threading
import time

import redis
import requests

from tests import modules
from tests.support import wait_until
from tests.test_model_upload import mlp
from wasmq.broker import keys
from wasmq.broker.builds import BuildStore
from wasmq.broker.errors import NotFound
from wasmq.broker.registry import Registry
from wasmq.broker.store import RedisStore, sha256_hex

PUT_BINARY = b"\0asm the module every PUT uploads"  # shared: its references are counted


def _check(client: redis.Redis) -> None:
    """No binary without a record using it, no record pointing to a missing binary, no
    record `building` without its pending build, and references that match records."""
    records = {}
    for key in client.scan_iter(f"{keys.PREFIX}:function:*"):
        record = json.loads(client.get(key))
        records[record["cfid"]] = record
    used: dict[str, set[str]] = {}
    for cfid, record in records.items():
        if record["sha256"]:
            assert client.exists(keys.blob(record["sha256"])), f"{cfid}: binary missing"
            used.setdefault(record["sha256"], set()).add(cfid)
        if record["status"] == "building" or (record.get("build") or {}).get(
                "status") == "building":
            assert client.sismember(keys.BUILDS, cfid) and client.exists(keys.build(cfid)), \
                f"{cfid}: building with no build pending"
    for key in client.scan_iter(f"{keys.PREFIX}:blob:*"):
        sha = key.decode().rsplit(":", 1)[1]
        assert sha in used, f"orphan binary {sha}"
        refs = {c.decode() for c in client.smembers(keys.blob_refs(sha))}
        assert refs == used[sha], (sha, refs, used[sha])


def test_put_delete_and_build_completion_interleaved_300_times_leave_no_orphan(
        inprocess_redis: redis.Redis) -> None:
    registry = Registry(inprocess_redis, RedisStore(inprocess_redis))
    store = BuildStore(registry, 30)
    rng = random.Random(7)
    for i in range(300):
        _, build = store.create(b"model", token="gateway")
        cfid = build.cfid
        start = threading.Barrier(2 if i % 4 == 0 else 3)

        def jitter(start: threading.Barrier = start) -> None:
            start.wait()
            time.sleep(rng.random() * 0.002)

        def finish(build=build, i=i) -> None:  # noqa: ANN001 - bound per round
            jitter()
            store.finish(build, wasm=b"\0asm built %d" % i, imports=[], exports=[],
                         artifact=None, model={})

        def put(cfid: str = cfid) -> None:
            jitter()
            try:
                registry.replace(cfid, PUT_BINARY, imports=[], exports=[])
            except NotFound:
                pass  # deleted first

        def delete(cfid: str = cfid) -> None:
            jitter()
            try:
                registry.delete(cfid)
            except NotFound:
                pass

        def put_model(cfid: str = cfid) -> None:  # a new model over it: a build pending
            jitter()
            try:
                store.rebuild(cfid, b"another model", token="gateway-2")
            except NotFound:
                pass

        steps = [[finish, delete], [finish, put, delete], [finish, put_model, delete],
                 [finish, put, put_model]][i % 4]
        threads = [threading.Thread(target=step) for step in steps]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        _check(inprocess_redis)
    for key in list(inprocess_redis.scan_iter(f"{keys.PREFIX}:function:*")):
        registry.delete(key.decode().rsplit(":", 1)[1])
    assert not list(inprocess_redis.scan_iter(f"{keys.PREFIX}:blob*")), "binaries left"
    assert not inprocess_redis.exists(keys.blob(sha256_hex(PUT_BINARY)))


def test_a_full_store_fails_a_build_at_once_and_reads_go_on(private) -> None:
    """A build whose result did not fit was rebuilt three times and stayed `building`
    about two minutes; GET /functions once answered 507 (a MULTI refused when full)."""
    stack = private(WASMQ_GATEWAY_PROCESSES="1")
    url, client = stack.url, stack.client()
    echo = requests.post(f"{url}/functions", files={"file": ("echo.wasm", modules.ECHO)},
                         timeout=30).json()["cfid"]
    tid = requests.post(f"{url}/task/{echo}?wait=0", timeout=10, json={
        "input": {"content-type": "json", "location": "embedded", "data": "hi"},
        "output": {"content-type": "json", "location": "echo"}, "control": 1,
        "properties": {"language": "WASM"}}).json()["tid"]
    reply = requests.post(f"{url}/functions", files={"file": ("m.onnx", mlp(seed=9))},
                          timeout=30)
    assert reply.status_code == 202, reply.text
    cfid = reply.json()["cfid"]
    client.config_set("maxmemory", 1)  # full from now on: every write that grows refused
    try:
        started = time.monotonic()

        def status() -> dict:
            return json.loads(client.get(keys.function(cfid)))

        wait_until(lambda: status()["status"] != "building", timeout=30, interval=0.1,
                   what="the build to end")
        assert status()["status"] == "failed"
        assert status()["reason"].startswith("storage is full"), status()["reason"]
        assert time.monotonic() - started < 20
        assert not client.sismember(keys.BUILDS, cfid)
        listing = requests.get(f"{url}/functions", timeout=10)
        assert listing.status_code == 200 and listing.json()["total"] == 2, listing.text
        assert requests.get(f"{url}/functions/{cfid}", timeout=10).json()["status"] == "failed"
        download = requests.get(f"{url}/file/{echo}.wasm", timeout=10)
        assert download.status_code == 200 and download.content == modules.ECHO
        retrieved = requests.get(f"{url}/retrieve/{tid}", timeout=10)
        assert retrieved.status_code in (200, 202), retrieved.text
        assert requests.delete(f"{url}/functions/{echo}", timeout=10).status_code == 204
    finally:
        client.config_set("maxmemory", 0)
