"""Model builds as jobs, against gateways of their own: a gateway killed mid-build
leaves a lease that runs out, and a gateway started later resumes the build; builds
past the slots and WASMQ_COMPILE_QUEUE are refused at once, storing nothing."""

from __future__ import annotations

import json
import signal
import threading

import numpy as np
import psutil
import pytest
import redis
import requests
from onnx import TensorProto, helper, numpy_helper

from tests.stacks import PrivateStack
from tests.support import wait_until
from tests.test_model_upload import mlp
from wasmq.broker import keys
from wasmq.broker.builds import BuildStore
from wasmq.broker.errors import InvalidModule
from wasmq.broker.registry import Registry, forget_build
from wasmq.broker.settings import Settings
from wasmq.broker.store import RedisStore
from wasmq.toolchain.build import Builds, Built
from wasmq.toolchain.spool import Spooled


def _status(stack: PrivateStack, cfid: str) -> str:
    raw = stack.client().get(keys.function(cfid))
    return json.loads(raw)["status"] if raw else "gone"


def test_a_build_left_by_a_gateway_that_died_is_resumed_by_another(private) -> None:
    stack = private(WASMQ_BUILD_LEASE_S="1", WASMQ_GATEWAY_PROCESSES="1")
    response = requests.post(f"{stack.url}/functions", files={"file": ("m.onnx", mlp(seed=4))},
                             timeout=30)
    assert response.status_code == 202, response.text
    cfid = response.json()["cfid"]
    stack.gateway.signal(signal.SIGKILL)  # the gateway and its build process, mid-build
    stack.gateway.popen.wait(10)
    redis_client = stack.client()
    assert _status(stack, cfid) == "building"
    assert redis_client.sismember(keys.BUILDS, cfid) and redis_client.exists(keys.build(cfid))
    # The lease (1 s) runs out; nobody renews it.
    wait_until(lambda: not redis_client.exists(keys.build_lease(cfid)), timeout=10,
               what="the lease to expire")
    assert _status(stack, cfid) == "building"
    stack.start_gateway()  # its sweep finds the build, takes it over and finishes it
    wait_until(lambda: _status(stack, cfid) == "ready", timeout=60, interval=0.2,
               what="the resumed build")
    # The uploaded model and the lease are gone with the pending build.
    assert not redis_client.sismember(keys.BUILDS, cfid)
    assert not redis_client.exists(keys.build(cfid), keys.build_lease(cfid))
    record = requests.get(f"{stack.url}/functions/{cfid}", timeout=10).json()
    download = requests.get(f"{stack.url}/file/{cfid}.wasm", timeout=10)
    assert download.status_code == 200 and len(download.content) == record["size"]


def test_model_builds_past_the_slots_and_the_queue_are_refused_storing_nothing(
        private) -> None:
    stack = private(WASMQ_COMPILE_QUEUE="1", WASMQ_GATEWAY_PROCESSES="1",
                    WASMQ_COMPILE_PER_CALLER="1000")  # one client fills every place
    slots = psutil.cpu_count()  # one per core, in the one gateway process
    model = mlp(seed=5)
    before = requests.get(f"{stack.url}/functions", timeout=10).json()["total"]
    # Each answered at once, while the builds before it still run (a second each at least).
    replies = [requests.post(f"{stack.url}/functions", files={"file": ("m.onnx", model)},
                             timeout=30) for _ in range(slots + 1 + 2)]
    codes = [r.status_code for r in replies]
    assert codes == [202] * (slots + 1) + [503] * 2, codes
    busy = replies[-1]
    assert "WASMQ_COMPILE_QUEUE" in busy.json()["message"] and busy.headers["Retry-After"]
    accepted = [r.json()["cfid"] for r in replies if r.status_code == 202]
    assert requests.get(f"{stack.url}/functions", timeout=10).json()["total"] == \
        before + len(accepted)
    wait_until(lambda: all(_status(stack, c) == "ready" for c in accepted), timeout=120,
               interval=0.2, what="the accepted builds")
    # Room again once they are done.
    again = requests.post(f"{stack.url}/functions", files={"file": ("m.onnx", model)},
                          timeout=30)
    assert again.status_code == 202, again.text


def _warm_children(stack: PrivateStack) -> set[int]:
    procs = psutil.Process(stack.gateway.pid).children(recursive=True)
    return {p.pid for p in procs if p.is_running()
            and "wasmq.toolchain.build" in " ".join(p.cmdline()) and "warm" in p.cmdline()}


