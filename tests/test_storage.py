"""Storage is bounded and says so (issue 14, point 3): `wasmq up` runs its Redis with
`maxmemory` (WASMQ_REDIS_MAXMEMORY_MB) and `noeviction`. Filled by one client's
calls, it refuses new writes with 507 "storage is full", never "unavailable", and
loses nothing already stored; a result a worker cannot store is not lost either."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from tests import modules
from tests.stacks import PrivateStack
from tests.support import Api, start_up
from wasmq.instance import read_instance

MAXMEMORY_MB = 24
CHUNK = "z" * (1024 * 1024)  # 1 MB inputs, echoed: 1 MB results kept for a day


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Api, redis.Redis, Path]]:
    workdir = tmp_path_factory.mktemp("full")
    # No per-caller quota in the way: this fills the whole store (tests/test_quota.py
    # pins the quota).
    up = start_up(workdir, WASMQ_REDIS_MAXMEMORY_MB=str(MAXMEMORY_MB), WASMQ_TASK_TIMEOUT="2",
                  WASMQ_STORAGE_PER_CALLER_MB="100000")
    try:
        redis_url = read_instance(up.data_dir).redis_url
        yield Api(up.url), redis.Redis.from_url(redis_url), workdir
    finally:
        up.stop()


def test_the_embedded_redis_has_a_memory_limit_and_never_evicts(small) -> None:
    _, client, _ = small
    assert client.config_get("maxmemory")["maxmemory"] == str(MAXMEMORY_MB * 1024 * 1024)
    assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    # Its append-only file is rewritten past the memory limit (at least 64 MB).
    assert client.config_get("auto-aof-rewrite-min-size")["auto-aof-rewrite-min-size"] == \
        str(max(64, MAXMEMORY_MB) * 1024 * 1024)


def test_a_full_redis_answers_storage_is_full_and_loses_nothing(small) -> None:
    api, client, workdir = small
    echo = api.deploy(modules.ECHO, name="echo")
    first = api.call(echo, "the first result")
    assert first.json()["statusCode"] == 1
    stored, refused, seen = [], None, []
    for _ in range(4 * MAXMEMORY_MB):
        response = api.call(echo, CHUNK)
        if response.status_code != 200:
            refused = response
            break
        body = response.json()
        seen.append(body["statusCode"])
        if body["statusCode"] == 1:
            stored.append(body["tid"])
        else:  # taken in, but its result did not fit: the worker says so
            assert "storage is full: the task ran" in body["message"], body["message"]
    assert refused is not None, f"Redis never filled up: {seen}"
    assert refused.status_code == 507, refused.text
    body = refused.json()
    assert body["statusCode"] == 0 and body["message"].startswith("storage is full: ")
    assert "unavailable" not in body["message"]
    # Whether an upload still fits depends on what the worker freed meanwhile (a
    # by-reference input is deleted once its task ends); if refused, it says why.
    upload = api.upload(modules.variant(modules.ECHO))
    assert upload.status_code == 201 or (
        upload.status_code == 507 and upload.json()["message"].startswith("storage is full")
    ), upload.text
    # Nothing already stored is lost: functions, binaries, results.
    assert "echo" in {f["name"] for f in api.http.get(f"{api.url}/functions").json()["functions"]}
    assert api.http.get(f"{api.url}/file/{echo}.wasm").content == modules.ECHO
    assert api.retrieve(first.json()["tid"]).json()["result"] == "the first result"
    for tid in stored:
        assert api.retrieve(tid).json()["result"] == CHUNK
    assert requests.get(f"{api.url}/healthz", timeout=2).ok

    # Workers may have met the full Redis too (a result that did not fit, a message
    # that could not be recorded as unacked): none of them died of it.
    assert "Unrecoverable error" not in (workdir / "data" / "worker.log").read_text()
    assert "restarting" not in (workdir / "up.log").read_text()
    # Room again (the operator raises the limit): calls run and are stored again.
    client.config_set("maxmemory", f"{4 * MAXMEMORY_MB}mb")
    assert api.call(echo, "room again").json()["result"] == "room again"


def test_calls_are_refused_a_reserve_short_of_redis_s_limit(private) -> None:
    # Past its limit Redis refuses every command queued in a MULTI, kombu's
    # acknowledgements and delivery records among them, and Celery's consumer stops on
    # it ("Unrecoverable error"). Redis admits a write while under its limit, so writes
    # admitted just under it, and what they make Redis allocate besides, leave it over:
    # wasmq's stop a twentieth of the limit short (broker/room.lua). No node here:
    # every call's input stays stored.
    stack: PrivateStack = private(WASMQ_STORAGE_PER_CALLER_MB="100000")
    client, api = stack.client(), stack.api()
    echo = api.deploy(modules.ECHO, name="echo")
    client.config_set("maxmemory-policy", "noeviction")
    limit = client.info("memory")["used_memory"] + 24 * 2**20
    client.config_set("maxmemory", limit)
    time.sleep(1.1)  # wasmq reads the limit again within a second
    for _ in range(200):
        response = api.call(echo, "y" * (256 * 1024), wait=0)
        # What wasmq stores, not the query buffers of the connections writing it,
        # which Redis shrinks on its own and the reserve is there to hold.
        info = client.info("memory")
        kept = info["used_memory"] - info["mem_clients_normal"]
        assert kept <= limit - limit // 20, (kept, info["mem_clients_normal"], limit)
        if response.status_code == 507:
            assert response.json()["message"].startswith("storage is full: ")
            break
        assert response.status_code == 202, response.text
    else:
        raise AssertionError("Redis never filled up")
