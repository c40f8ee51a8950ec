"""Compile once: the artifact stored at upload is what workers run, per engine fingerprint."""

from __future__ import annotations

import hashlib
import os

import pytest
import redis
import requests
import wasmtime

from tests import modules
from tests.modules import variant
from tests.support import Api
from wasmq.broker import keys
from wasmq.broker.artifacts import Artifacts, load_module
from wasmq.broker.engine import SETTINGS, fingerprint, make_engine
from wasmq.broker.limits import Limits
from wasmq.broker.registry import Registry
from wasmq.broker.settings import MB
from wasmq.broker.store import RedisStore
from wasmq.workers.runtime import MAX_MAPPED_MODULES, Runtime


@pytest.fixture()
def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def sha(wasm: bytes) -> str:
    return hashlib.sha256(wasm).hexdigest()


def compiled(wasm: bytes) -> bytes:
    return bytes(wasmtime.Module(make_engine(), wasm).serialize())


def test_upload_stores_the_compiled_module_under_sha256_and_fingerprint(
        api: Api, client: redis.Redis) -> None:
    wasm = variant(modules.ECHO)
    api.deploy(wasm)
    artifact = client.hget(keys.artifacts(sha(wasm)), fingerprint())
    assert artifact is not None
    module = wasmtime.Module.deserialize(make_engine(), artifact)
    assert "pred" in {e.name for e in module.exports}


def test_workers_run_the_stored_artifact_not_a_fresh_compile(
        api: Api, client: redis.Redis) -> None:
    # Store an echo module with another module's artifact (workers may load it
    # as soon as the function exists): if a worker compiled the binary itself,
    # the call would echo its input.
    wasm = variant(modules.ECHO)
    cfid = Registry(client, RedisStore(client)).create(
        wasm, imports=[], exports=[], artifact=compiled(modules.NOT_JSON)).cfid
    assert api.call(cfid, "echo me").json()["result"] == modules.NOT_JSON_TEXT


def test_a_worker_with_another_fingerprint_compiles_and_stores_its_own(
        client: redis.Redis) -> None:
    wasm = variant(modules.ECHO)
    digest = RedisStore(client).put(wasm)
    Artifacts(client).put(digest, compiled(wasm))
    fetched = []
    other = Artifacts(client, engine_fingerprint="another-engine")

    def fetch() -> bytes:
        fetched.append(1)
        return wasm

    module, size = load_module(make_engine(), other, digest, fetch)
    assert fetched == [1] and "pred" in {e.name for e in module.exports}
    stored = client.hgetall(keys.artifacts(digest))
    assert set(stored) == {fingerprint().encode(), b"another-engine"}
    assert size == len(stored[b"another-engine"])
    load_module(make_engine(), other, digest, fetch)
    assert fetched == [1], "the second load must deserialize what the first stored"


def test_an_artifact_that_does_not_load_is_recompiled_and_replaced(client: redis.Redis) -> None:
    wasm = variant(modules.ECHO)
    digest = RedisStore(client).put(wasm)
    artifacts = Artifacts(client, engine_fingerprint="corrupt-engine")
    client.hset(keys.artifacts(digest), "corrupt-engine", b"not a compiled module")
    load_module(make_engine(), artifacts, digest, lambda: wasm)
    assert wasmtime.Module.deserialize(make_engine(), artifacts.get(digest))


def test_no_artifact_is_stored_for_a_binary_that_is_gone(client: redis.Redis) -> None:
    wasm = variant(modules.ECHO)
    assert not Artifacts(client).put(sha(wasm), compiled(wasm))
    assert not client.exists(keys.artifacts(sha(wasm)))


def test_deleting_the_last_function_of_a_binary_deletes_its_artifacts(
        api: Api, client: redis.Redis) -> None:
    wasm = variant(modules.ECHO)
    cfid = api.deploy(wasm)
    assert api.call(cfid, "x").json()["statusCode"] == 1  # loaded by a worker: hot
    assert client.zscore(keys.HOT_MODULES, sha(wasm)) is not None
    assert requests.delete(f"{api.url}/functions/{cfid}").status_code == 204
    assert not client.exists(keys.artifacts(sha(wasm)))
    assert client.zscore(keys.HOT_MODULES, sha(wasm)) is None


