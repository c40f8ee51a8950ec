"""An ONNX model uploaded like a module: answered at once (202) and built as a job in the
bounded build step, then called and downloaded as any function; a model it cannot
build fails saying what to change; a new model replaces the old only once built."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import redis
import wasmtime
from onnx import TensorProto, helper, numpy_helper

from tests.support import Api, wait_until
from wasmq.broker import keys


def mlp(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    w1, b1 = rng.normal(size=(4, 8)).astype(np.float32), rng.normal(size=8).astype(np.float32)
    w2, b2 = rng.normal(size=(8, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
         helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Gemm", ["r", "w2", "b2"], ["y"]),
         helper.make_node("Softmax", ["y"], ["probabilities"], axis=1)],
        "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, 3])],
        [numpy_helper.from_array(a, n) for a, n in
         ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def odd() -> bytes:
    """A model with an operator nobody builds."""
    graph = helper.make_graph(
        [helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")], "odd",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    return helper.make_model(graph, opset_imports=[
        helper.make_opsetid("", 13), helper.make_opsetid("com.example", 1)]).SerializeToString()


def test_a_truncated_model_is_told_what_was_expected(api: Api) -> None:
    model = mlp()
    response = api.upload(model[: len(model) // 2])
    assert response.status_code == 400
    message = response.json()["message"]
    assert "expected a WebAssembly module" in message and "or an ONNX model" in message
    assert "a truncated or damaged .onnx is neither" in message


def test_a_pickled_estimator_is_told_to_convert_it_on_the_client(api: Api) -> None:
    response = api.upload(pickle.dumps({"coef_": [1.0, 2.0]}))
    assert response.status_code == 400
    message = response.json()["message"]
    assert "expected a WebAssembly module" in message and "got a Python pickle" in message
    assert "Client(url).deploy_model(fitted)" in message


def settled(api: Api, cfid: str, timeout: float = 60.0) -> dict:
    """The record once no build of it is pending."""
    def done() -> dict | None:
        record = api.http.get(f"{api.url}/functions/{cfid}", timeout=10).json()
        building = record["status"] == "building" or (record.get("build") or {}).get(
            "status") == "building"
        return None if building else record

    return wait_until(done, timeout=timeout, interval=0.1, what=f"the build of {cfid}")


def answer(api: Api, cfid: str, x: list[float]) -> list[float]:
    reply = api.call(cfid, json.dumps({"input": [x]})).json()
    assert reply["statusCode"] == 1, reply
    return json.loads(reply["result"])["output"]


def expected(model: bytes, x: list[float]) -> np.ndarray:
    return ort.InferenceSession(model).run(None, {"x": np.array([x], np.float32)})[0].ravel()


X = [0.5, -1.0, 2.0, 0.25]


def test_an_onnx_upload_is_answered_at_once_and_becomes_a_function_that_answers_as_onnxruntime_does(
        api: Api) -> None:
    model = mlp()
    response = api.upload(model, name="mlp")  # told apart by content, not by a file name
    assert response.status_code == 202, response.text
    record = response.json()
    cfid = record["cfid"]
    assert response.headers["Location"] == f"/functions/{cfid}"
    assert record["kind"] == "onnx" and record["status"] == "building"
    # Building (a build takes a second at least: a process, onnx, the plan): calls and
    # downloads are told to come back, never a 500.
    call = api.call(cfid, json.dumps({"input": [X]}))
    assert call.status_code == 503 and int(call.headers["Retry-After"]) > 0, call.text
    assert call.json()["statusCode"] == 0 and "still building" in call.json()["message"]
    download = api.http.get(f"{api.url}/file/{cfid}.wasm")
    assert download.status_code == 503 and download.headers["Retry-After"], download.text
    assert "still building" in download.json()["message"]
    listed = api.http.get(f"{api.url}/functions", params={"limit": 1000}).json()["functions"]
    assert any(f["cfid"] == cfid and f["status"] == "building" for f in listed)

    record = settled(api, cfid)
    assert record["status"] == "ready" and record["reason"] == "", record
    assert record["model"]["inputs"][0]["name"] == "x"
    reply = json.loads(api.call(cfid, json.dumps({"input": [X]})).json()["result"])
    np.testing.assert_allclose(reply["output"], expected(model, X), rtol=1e-5, atol=1e-6)
    assert "probabilities" not in reply  # the first output is written once, as "output"
    # The download is the built module, runnable anywhere WebAssembly runs.
    wasm = api.http.get(f"{api.url}/file/{cfid}.wasm").content
    wasmtime.Module(wasmtime.Engine(wasmtime.Config()), wasm)
    assert len(wasm) == record["size"]
    # Wrong input: the task fails saying what the model expects.
    failed = api.call(cfid, json.dumps({"input": [[1, 2]]})).json()
    assert failed["statusCode"] == 0 and "4" in failed["message"], failed


def test_a_model_it_cannot_build_fails_naming_the_operator_and_calls_say_why(api: Api) -> None:
    response = api.upload(odd(), name="odd")
    assert response.status_code == 202, response.text
    cfid = response.json()["cfid"]
    record = settled(api, cfid)
    assert record["status"] == "failed", record
    assert "Frobnicate" in record["reason"] and "com.example" in record["reason"], record
    call = api.call(cfid, json.dumps({"input": [X]}))
    assert call.status_code == 409, call.text
    assert "Frobnicate" in call.json()["message"] and call.json()["statusCode"] == 0
    download = api.http.get(f"{api.url}/file/{cfid}.wasm")
    assert download.status_code == 409 and "Frobnicate" in download.json()["message"]
    # A model it can build, under the same cfid, makes it a working function.
    again = api.http.put(f"{api.url}/functions/{cfid}", files={"file": ("m.onnx", mlp())})
    assert again.status_code == 202 and again.json()["status"] == "building", again.text
    assert settled(api, cfid)["status"] == "ready"
    np.testing.assert_allclose(answer(api, cfid, X), expected(mlp(), X), rtol=1e-5, atol=1e-6)
    assert api.http.delete(f"{api.url}/functions/{cfid}").status_code == 204


def test_a_model_with_a_dimension_it_cannot_pin_fails_naming_it(api: Api) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "dyn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "width"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "width"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    response = api.upload(model.SerializeToString(), name="dyn")
    assert response.status_code == 202, response.text
    record = settled(api, response.json()["cfid"])
    assert record["status"] == "failed" and "width" in record["reason"], record


def test_a_new_model_serves_only_once_built_and_a_failed_one_leaves_the_old_serving(
        api: Api) -> None:
    first, second = mlp(seed=0), mlp(seed=1)
    cfid = api.upload(first, name="swap").json()["cfid"]
    assert settled(api, cfid)["status"] == "ready"
    replaced = api.http.put(f"{api.url}/functions/{cfid}", files={"file": ("m.onnx", second)})
    assert replaced.status_code == 202, replaced.text
    record = replaced.json()
    assert record["status"] == "ready" and record["build"]["status"] == "building", record
    # The old module answers while the new one builds.
    np.testing.assert_allclose(answer(api, cfid, X), expected(first, X), rtol=1e-5, atol=1e-6)
    record = settled(api, cfid)
    assert record["status"] == "ready" and record["build"] is None, record
    np.testing.assert_allclose(answer(api, cfid, X), expected(second, X), rtol=1e-5, atol=1e-6)
    # A model it cannot build leaves the last good one serving, and says why.
    refused = api.http.put(f"{api.url}/functions/{cfid}", files={"file": ("m.onnx", odd())})
    assert refused.status_code == 202, refused.text
    record = settled(api, cfid)
    assert record["status"] == "ready" and record["build"]["status"] == "failed", record
    assert "Frobnicate" in record["build"]["reason"]
    np.testing.assert_allclose(answer(api, cfid, X), expected(second, X), rtol=1e-5, atol=1e-6)
    assert api.http.get(f"{api.url}/file/{cfid}.wasm").status_code == 200


def test_a_function_deleted_while_building_stays_deleted(api: Api, redis_url: str) -> None:
    cfid = api.upload(mlp(seed=3), name="gone").json()["cfid"]
    assert api.http.delete(f"{api.url}/functions/{cfid}").status_code == 204
    client = redis.Redis.from_url(redis_url)
    # The build ends (its process is not stopped), finds the function gone, drops its result.
    wait_until(lambda: not client.sismember(keys.BUILDS, cfid), timeout=30, what="the build")
    time.sleep(3)
    assert api.http.get(f"{api.url}/functions/{cfid}").status_code == 404
    assert not client.exists(keys.build(cfid), keys.build_lease(cfid), keys.function(cfid))


def test_wasmq_deploy_builds_a_model_from_a_terminal(api: Api, tmp_path: Path) -> None:
    path = tmp_path / "mlp.onnx"
    path.write_bytes(mlp(seed=2))
    done = subprocess.run([sys.executable, "-m", "wasmq", "deploy", str(path), "--url", api.url],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    cfid = done.stdout.strip()
    assert api.http.get(f"{api.url}/functions/{cfid}").json()["kind"] == "onnx"
