"""Tabular pipelines: skl2onnx's preprocessing and kernel machines, float64 models.

Against scikit-learn on the same inputs (labels exactly; scores within float32
rounding), and each ai.onnx.ml operator alone against onnxruntime.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tests.model_runner import MAX_BYTES, outputs, reference, request, run_model, run_wasm, single
from wasmq.toolchain.model import build_model

sklearn = pytest.importorskip("sklearn")
skl2onnx = pytest.importorskip("skl2onnx")

from sklearn.datasets import load_diabetes, load_iris  # noqa: E402
from sklearn.ensemble import (  # noqa: E402
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    IsolationForest,
    RandomForestClassifier,  # noqa: E402
)
from sklearn.impute import SimpleImputer  # noqa: E402
from sklearn.linear_model import LinearRegression, LogisticRegression  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import (  # noqa: E402
    Binarizer,
    KBinsDiscretizer,
    OneHotEncoder,
    StandardScaler,  # noqa: E402
)
from sklearn.svm import SVC, SVR  # noqa: E402

F, INT = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
OPSETS = {"": 21, "ai.onnx.ml": 3}
RNG = np.random.default_rng(11)


def run(model: object, x: np.ndarray, **options: object) -> dict[str, np.ndarray]:
    onx = skl2onnx.to_onnx(model, x[:1], target_opset=OPSETS, options=options or None)
    name = onx.graph.input[0].name
    built = build_model(onx.SerializeToString(), max_bytes=MAX_BYTES,
                        input_shapes={name: x.shape})
    return outputs(built, run_wasm(built.wasm, request(built, {name: x}, raw=True)).output)


def iris() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_iris(return_X_y=True)
    return x.astype(np.float32), y


def diabetes() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_diabetes(return_X_y=True)
    return x.astype(np.float32), y


@pytest.mark.parametrize("make", [
    lambda: make_pipeline(OneHotEncoder(handle_unknown="ignore"),
                          LogisticRegression(max_iter=500)),
    lambda: make_pipeline(Binarizer(threshold=2.0), LogisticRegression()),
    lambda: make_pipeline(KBinsDiscretizer(n_bins=3, encode="onehot-dense"),
                          LogisticRegression()),
], ids=["one-hot", "binarizer", "k-bins"])
def test_preprocessing_pipelines_match_scikit_learn(make: object) -> None:
    x, y = iris()
    x = np.round(x)  # categories for the one-hot encoder
    model = make().fit(x[::2], y[::2])
    x[1, 0] = 99.0  # a category the encoder never saw: a row of zeros
    got = run(model, x)
    np.testing.assert_array_equal(got["output_label"], model.predict(x))
    np.testing.assert_allclose(got["output_probability"], model.predict_proba(x), atol=1e-5)


def test_imputer_fills_missing_values_as_scikit_learn() -> None:
    x, y = diabetes()
    x[RNG.random(x.shape) < 0.1] = np.nan
    model = make_pipeline(SimpleImputer(), StandardScaler(), LinearRegression()).fit(x, y)
    got = run(model, x)["variable"].reshape(-1)
    np.testing.assert_allclose(got, model.predict(x), rtol=1e-4, atol=1e-2)


@pytest.mark.parametrize("kernel", ["rbf", "linear", "poly", "sigmoid"])
def test_svr_matches_predict(kernel: str) -> None:
    x, y = diabetes()
    model = SVR(kernel=kernel, C=50.0, gamma="scale" if kernel != "sigmoid" else 0.5).fit(x, y)
    got = run(model, x)["variable"].reshape(-1)
    np.testing.assert_allclose(got, model.predict(x), rtol=1e-4, atol=1e-2)


def test_isolation_forest_label_encoder_matches_predict() -> None:
    x, _ = iris()
    model = IsolationForest(n_estimators=10, random_state=0).fit(x)
    got = run(model, x)
    np.testing.assert_array_equal(got["label"].reshape(-1), model.predict(x))
    np.testing.assert_allclose(got["scores"].reshape(-1), model.decision_function(x),
                               atol=1e-5)


@pytest.mark.parametrize("make", [
    lambda: LogisticRegression(max_iter=500),
    lambda: RandomForestClassifier(n_estimators=5, max_depth=4, random_state=0),
    lambda: make_pipeline(StandardScaler(), LogisticRegression()),
], ids=["logistic", "forest", "scaler-logistic"])
def test_the_readme_snippet_with_float64_data_builds(make: object) -> None:
    """skl2onnx.to_onnx(fitted, X[:1]) with X as a data scientist holds it: float64."""
    x, y = load_iris(return_X_y=True)
    model = make().fit(x, y)
    got = run(model, x, zipmap=False)
    np.testing.assert_array_equal(got["label"], model.predict(x))
    np.testing.assert_allclose(got["probabilities"], model.predict_proba(x), atol=1e-5)


def test_float64_regressor_answers_float64() -> None:
    x, y = load_diabetes(return_X_y=True)
    model = GradientBoostingRegressor(n_estimators=10, random_state=0).fit(x, y)
    onx = skl2onnx.to_onnx(model, x[:1], target_opset=OPSETS)
    built = build_model(onx.SerializeToString(), max_bytes=MAX_BYTES)
    assert built.inputs[0].dtype == "float64" and built.outputs[0].dtype == "float64"
    got = run(model, x)["variable"].reshape(-1)
    np.testing.assert_allclose(got, model.predict(x), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize(("keys", "values", "x"), [
    ({"keys_int64s": [3, 1, 7]}, {"values_int64s": [10, 20, 30], "default_int64": -5},
     np.array([[1, 7], [3, 4]], np.int64)),
    ({"keys_int64s": [3, 1]}, {"values_floats": [0.5, 1.5], "default_float": 9.0},
     np.array([1, 3, 2], np.int64)),
    ({"keys_floats": [0.5, 2.0]}, {"values_int64s": [1, 2]},
     np.array([2.0, 0.5, 1.0], np.float32)),
], ids=["int-int", "int-float", "float-int"])
def test_label_encoder_against_onnxruntime(keys: dict, values: dict, x: np.ndarray) -> None:
    elem = INT if x.dtype == np.int64 else F
    model = single("LabelEncoder", [("x", list(x.shape), elem)], ["y"], ml=True, **keys,
                   **values)
    np.testing.assert_array_equal(run_model(model, {"x": x})["y"],
                                  reference(model, {"x": x})["y"])


def test_imputer_binarizer_one_hot_against_onnxruntime() -> None:
    x = np.array([[1.0, np.nan, 3.0], [np.nan, 5.0, -1.0]], np.float32)
    for op, attrs in [("Imputer", {"imputed_value_floats": [7.0, 8.0, 9.0],
                                   "replaced_value_float": float("nan")}),
                      ("Imputer", {"imputed_value_floats": [0.5], "replaced_value_float": 3.0}),
                      ("Binarizer", {"threshold": 1.5})]:
        feed = {"x": np.nan_to_num(x) if op == "Binarizer" else x}  # onnxruntime refuses NaN
        model = single(op, [("x", [2, 3], F)], ["y"], ml=True, **attrs)
        np.testing.assert_allclose(run_model(model, feed)["y"], reference(model, feed)["y"])
    ints = np.array([[2, 5], [9, 2]], np.int64)
    model = single("OneHotEncoder", [("x", [2, 2], INT)], ["y"], ml=True,
                   cats_int64s=[2, 5, 7], zeros=1)
    np.testing.assert_array_equal(run_model(model, {"x": ints})["y"],
                                  reference(model, {"x": ints})["y"])


S = onnx.TensorProto.STRING


def test_string_categories_against_onnxruntime() -> None:
    """String inputs are read as indices of the model's categories: an unknown one is -1,
    which no encoder matches."""
    words = np.array([["paris", "lyon"], ["berlin", "nice"]], dtype=object)
    for op, attrs in [
        ("OneHotEncoder", {"cats_strings": ["lyon", "nice", "paris"], "zeros": 1}),
        ("LabelEncoder", {"keys_strings": ["paris", "nice"], "values_int64s": [7, 9],
                          "default_int64": -3}),
        ("LabelEncoder", {"keys_strings": ["lyon"], "values_floats": [0.5],
                          "default_float": 2.0}),
        ("CategoryMapper", {"cats_strings": ["nice", "lyon"], "cats_int64s": [1, 2],
                            "default_int64": 0}),
    ]:
        model = single(op, [("x", [2, 2], S)], ["y"], ml=True, **attrs)
        np.testing.assert_array_equal(run_model(model, {"x": words}, raw=False)["y"],
                                      reference(model, {"x": words})["y"], err_msg=op)


def test_a_string_input_into_arithmetic_or_with_numbers_is_refused_clearly() -> None:
    model = single("Cast", [("x", [2], S)], ["z"], to=F)
    with pytest.raises(Exception, match="Cast on a string tensor is not supported"):
        build_model(model.SerializeToString(), max_bytes=MAX_BYTES)
    model = single("CategoryMapper", [("x", [2], S)], ["y"], ml=True, cats_strings=["a"],
                   cats_int64s=[1])
    built = build_model(model.SerializeToString(), max_bytes=MAX_BYTES)
    assert built.inputs[0].dtype == "string"
    with pytest.raises(Exception, match="expected strings in"):
        run_wasm(built.wasm, b'{"input": [1, 2]}')
    import json

    reply = json.loads(run_wasm(built.wasm, b'{"input": ["a", "b\\"c"]}').output)
    assert reply["output"] == [1, -1]


@pytest.mark.parametrize(("kernel", "probability", "binary"), [
    ("rbf", False, False), ("poly", False, True), ("linear", False, False),
    ("rbf", True, True), ("linear", True, True),
])
def test_svc_matches_predict_and_predict_proba(kernel: str, probability: bool,
                                               binary: bool) -> None:
    """One-vs-one votes; with probabilities (two classes), libsvm's coupling as onnxruntime
    runs it (it stops early: not the exact fixed point)."""
    from sklearn.svm import SVC

    x, y = iris()
    if binary:
        y = (y == 1).astype(np.int64)
    model = SVC(kernel=kernel, probability=probability, random_state=0).fit(x, y)
    got = run(model, x, zipmap=False)
    np.testing.assert_array_equal(got["label"], model.predict(x))
    if probability:
        np.testing.assert_allclose(got["probabilities"], model.predict_proba(x), atol=1e-4)


@pytest.mark.parametrize(("kernel", "dataset"), [
    ("rbf", "iris"), ("linear", "iris"), ("poly", "iris"), ("rbf", "digits"),
], ids=["rbf-iris", "linear-iris", "poly-iris", "rbf-digits-6-classes"])
def test_svc_probabilities_of_many_classes_answer_as_onnxruntime(kernel: str,
                                                                 dataset: str) -> None:
    """SVC(probability=True) over more than two classes: each pair's Platt sigmoid, then
    libsvm's pairwise coupling as onnxruntime iterates it; against onnxruntime, and
    against predict_proba (which couples in double, to a tighter stop)."""
    from sklearn.datasets import load_digits
    from sklearn.svm import SVC

    if dataset == "iris":
        x, y = iris()
    else:
        x, y = load_digits(n_class=6, return_X_y=True)
        x = (x / 16.0).astype(np.float32)
    model = SVC(kernel=kernel, probability=True, random_state=0).fit(x, y)
    onx = skl2onnx.to_onnx(model, x[:1], target_opset=OPSETS, options={"zipmap": False})
    got = run(model, x, zipmap=False)
    label, probabilities = reference(onx, {"X": x}).values()
    np.testing.assert_array_equal(got["label"], label)
    np.testing.assert_array_equal(got["label"], model.predict(x))
    np.testing.assert_allclose(got["probabilities"], probabilities, atol=1e-4)
    np.testing.assert_allclose(got["probabilities"], model.predict_proba(x), atol=2e-3)
    np.testing.assert_allclose(got["probabilities"].sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_nearest_neighbours_through_an_unrolled_scan(kind: str) -> None:
    """skl2onnx's k-NN: a Scan over the training rows (unrolled), then TopK."""
    from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor

    x, y = iris()
    model = (KNeighborsClassifier() if kind == "classifier" else
             KNeighborsRegressor(n_neighbors=3)).fit(x[::3], y[::3])
    onx = skl2onnx.to_onnx(model, x[:1], target_opset=OPSETS,
                           options={id(model): {"zipmap": False}} if kind == "classifier"
                           else None)
    built = build_model(onx.SerializeToString(), max_bytes=MAX_BYTES)
    for i in range(1, 150, 13):
        got = outputs(built, run_wasm(built.wasm, request(built, {"X": x[i:i + 1]}, raw=True))
                      .output)
        np.testing.assert_allclose(got[built.outputs[0].name].reshape(-1),
                                   model.predict(x[i:i + 1]).reshape(-1), atol=1e-5)
        if kind == "classifier":
            np.testing.assert_allclose(got["probabilities"], model.predict_proba(x[i:i + 1]),
                                       atol=1e-6)


