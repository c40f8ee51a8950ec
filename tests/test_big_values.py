"""A big module's way from its build to a worker holds it as few times as it can
(issue 21: VGG-19, 607 MB, took a minute from its build's end to `ready`): the
build process's reply is read mapped, values in parts are written on one
pipeline, and a worker puts an artifact in parts into its memory file a part at
a time. Each test shrinks the sizes that matter so it runs in a moment."""

from __future__ import annotations

import hashlib
import io
import os
import tempfile

import pytest
import redis
import wasmtime

from tests import modules
from tests.modules import variant
from tests.test_artifacts import memory_files
from wasmq.broker import chunks, keys
from wasmq.broker.artifacts import Artifacts, load_module
from wasmq.broker.engine import make_engine
from wasmq.broker.limits import Limits
from wasmq.broker.settings import Settings
from wasmq.broker.store import RedisStore
from wasmq.toolchain.build import Builds, _read_reply, _write_reply
from wasmq.toolchain.spool import Spooled
from wasmq.workers.runtime import Runtime


@pytest.fixture()
def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def compiled(wasm: bytes) -> bytes:
    return bytes(wasmtime.Module(make_engine(), wasm).serialize())


@pytest.mark.fast
def test_a_build_reply_is_read_as_views_of_its_file_and_a_partial_one_as_nothing() -> None:
    with tempfile.TemporaryFile() as out:
        _write_reply(out, {"kind": "onnx"}, b"\0asm-module", bytearray(b"artifact"))
        size = out.tell()
        header, wasm, artifact = _read_reply(out, size)
        assert header["kind"] == "onnx" and (header["wasm"], header["artifact"]) == (11, 8)
        assert isinstance(wasm, memoryview) and wasm == b"\0asm-module"
        assert artifact == b"artifact"
        del wasm, artifact
        for cut in (0, 5, 12, size - 1):  # a child killed while it wrote
            assert _read_reply(out, cut)[0] == {}


@pytest.mark.fast
def test_a_built_module_is_what_the_build_process_wrote_and_loads() -> None:
    wasm = variant(modules.ECHO)
    built = Builds(Settings()).build(Spooled.of(wasm))
    try:
        assert built.wasm == wasm and "pred" in built.info.exports
        module = wasmtime.Module.deserialize(make_engine(), bytes(built.artifact))
        assert "pred" in {e.name for e in module.exports}
    finally:
        built.release()


def test_parts_are_written_on_one_pipeline_and_counted_only_when_all_are_taken(
        client: redis.Redis) -> None:
    data = os.urandom(10_000)
    key = "test:big-values:parts"
    client.delete(key)
    calls = client.info("commandstats").get("cmdstat_hset", {}).get("calls", 0)
    assert chunks.write_parts(client, lambda pipe, field, value: pipe.hset(key, field, value),
                              "v", memoryview(data), 4096, accepted=lambda reply: True)
    assert client.info("commandstats")["cmdstat_hset"]["calls"] - calls == 3 + 1
    assert chunks.read_parts(client, key, "v", int(client.hget(key, "v:parts"))) == data
    client.delete(key)
    # A part refused (a Lua script's 0): no count, nothing whole.
    assert not chunks.write_parts(
        client, lambda pipe, field, value: pipe.eval("return 0", 0), "v", data, 4096)
    assert not client.exists(key)


def test_an_artifact_in_parts_goes_into_the_memory_file_and_a_small_one_loads_from_bytes(
        client: redis.Redis) -> None:
    wasm = variant(modules.NOT_JSON)
    digest = RedisStore(client).put(wasm)
    artifact = compiled(wasm)
    artifacts = Artifacts(client, chunk=4096)
    assert artifacts.put(digest, artifact)
    assert client.hget(keys.artifacts(digest), artifacts.fingerprint) is None  # in parts
    out = io.BytesIO()
    assert artifacts.get_into(digest, out) == len(artifact) and out.getvalue() == artifact
    before = memory_files()
    module, size = load_module(make_engine(), artifacts, digest,
                               lambda: pytest.fail("the artifact must be used"), map_from=0)
    assert size == len(artifact) and memory_files() == before + 1  # mapped, and kept
    del module
    assert memory_files() == before
    module, size = load_module(make_engine(), artifacts, digest,
                               lambda: pytest.fail("the artifact must be used"),
                               map_from=len(artifact) + 1)
    assert size == len(artifact) and memory_files() == before  # small: from bytes
    runtime = Runtime(artifacts=artifacts)
    runtime.map_from = 0
    prepared = runtime.prepare(digest, lambda: pytest.fail("the artifact must be used"))
    assert runtime.run(prepared, b"x", Limits()).output == modules.NOT_JSON_TEXT.encode()
    assert hashlib.sha256(wasm).hexdigest() == digest