def test_a_model_is_built_by_a_spare_that_has_imported_the_planner_and_dies_with_the_gateway(
        private) -> None:
    """onnx and numpy take about a second to import: a gateway that has built a model keeps
    one build process ready for the next, and no more."""
    stack = private(WASMQ_GATEWAY_PROCESSES="1")

    def built(seed: int) -> None:
        reply = requests.post(f"{stack.url}/functions",
                              files={"file": ("m.onnx", mlp(seed=seed))}, timeout=30)
        assert reply.status_code == 202, reply.text
        cfid = reply.json()["cfid"]
        wait_until(lambda: _status(stack, cfid) == "ready", timeout=60, interval=0.05,
                   what="the build")

    built(6)
    spare = wait_until(lambda: _warm_children(stack), timeout=10, what="a spare")
    assert len(spare) == 1, spare
    built(7)
    after = wait_until(lambda: _warm_children(stack), timeout=10, what="the next spare")
    assert len(after) == 1 and not after & spare, (spare, after)  # the spare built it
    stack.gateway.signal(signal.SIGKILL)
    stack.gateway.popen.wait(10)
    wait_until(lambda: not psutil.pid_exists(next(iter(after))) or
               psutil.Process(next(iter(after))).status() == psutil.STATUS_ZOMBIE,
               timeout=10, what="the spare to exit with its gateway")


def _built_in_the_background(builds: Builds,
                             content: bytes) -> tuple[Built | None, Exception | None]:
    """A model's build as an upload starts it: in a warm build process."""
    done, outcome = threading.Event(), []
    builds.reserve().start(Spooled.of(content),
                           lambda built, exc: (outcome.append((built, exc)), done.set()))
    assert done.wait(120), "the build did not end"
    return outcome[0]


def _stop_spare(builds: Builds) -> None:
    spare = builds._spare
    if spare is not None:
        spare.discard()


