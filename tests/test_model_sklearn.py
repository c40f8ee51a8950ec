"""scikit-learn models through skl2onnx, run in wasmq's runtime, against predict/predict_proba.

Tolerances: probabilities and regression outputs within 1e-5 (absolute) of
scikit-learn's float64 results computed on the same float32 inputs, after
the float32 rounding skl2onnx's models do; labels exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.model_runner import MAX_BYTES, outputs, request, run_wasm
from wasmq.toolchain.model import build_model

sklearn = pytest.importorskip("sklearn")
skl2onnx = pytest.importorskip("skl2onnx")

from sklearn.datasets import load_diabetes, load_iris  # noqa: E402
from sklearn.ensemble import (  # noqa: E402
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LinearRegression, LogisticRegression  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import Normalizer, StandardScaler  # noqa: E402
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor  # noqa: E402

OPSETS = {"": 21, "ai.onnx.ml": 3}


def iris(binary: bool = False) -> tuple[np.ndarray, np.ndarray]:
    x, y = load_iris(return_X_y=True)
    x = x.astype(np.float32)
    return (x, (y == 2).astype(np.int64)) if binary else (x, y)


def diabetes() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_diabetes(return_X_y=True)
    return x.astype(np.float32), y


def predict(model: object, x: np.ndarray) -> dict[str, np.ndarray]:
    onx = skl2onnx.to_onnx(model, x[:1], target_opset=OPSETS)
    built = build_model(onx.SerializeToString(), max_bytes=MAX_BYTES,
                        input_shapes={onx.graph.input[0].name: (len(x), x.shape[1])})
    return outputs(built, run_wasm(built.wasm, request(built, {onx.graph.input[0].name: x}))
                   .output)


CLASSIFIERS = [
    ("logistic-binary", lambda: LogisticRegression(max_iter=500), True),
    ("logistic-multinomial", lambda: LogisticRegression(max_iter=500), False),
    ("scaler-logistic", lambda: make_pipeline(StandardScaler(), LogisticRegression()), False),
    ("decision-tree", lambda: DecisionTreeClassifier(max_depth=5, random_state=0), False),
    ("decision-tree-binary", lambda: DecisionTreeClassifier(max_depth=4, random_state=0),
     True),
    ("random-forest", lambda: RandomForestClassifier(n_estimators=15, max_depth=6,
                                                     random_state=0), False),
    ("gradient-boosting", lambda: GradientBoostingClassifier(n_estimators=20, random_state=0),
     False),
    ("gradient-boosting-binary", lambda: GradientBoostingClassifier(n_estimators=20,
                                                                    random_state=0), True),
]


@pytest.mark.parametrize(("name", "make", "binary"), CLASSIFIERS, ids=[c[0] for c in CLASSIFIERS])
def test_classifiers_match_predict_and_predict_proba(name: str, make: object,
                                                     binary: bool) -> None:
    x, y = iris(binary)
    model = make().fit(x, y)
    got = predict(model, x)
    np.testing.assert_array_equal(got["output_label"], model.predict(x))
    np.testing.assert_allclose(got["output_probability"], model.predict_proba(x), atol=1e-5)


REGRESSORS = [
    ("linear", lambda: LinearRegression()),
    ("scaler-linear", lambda: make_pipeline(StandardScaler(), LinearRegression())),
    ("decision-tree", lambda: DecisionTreeRegressor(max_depth=6, random_state=0)),
    ("random-forest", lambda: RandomForestRegressor(n_estimators=10, max_depth=6,
                                                    random_state=0)),
    ("gradient-boosting", lambda: GradientBoostingRegressor(n_estimators=30, random_state=0)),
    ("normalizer-linear", lambda: make_pipeline(Normalizer(), LinearRegression())),
]


@pytest.mark.parametrize(("name", "make"), REGRESSORS, ids=[r[0] for r in REGRESSORS])
def test_regressors_match_predict(name: str, make: object) -> None:
    x, y = diabetes()
    model = make().fit(x, y)
    got = predict(model, x)["variable"].reshape(-1)
    want = model.predict(x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3 * np.abs(want).max() * 1e-2)
