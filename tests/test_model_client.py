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
    with pytest.raises(TypeError, match="or an XGBoost or LightGBM model, not dict"):
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


def test_float64_rows_are_checked_as_a_batch_against_the_built_model() -> None:
    """What the data scientist holds: float64 rows; every row of the check is compared."""
    x, y = load_iris(return_X_y=True)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300)).fit(x, y)
    data = modelfile.onnx_bytes(model, x[:5])
    built = build_model(data, max_bytes=MAX_BYTES)
    rows = modelfile.rows_of(x[:50])
    local = modelfile.local_outputs(data, rows)
    assert local["output_probability"].shape == (50, 3)
    for i in range(0, 50, 7):
        answer = json.loads(run_wasm(built.wasm, modelfile.row_request(rows, i).encode()).output)
        assert modelfile.disagreement(modelfile.row(local, i), answer) is None
    wrong = dict(answer, output_probability=[[1.0, 0.0, 0.0]])
    assert modelfile.disagreement(modelfile.row(local, i), wrong) is not None
    assert modelfile.drift(model, local, rows) is None


def test_a_conversion_that_drifts_from_the_estimator_is_reported_in_numbers() -> None:
    """float32 cannot hold 1e8 + 0.1: the converted regression answers in steps of 8."""
    from sklearn.linear_model import LinearRegression

    x = (1e8 + np.arange(60) * 0.1).reshape(-1, 1)
    model = LinearRegression().fit(x, np.arange(60) * 0.1)
    data = modelfile.onnx_bytes(model, x[:1])
    local = modelfile.local_outputs(data, x[:50])
    why = modelfile.drift(model, local, x[:50])
    assert why is not None and why.startswith("the ONNX conversion differs from the estimator")
    assert "predictions by up to" in why and "of 50 rows" in why


def test_a_dataframe_becomes_one_input_per_column() -> None:
    pd = pytest.importorskip("pandas")
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import OneHotEncoder

    x, y = load_iris(return_X_y=True)
    frame = pd.DataFrame(x, columns=["sl", "sw", "pl", "pw"])
    frame["big"] = (x[:, 0] > 5.8).astype(np.int64)
    columns = ColumnTransformer([("num", StandardScaler(), ["sl", "sw", "pl", "pw"]),
                                 ("cat", OneHotEncoder(), ["big"])])
    model = make_pipeline(columns, LogisticRegression(max_iter=500)).fit(frame, y)
    data = modelfile.onnx_bytes(model, frame)
    built = build_model(data, max_bytes=MAX_BYTES)
    assert [(t.name, t.dtype) for t in built.inputs] == [
        ("sl", "float32"), ("sw", "float32"), ("pl", "float32"), ("pw", "float32"),
        ("big", "int64")]
    local = modelfile.local_outputs(data, frame)
    np.testing.assert_allclose(local["output_probability"], model.predict_proba(frame),
                               atol=1e-5)
    for i in (0, 77, 149):
        body = modelfile.row_request(frame, i).encode()
        answer = json.loads(run_wasm(built.wasm, body).output)
        assert modelfile.disagreement(modelfile.row(local, i), answer) is None


@pytest.mark.parametrize("family", ["xgboost", "lightgbm"])
def test_boosting_models_are_converted_with_onnxmltools(family: str) -> None:
    lib = pytest.importorskip(family)
    pytest.importorskip("onnxmltools")
    x, y = load_iris(return_X_y=True)
    model = (lib.XGBClassifier(n_estimators=10, max_depth=3) if family == "xgboost" else
             lib.LGBMClassifier(n_estimators=10, verbose=-1)).fit(x, y)
    data = modelfile.onnx_bytes(model, x[:1])
    built = build_model(data, max_bytes=MAX_BYTES)
    local = modelfile.local_outputs(data, x)
    np.testing.assert_allclose(list(local.values())[1], model.predict_proba(x), atol=1e-5)
    answer = json.loads(run_wasm(built.wasm, modelfile.row_request(x, 42).encode()).output)
    assert modelfile.disagreement(modelfile.row(local, 42), answer) is None