def test_the_fingerprint_changes_with_the_engine_settings() -> None:
    assert fingerprint() == fingerprint(SETTINGS)
    assert fingerprint(SETTINGS + (("consume_fuel", True),)) != fingerprint()
    assert len(fingerprint()) == 16


def memory_files() -> int:
    return sum(os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:wasmq-module")
               for fd in os.listdir("/proc/self/fd") if os.path.exists(f"/proc/self/fd/{fd}"))


@pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="memory files are Linux-only")
def test_a_large_artifact_runs_mapped_from_a_memory_file_released_with_the_module(
        client: redis.Redis) -> None:
    wasm = variant(modules.NOT_JSON)  # its output comes from its data segment
    digest = RedisStore(client).put(wasm)
    Artifacts(client).put(digest, compiled(wasm))
    runtime = Runtime(artifacts=Artifacts(client))
    runtime.map_from = 0  # as if the module were large
    before = memory_files()
    prepared = runtime.prepare(digest, lambda: pytest.fail("the artifact must be used"))
    assert memory_files() == before + 1
    assert runtime.run(prepared, b"x", Limits()).output == modules.NOT_JSON_TEXT.encode()
    del prepared
    runtime.forget(digest)
    assert memory_files() == before


def test_at_most_256_modules_of_a_full_cache_hold_a_memory_file() -> None:
    for mb in (1, 256, 4096):
        runtime = Runtime(cache_bytes=mb * MB)
        assert runtime.cache_bytes // runtime.map_from <= MAX_MAPPED_MODULES == 256


def padded(module: bytes, nbytes: int) -> bytes:
    """`module` made `nbytes` longer by a custom section: a new sha256, the same code."""
    name = b"wasmq-padding"
    payload = bytes([len(name)]) + name + os.urandom(16) + bytes(nbytes)
    return bytes(module) + b"\x00" + modules._leb128(len(payload)) + payload


def test_a_module_over_redis_s_value_limit_is_stored_in_parts_run_and_deleted(
        api: Api, client: redis.Redis) -> None:
    """VGG-19 built into 607 MB: over Redis's 512 MB bulk limit, it could not be stored.
    Here the limit is lowered to 1 MB and the module is 3 MB; a worker, which knows
    nothing of part sizes, runs it."""
    wasm = padded(modules.ECHO, 3 * MB)
    limit = client.config_get("proto-max-bulk-len")["proto-max-bulk-len"]
    client.config_set("proto-max-bulk-len", str(1 * MB))
    try:
        with pytest.raises(redis.RedisError):
            RedisStore(client).put(wasm)  # whole, as before: refused by Redis
        store = RedisStore(client, chunk=512 * 1024)
        artifacts = Artifacts(client, chunk=4096)  # the artifact is small: parts too
        artifact = compiled(wasm)
        assert len(artifact) > 2 * 4096
        record = Registry(client, store, artifacts).create(wasm, imports=[], exports=[],
                                                           artifact=artifact)
        assert client.type(keys.blob(sha(wasm))) == b"hash"
        assert client.hget(keys.artifacts(sha(wasm)), fingerprint()) is None  # only parts
        assert store.get(sha(wasm)) == wasm and Artifacts(client).get(sha(wasm)) == artifact
        assert api.call(record.cfid, "in parts").json()["result"] == "in parts"
        assert requests.get(f"{api.url}/file/{record.cfid}.wasm").content == wasm
        assert requests.delete(f"{api.url}/functions/{record.cfid}").status_code == 204
        assert not client.exists(keys.blob(sha(wasm)), keys.artifacts(sha(wasm)))
    finally:
        client.config_set("proto-max-bulk-len", limit)
