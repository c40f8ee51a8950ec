"""An ONNX model uploaded like a module: built in the bounded build step, registered as an
ordinary function, called and downloaded as one; a model it cannot build is refused
with what to change."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import wasmtime
from onnx import TensorProto, helper, numpy_helper

from tests.support import Api


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


def test_an_onnx_upload_becomes_a_function_that_answers_as_onnxruntime_does(api: Api) -> None:
    model = mlp()
    response = api.upload(model, name="mlp")  # told apart by content, not by a file name
    assert response.status_code == 201, response.text
    record = response.json()
    assert record["kind"] == "onnx" and record["status"] == "ready"
    assert record["model"]["inputs"][0]["name"] == "x"
    x = [0.5, -1.0, 2.0, 0.25]
    answer = json.loads(api.call(record["cfid"], json.dumps({"input": [x]})).json()["result"])
    expected = ort.InferenceSession(model).run(None, {"x": np.array([x], np.float32)})[0]
    np.testing.assert_allclose(answer["output"], expected.ravel(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(answer["probabilities"], expected.ravel(), rtol=1e-5, atol=1e-6)
    # The download is the built module, runnable anywhere WebAssembly runs.
    wasm = api.http.get(f"{api.url}/file/{record['cfid']}.wasm").content
    wasmtime.Module(wasmtime.Engine(wasmtime.Config()), wasm)
    assert len(wasm) == record["size"]
    # Wrong input: the task fails saying what the model expects.
    failed = api.call(record["cfid"], json.dumps({"input": [[1, 2]]})).json()
    assert failed["statusCode"] == 0 and "4" in failed["message"], failed
    # A new model under the same cfid.
    replaced = api.http.put(f"{api.url}/functions/{record['cfid']}",
                            files={"file": ("m.onnx", mlp(seed=1))})
    assert replaced.status_code == 200 and replaced.json()["kind"] == "onnx"


def test_a_model_it_cannot_build_is_refused_naming_the_operator(api: Api) -> None:
    graph = helper.make_graph(
        [helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")], "odd",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13),
                                                    helper.make_opsetid("com.example", 1)])
    response = api.upload(model.SerializeToString(), name="odd")
    assert response.status_code == 400, response.text
    message = response.json()["message"]
    assert "Frobnicate" in message and "com.example" in message, message


def test_a_model_with_a_dimension_it_cannot_pin_is_refused_naming_it(api: Api) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "dyn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "width"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "width"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    response = api.upload(model.SerializeToString(), name="dyn")
    assert response.status_code == 400, response.text
    assert "x" in response.json()["message"], response.json()


def test_wasmq_deploy_builds_a_model_from_a_terminal(api: Api, tmp_path: Path) -> None:
    path = tmp_path / "mlp.onnx"
    path.write_bytes(mlp(seed=2))
    done = subprocess.run([sys.executable, "-m", "wasmq", "deploy", str(path), "--url", api.url],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    cfid = done.stdout.strip()
    assert api.http.get(f"{api.url}/functions/{cfid}").json()["kind"] == "onnx"