def unified(old: onnx.ModelProto) -> onnx.ModelProto:
    """A TreeEnsembleRegressor (one target a leaf) rewritten as ai.onnx.ml opset 5's
    TreeEnsemble, as a converter at that opset writes it: interior nodes and leaves apart,
    modes and splits as tensors, roots by index."""
    from onnx import helper as h

    node = old.graph.node[0]
    a = {x.name: onnx.helper.get_attribute_value(x) for x in node.attribute}
    keys = list(zip(a["nodes_treeids"], a["nodes_nodeids"], strict=True))
    modes = [m.decode() for m in a["nodes_modes"]]
    interior = [i for i, m in enumerate(modes) if m != "LEAF"]
    leaves = [i for i, m in enumerate(modes) if m == "LEAF"]
    at_node = {keys[i]: k for k, i in enumerate(interior)}
    at_leaf = {keys[i]: k for k, i in enumerate(leaves)}
    weight = {(t, n): w for t, n, w in zip(a["target_treeids"], a["target_nodeids"],
                                           a["target_weights"], strict=True)}
    codes = {"BRANCH_LEQ": 0, "BRANCH_LT": 1, "BRANCH_GTE": 2, "BRANCH_GT": 3}

    def branch(i: int, which: str) -> tuple[int, int]:
        key = (keys[i][0], a[which][i])
        return (1, at_leaf[key]) if key in at_leaf else (0, at_node[key])

    trues = [branch(i, "nodes_truenodeids") for i in interior]
    falses = [branch(i, "nodes_falsenodeids") for i in interior]
    roots = [at_node[(t, 0)] for t in sorted(set(a["nodes_treeids"]))]
    tensor = onnx.numpy_helper.from_array
    new = h.make_node(
        "TreeEnsemble", ["X"], ["Y"], domain="ai.onnx.ml", n_targets=1,
        aggregate_function=1, post_transform=0, tree_roots=roots,
        nodes_featureids=[a["nodes_featureids"][i] for i in interior],
        nodes_modes=tensor(np.array([codes[modes[i]] for i in interior], np.uint8)),
        nodes_splits=tensor(np.array([a["nodes_values"][i] for i in interior], np.float32)),
        nodes_trueleafs=[t[0] for t in trues], nodes_truenodeids=[t[1] for t in trues],
        nodes_falseleafs=[f[0] for f in falses], nodes_falsenodeids=[f[1] for f in falses],
        nodes_missing_value_tracks_true=[0] * len(interior),
        leaf_targetids=[0] * len(leaves),
        leaf_weights=tensor(np.array([weight[keys[i]] for i in leaves], np.float32)))
    graph = h.make_graph([new], "trees", [h.make_tensor_value_info("X", F, [None, 4])],
                         [h.make_tensor_value_info("Y", F, [None, 1])])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 21),
                                               h.make_opsetid("ai.onnx.ml", 5)])
    model.ir_version = 10
    return model