def test_deploy_model_checks_a_batch_of_float64_rows_end_to_end(up: str) -> None:
    lightgbm = pytest.importorskip("lightgbm")
    pytest.importorskip("onnxmltools")
    x, y = load_iris(return_X_y=True)
    model = lightgbm.LGBMClassifier(n_estimators=8, verbose=-1).fit(x, y)
    client = Client(up)
    fn = client.deploy_model(model, name="iris-lgbm", example=x[:1], check=x[::15])
    answer = client.run(fn.cfid, modelfile.request(x[100])).json()
    assert answer["output"] == model.predict(x[100:101]).tolist()


def test_a_dataframe_with_string_categories_deploys() -> None:
    """The ColumnTransformer over a DataFrame with a string column, as skl2onnx converts
    it: one string input, read as the encoder's categories."""
    pd = pytest.importorskip("pandas")
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import OneHotEncoder

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"city": rng.choice(["paris", "lyon", "nice"], 90),
                          "age": rng.normal(40, 10, 90)})
    y = ((frame.city == "paris") & (frame.age > 40)).astype(int)
    columns = ColumnTransformer([("cat", OneHotEncoder(handle_unknown="ignore"), ["city"]),
                                 ("num", StandardScaler(), ["age"])])
    model = make_pipeline(columns, LogisticRegression()).fit(frame, y)
    data = modelfile.onnx_bytes(model, frame)
    built = build_model(data, max_bytes=MAX_BYTES)
    assert [t.dtype for t in built.inputs] == ["string", "float32"]
    local = modelfile.local_outputs(data, frame)
    for i in range(0, 90, 11):
        answer = json.loads(run_wasm(built.wasm, modelfile.row_request(frame, i).encode())
                            .output)
        assert modelfile.disagreement(modelfile.row(local, i), answer) is None
    unknown = json.loads(run_wasm(built.wasm, b'{"input": {"city": [["berlin"]], '
                                              b'"age": [[50.0]]}}').output)
    assert len(unknown["output_probability"]) == 2


def test_hist_gradient_boosting_converts_and_matches_the_estimator() -> None:
    """skl2onnx 1.20 fails on it (`Expected an int, got a boolean`) unless the missing-value
    flags are cast to ints, which deploy_model's conversion does."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    x, y = load_iris(return_X_y=True)
    x[3, 1] = np.nan
    for model in (HistGradientBoostingClassifier(max_iter=10).fit(x, y),
                  HistGradientBoostingRegressor(max_iter=10).fit(x, x[:, 0])):
        data = modelfile.onnx_bytes(model, x[:1])
        built = build_model(data, max_bytes=MAX_BYTES)
        local = modelfile.local_outputs(data, x)
        assert modelfile.drift(model, local, x) is None
        for i in (3, 60, 140):
            answer = json.loads(run_wasm(built.wasm, modelfile.row_request(x, i).encode())
                                .output)
            assert modelfile.disagreement(modelfile.row(local, i), answer) is None


def test_deploy_model_of_a_classifier_fit_on_string_labels_end_to_end(up: str) -> None:
    """Labels as a data scientist has them (species names): the endpoint answers them,
    deploy_model's check compares them with onnxruntime's, and no drift is reported."""
    import warnings

    x, y = load_iris(return_X_y=True)
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300)).fit(x, names)
    with warnings.catch_warnings():
        warnings.simplefilter("error", category=UserWarning)  # a ConversionDrift fails it
        fn = Client(up).deploy_model(model, name="species", example=x[:1], check=x[::10])
    answer = Client(up).run(fn.cfid, modelfile.request(x[120])).json()
    assert answer["output"] == model.predict(x[120:121]).tolist() == ["virginica"]