def _big(n: int) -> bytes:
    """A model of one n x n MatMul: n * n * 4 bytes of weights."""
    w = np.random.default_rng(0).normal(size=(n, n)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
        [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def test_a_model_over_the_compile_memory_limit_is_refused_naming_it() -> None:
    """The spare imports onnx and numpy before its memory limit is set, so the limit may
    leave little room: an upload it cannot even read is refused naming the limit, not
    as a build that "ended unexpectedly"."""
    builds = Builds(Settings(compile_memory_mb=150))
    try:
        built, exc = _built_in_the_background(builds, _big(3000))  # 36 MB of weights
    finally:
        _stop_spare(builds)
    assert built is None and isinstance(exc, InvalidModule), exc
    assert "compile memory limit of 150 MB (WASMQ_COMPILE_MEMORY_MB)" in exc.message


def test_a_build_process_runs_one_thread_whatever_the_cores() -> None:
    """The slots count cores: numpy's BLAS starting a thread per core in each build
    process (about 40 MB of address space each, under the memory limit) would not."""
    builds = Builds(Settings())
    try:
        built, exc = _built_in_the_background(builds, mlp(seed=8))
        assert built is not None, exc
        spare = wait_until(lambda: builds._spare, what="the spare").popen
        wait_until(lambda: psutil.Process(spare.pid).num_threads() == 1 and
                   psutil.Process(spare.pid).status() == psutil.STATUS_SLEEPING, timeout=20,
                   what=f"the spare to wait, on one thread "
                        f"({psutil.Process(spare.pid).num_threads()} now)")
    finally:
        _stop_spare(builds)


def test_a_sweep_finding_a_build_just_over_leaves_a_new_upload_s_build_pending(
        inprocess_redis: redis.Redis) -> None:
    """A sweep takes a build whose lease is gone: the build may have just ended, and a new
    PUT pended another meanwhile, which the sweep must leave alone. It deleted it instead
    (a third of the time here), and the record then said `building` for ever."""
    store = BuildStore(Registry(inprocess_redis, RedisStore(inprocess_redis)), 30)
    _, build = store.create(b"first", token="gateway-1")
    cfid = build.cfid
    for _ in range(100):
        with inprocess_redis.pipeline() as pipe:  # the last build is over
            forget_build(pipe, cfid)
            pipe.execute()
        start = threading.Barrier(2)

        def sweep(start: threading.Barrier = start) -> None:
            start.wait()
            store.take(cfid, "gateway-2")

        def put(start: threading.Barrier = start) -> None:
            start.wait()
            store.rebuild(cfid, b"second", token="gateway-3")

        threads = [threading.Thread(target=sweep), threading.Thread(target=put)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert inprocess_redis.hget(keys.build(cfid), "upload") == b"second"
        assert inprocess_redis.sismember(keys.BUILDS, cfid)


def test_a_gateway_stopped_gracefully_gives_its_builds_back_at_once(private) -> None:
    """Else a restarted gateway waits out the lease (here 60 s) before resuming them."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.bombs import many_locals

    stack = private(WASMQ_BUILD_LEASE_S="60", WASMQ_GATEWAY_PROCESSES="1",
                    WASMQ_COMPILE_TIMEOUT="3", WASMQ_COMPILE_MEMORY_MB="4096")
    slots, bomb = psutil.cpu_count(), many_locals()
    gateway = psutil.Process(stack.gateway.pid)

    def builds() -> int:
        return sum("wasmq.toolchain.build" in " ".join(p.cmdline())
                   for p in gateway.children(recursive=True))

    def upload(data: bytes) -> requests.Response | None:
        try:
            return requests.post(f"{stack.url}/functions", files={"file": ("m", data)},
                                 timeout=60)
        except requests.RequestException:
            return None  # the gateway stopped under it

    with ThreadPoolExecutor(slots) as pool:
        for _ in range(slots):  # every slot busy: the model waits for one
            pool.submit(upload, bomb)
        wait_until(lambda: builds() >= slots, timeout=10, interval=0.01, what="busy slots")
        reply = upload(mlp(seed=8))
        assert reply is not None and reply.status_code == 202, reply
        cfid = reply.json()["cfid"]
        redis_client = stack.client()
        assert redis_client.exists(keys.build_lease(cfid))
        stack.gateway.signal(signal.SIGTERM)
        stack.gateway.popen.wait(30)
    assert _status(stack, cfid) == "building"
    assert not redis_client.exists(keys.build_lease(cfid))  # given back, not left to expire
    stack.start_gateway()
    wait_until(lambda: _status(stack, cfid) == "ready", timeout=20, interval=0.1,
               what="the build, resumed by the next gateway at once")


def test_a_model_over_redis_s_value_limit_pends_in_parts_and_resumes_whole(
        inprocess_redis: redis.Redis) -> None:
    """VGG-19's 548 MB upload, kept for any gateway to resume its build, was one value
    over Redis's 512 MB bulk limit: the upload answered 503 "Redis is unavailable".
    Here the limit is 1 MB and the model 3 MB."""
    model = np.random.default_rng(5).bytes(3 << 20)
    limit = inprocess_redis.config_get("proto-max-bulk-len")["proto-max-bulk-len"]
    inprocess_redis.config_set("proto-max-bulk-len", str(1 << 20))
    try:
        registry = Registry(inprocess_redis, RedisStore(inprocess_redis))
        with pytest.raises(redis.RedisError):
            BuildStore(registry, 30).create(model, token="gateway-0")  # whole: refused
        store = BuildStore(registry, 30, chunk=256 << 10)
        _, build = store.create(model, token="gateway-1")
        inprocess_redis.delete(keys.build_lease(build.cfid))  # its gateway died
        resumed = store.take(build.cfid, "gateway-2")
        assert resumed is not None and resumed.upload == model and resumed.attempts == 2
        registry.delete(build.cfid)
        assert not inprocess_redis.exists(keys.build(build.cfid))
    finally:
        inprocess_redis.config_set("proto-max-bulk-len", limit)


def test_a_built_model_s_record_says_how_long_each_phase_of_its_build_took(
        inprocess_redis: redis.Redis) -> None:
    """VGG-19 took 74 s from upload to `ready` while its record said 14 s of planning
    and compiling: the record now says the build process's time in all (`buildMs`:
    planning, compiling, writing its reply) and the storing's (`storeMs`)."""
    builds = Builds(Settings())
    try:
        built, exc = _built_in_the_background(builds, mlp(seed=11))
    finally:
        _stop_spare(builds)
    assert exc is None and built is not None
    store = BuildStore(Registry(inprocess_redis, RedisStore(inprocess_redis)), 30)
    _, build = store.create(b"the upload", token="gateway-1")
    try:
        record = store.finish(build, wasm=built.wasm, imports=built.info.imports,
                              exports=built.info.exports, artifact=built.artifact,
                              model=built.model)
    finally:
        built.release()
    assert record is not None and record.status == "ready"
    model = json.loads(inprocess_redis.get(keys.function(build.cfid)))["model"]
    assert model["buildMs"] >= model["planMs"] + model["compileMs"]
    assert 0 <= model["storeMs"] < 60_000


def test_a_spare_started_while_an_upload_is_stored_builds_it() -> None:
    """A gateway's first model waited for its build process to import the planner after
    its upload was stored (VGG-19's: 8 s to store); the spare starts with the upload."""
    builds = Builds(Settings())
    try:
        builds.start_spare()
        spare = builds._spare
        assert spare is not None
        builds.start_spare()
        assert builds._spare is spare  # one spare, not one per upload
        built, exc = _built_in_the_background(builds, mlp(seed=12))
        assert exc is None and built is not None
        built.release()
        assert spare.popen.returncode == 0 and builds._spare is not spare  # it built it
    finally:
        _stop_spare(builds)