def test_ml_opset_5_tree_ensemble_answers_as_onnxruntime_and_the_forest() -> None:
    """A random forest written as opset 5's TreeEnsemble: against onnxruntime running the
    same model and the forest's predict (ONNX's own TreeEnsemble cases, set membership
    among them, run in test_model_backend)."""
    from sklearn.ensemble import RandomForestRegressor

    x, y = iris()
    forest = RandomForestRegressor(n_estimators=6, max_depth=5, random_state=0).fit(x, y)
    model = unified(skl2onnx.to_onnx(forest, x[:1], target_opset=OPSETS))
    built = build_model(model.SerializeToString(), max_bytes=MAX_BYTES,
                        input_shapes={"X": x.shape})
    assert built.opsets["ai.onnx.ml"] == 5 and built.operators == {"TreeEnsemble": 1}
    got = outputs(built, run_wasm(built.wasm, request(built, {"X": x}, raw=True)).output)["Y"]
    np.testing.assert_allclose(got, reference(model, {"X": x})["Y"], atol=1e-6)
    np.testing.assert_allclose(got.reshape(-1), forest.predict(x), atol=1e-5)


@pytest.mark.parametrize(("make", "two"), [
    (lambda: LogisticRegression(max_iter=500), False),
    (lambda: RandomForestClassifier(n_estimators=5, max_depth=4, random_state=0), False),
    (lambda: make_pipeline(StandardScaler(), SVC()), False),
    (lambda: GradientBoostingClassifier(n_estimators=10, random_state=0), True),
], ids=["logistic", "forest", "scaler-svc", "boosting-binary"])
def test_string_class_labels_are_answered_as_strings(make: object, two: bool) -> None:
    """A classifier fit on string labels (iris' species names, one with a quote and one
    not ASCII; or two classes, the binary paths): the label output is those strings, as
    predict and onnxruntime answer them."""
    x, y = iris()
    names = np.where(y == 0, "yes", "no") if two else \
        np.array(["setosa", 'versi"color', "virgin\u00efca"])[y]
    model = make().fit(x, names)
    onx = skl2onnx.to_onnx(model, x[:1], target_opset=OPSETS,
                           options={id(model): {"zipmap": False}})
    built = build_model(onx.SerializeToString(), max_bytes=MAX_BYTES,
                        input_shapes={"X": x.shape})
    assert built.outputs[0].dtype == "string"
    got = outputs(built, run_wasm(built.wasm, request(built, {"X": x}, raw=True)).output)
    np.testing.assert_array_equal(got[built.outputs[0].name], model.predict(x))
    label, *_ = reference(onx, {"X": x}).values()
    np.testing.assert_array_equal(got[built.outputs[0].name], label)


def test_a_string_output_that_is_not_class_labels_is_refused_by_name() -> None:
    model = single("Identity", [("x", [2], S)], ["y"])
    model = onnx.shape_inference.infer_shapes(model)
    with pytest.raises(Exception, match=r"unsupported types: output 'y' is STRING \(a "
                                        r"string output can only be a classifier's labels\)"):
        build_model(model.SerializeToString(), max_bytes=MAX_BYTES)
