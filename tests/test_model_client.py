"""Client.deploy_model: what it uploads, and how it checks the endpoint against the model."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from tests.model_runner import MAX_BYTES, run_wasm
from wasmq import modelfile
from wasmq.client import Client
from wasmq.toolchain.model import build_model, is_onnx

sklearn = pytest.importorskip("sklearn")
from sklearn.datasets import load_iris  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402


@pytest.fixture(scope="module")
def fitted() -> tuple[object, np.ndarray]:
    x, y = load_iris(return_X_y=True)
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=300)).fit(x, y), x


def test_every_kind_of_model_becomes_the_same_onnx_bytes(fitted, tmp_path) -> None:
    model, x = fitted
    data = modelfile.onnx_bytes(model, x[0])
    assert is_onnx(data)
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    proto = onnx.load_model_from_string(data)
    assert modelfile.onnx_bytes(str(path)) == data
    assert modelfile.onnx_bytes(path) == data
    assert modelfile.onnx_bytes(proto) == data
    assert modelfile.onnx_bytes(bytearray(data)) == data
    assert is_onnx(modelfile.onnx_bytes(model))  # the width from n_features_in_
    with pytest.raises(TypeError, match="fitted scikit-learn estimator, not dict"):
        modelfile.onnx_bytes({"not": "a model"})


def test_the_endpoint_answer_is_compared_with_onnxruntime(fitted) -> None:
    model, x = fitted
    data = modelfile.onnx_bytes(model, x[0])
    built = build_model(data, max_bytes=MAX_BYTES)
    local = modelfile.local_outputs(data, x[7])
    np.testing.assert_allclose(local["output_probability"], model.predict_proba(x[7:8]),
                               atol=1e-5)
    answer = json.loads(run_wasm(built.wasm, modelfile.request(x[7]).encode()).output)
    assert modelfile.disagreement(local, answer) is None
    wrong = dict(answer, output=[(answer["output"][0] + 1) % 3])
    assert "output 'output_label' is" in modelfile.disagreement(local, wrong)
    assert "has no output 'output_probability'" in modelfile.disagreement(
        local, {"output": answer["output"]})


def test_deploy_model_end_to_end(up: str, fitted) -> None:
    model, x = fitted
    client = Client(up)
    fn = client.deploy_model(model, name="iris", example=x[3], documentation="iris")
    answer = client.run(fn.cfid, modelfile.request(x[10])).json()
    assert answer["output"] == model.predict(x[10:11]).tolist()
