"""What `Client.deploy_model` uploads: ONNX bytes, from whatever the user holds.

A file path, bytes, an `onnx.ModelProto`, a fitted scikit-learn estimator
(converted here, on the client, with skl2onnx: the server never unpickles
anything) or an XGBoost or LightGBM model (converted with onnxmltools). The
data the user has (a float64 array, a pandas DataFrame with one input per
column as skl2onnx makes them) fixes the inputs; its rows are run locally with
onnxruntime so the endpoint's answers can be checked against them, and against
the estimator itself: a conversion can drift from it (skl2onnx's trees compare
float32 thresholds), and the drift is reported in numbers.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

# skl2onnx's newest opsets reach past what the server's toolchain plans
TARGET_OPSET = {"": 21, "ai.onnx.ml": 3}
BOOSTING_OPSET = 15  # onnxmltools' tree converters
ONNX_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_,
              "tensor(string)": np.str_, "tensor(float16)": np.float16,
              "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(int16)": np.int16,
              "tensor(uint16)": np.uint16, "tensor(uint32)": np.uint32}


def is_frame(data: Any) -> bool:
    return type(data).__name__ == "DataFrame" and hasattr(data, "dtypes")


def rows_of(data: Any) -> Any:
    """At least 2-d: one row a sample (a 1-d example is one sample)."""
    if is_frame(data) or is_text(data):
        return data if is_frame(data) else np.asarray(data, dtype=str)
    array = np.asarray(data)
    return array.reshape(1, -1) if array.ndim < 2 else array


def onnx_bytes(model: Any, example: Any = None) -> bytes:
    """The model as ONNX bytes; a scikit-learn, XGBoost or LightGBM model is converted."""
    if isinstance(model, (bytes, bytearray, memoryview)):
        return bytes(model)
    if isinstance(model, (str, os.PathLike)):
        with open(model, "rb") as f:
            return f.read()
    if type(model).__name__ == "ModelProto" and hasattr(model, "SerializeToString"):
        return model.SerializeToString()
    family = type(model).__module__.split(".")[0]
    if family in ("xgboost", "lightgbm"):
        return _from_boosting(model, family, example)
    if hasattr(model, "fit") and (hasattr(model, "predict") or hasattr(model, "transform")):
        return _from_sklearn(model, example)
    raise TypeError(f"deploy_model takes an ONNX file path, ONNX bytes, an onnx.ModelProto, a "
                    f"fitted scikit-learn estimator or an XGBoost or LightGBM model, not "
                    f"{type(model).__name__}")


def _as_float32(example: Any) -> Any:
    """float64 data converted as float32 inputs, the type the kernels compute in."""
    if is_frame(example):
        frame = example.copy()
        for column, dtype in frame.dtypes.items():
            if dtype.kind == "f":
                frame[column] = frame[column].astype(np.float32)
        return frame
    array = np.asarray(example)
    return array.astype(np.float32) if array.dtype.kind in "fiub" else array


def _width(model: Any, example: Any) -> int:
    if example is not None:
        return int(rows_of(example).shape[1])
    width = getattr(model, "n_features_in_", None)
    if width is None:
        raise ValueError("the model is not fitted (it has no n_features_in_); fit it or pass "
                         "example=")
    return int(width)


def _from_sklearn(model: Any, example: Any) -> bytes:
    try:
        from skl2onnx import to_onnx
        from skl2onnx.common.data_types import FloatTensorType
    except ImportError:
        raise ImportError("converting a scikit-learn model needs skl2onnx: "
                          "pip install 'wasmq[sklearn]'") from None
    _register_hist_gradient_boosting()
    if example is not None:
        onx = to_onnx(model, _as_float32(rows_of(example))[:1], target_opset=TARGET_OPSET)
    else:
        onx = to_onnx(model, initial_types=[("X", FloatTensorType([None, _width(model, None)]))],
                      target_opset=TARGET_OPSET)
    return onx.SerializeToString()


_REGISTERED: list[bool] = []


def _register_hist_gradient_boosting() -> None:
    """skl2onnx 1.20 writes HistGradientBoosting's missing-value flags as numpy booleans,
    which onnx refuses in an INTS attribute (`Expected an int, got a boolean`): its own
    converters, registered again with the booleans cast to ints."""
    if _REGISTERED:
        return
    _REGISTERED.append(True)
    try:
        from skl2onnx import update_registered_converter
        from skl2onnx.operator_converters.random_forest import (
            convert_sklearn_random_forest_classifier,
            convert_sklearn_random_forest_regressor_converter,
        )
        from skl2onnx.shape_calculators.ensemble_shapes import (
            calculate_tree_classifier_output_shapes,
            calculate_tree_regressor_output_shapes,
        )
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    except ImportError:  # another skl2onnx layout: its own converters stay
        return
    update_registered_converter(
        HistGradientBoostingClassifier, "SklearnHistGradientBoostingClassifier",
        calculate_tree_classifier_output_shapes,
        _ints_not_booleans(convert_sklearn_random_forest_classifier),
        options={"zipmap": [True, False, "columns"], "raw_scores": [True, False],
                 "output_class_labels": [False, True], "nocl": [True, False]})
    update_registered_converter(
        HistGradientBoostingRegressor, "SklearnHistGradientBoostingRegressor",
        calculate_tree_regressor_output_shapes,
        _ints_not_booleans(convert_sklearn_random_forest_regressor_converter),
        options={"raw_scores": [True, False]})


def _ints_not_booleans(convert: Any) -> Any:
    def converted(scope: Any, operator: Any, container: Any) -> None:
        add_node = container.add_node

        def add(*args: Any, **attrs: Any) -> Any:
            for key, value in attrs.items():
                if isinstance(value, (list, tuple)) and any(
                        isinstance(v, (bool, np.bool_)) for v in value):
                    attrs[key] = [int(v) if isinstance(v, (bool, np.bool_)) else v
                                  for v in value]
            return add_node(*args, **attrs)

        container.add_node = add  # this conversion's container only
        try:
            convert(scope, operator, container)
        finally:
            del container.add_node
    return converted


def _from_boosting(model: Any, family: str, example: Any) -> bytes:
    try:
        import onnxmltools
        from onnxmltools.convert.common.data_types import FloatTensorType
    except ImportError:
        raise ImportError(f"converting a {family} model needs onnxmltools: "
                          f"pip install 'wasmq[sklearn]'") from None
    convert = onnxmltools.convert_xgboost if family == "xgboost" else \
        onnxmltools.convert_lightgbm
    types = [("X", FloatTensorType([None, _width(model, example)]))]
    return convert(model, initial_types=types, target_opset=BOOSTING_OPSET).SerializeToString()


def session(data: bytes, threads: int = 0) -> Any:
    """An onnxruntime session for the local check. onnxruntime's StringNormalizer builds
    its locale (en_US.UTF-8 unless the model names one) and fails where the machine has
    no such locale: then the local copy is run with C.UTF-8, which lowers ASCII the same."""
    import onnxruntime as ort

    def options(severity: int) -> Any:
        opts = ort.SessionOptions()
        opts.log_severity_level = severity
        if threads:
            opts.intra_op_num_threads = opts.inter_op_num_threads = threads
        return opts

    try:  # quiet: a locale's failure is handled below, not printed
        return ort.InferenceSession(data, options(4), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime's Fail
        if "locale" not in str(exc):
            raise
    import onnx

    model = onnx.load_model_from_string(data)
    for node in model.graph.node:
        if node.op_type == "StringNormalizer":
            for attr in list(node.attribute):
                if attr.name == "locale":
                    node.attribute.remove(attr)
            node.attribute.append(onnx.helper.make_attribute("locale", "C.UTF-8"))
    return ort.InferenceSession(model.SerializeToString(), options(2),
                                providers=["CPUExecutionProvider"])


def is_text(data: Any) -> bool:
    """A list (or 1-d array, or Series) of strings: one document a sample."""
    if is_frame(data):
        return False
    array = np.asarray(data, dtype=object) if not isinstance(data, np.ndarray) else data
    return array.ndim == 1 and array.size > 0 and isinstance(array.reshape(-1)[0], str)


def feeds(data: bytes, rows: Any) -> dict[str, np.ndarray]:
    """The rows as the model's inputs: one array, or a DataFrame's columns by name."""
    inputs = session(data).get_inputs()
    rows = rows_of(rows)
    out = {}
    for meta in inputs:
        kind = ONNX_TYPES.get(meta.type, np.float32)
        if is_frame(rows):
            if meta.name not in rows.columns:
                if len(inputs) == 1:
                    out[meta.name] = rows.to_numpy().astype(kind)
                    continue
                raise ValueError(f"the model's input '{meta.name}' is not a column of the "
                                 f"DataFrame")
            out[meta.name] = rows[meta.name].to_numpy().astype(kind).reshape(-1, 1)
        else:
            out[meta.name] = np.asarray(rows).astype(kind)
        if meta.shape and len(meta.shape) != out[meta.name].ndim:  # text: [n] or [n, 1]
            width = 1 if len(meta.shape) == 1 else -1
            out[meta.name] = out[meta.name].reshape(-1) if width == 1 else \
                out[meta.name].reshape(len(out[meta.name]), -1)
    return out


def request(example: Any) -> str:
    """The call body for one sample (a feature vector, or a DataFrame's first row)."""
    rows = rows_of(example)
    if is_frame(rows):
        return json.dumps({"input": {c: [[_plain(v)] for v in rows[c].to_numpy()[:1]]
                                     for c in rows.columns}})
    return json.dumps({"input": np.asarray(rows)[:1].tolist()})


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def local_outputs(data: bytes, rows: Any) -> dict[str, np.ndarray]:
    """What onnxruntime answers for the rows, each output as an array (ZipMap's list of
    dicts becomes the probability matrix the endpoint answers)."""
    sess = session(data)
    values = sess.run(None, feeds(data, rows))
    out = {}
    for meta, value in zip(sess.get_outputs(), values, strict=True):
        if isinstance(value, list) and value and isinstance(value[0], dict):
            value = np.array([[row[k] for k in row] for row in value], np.float32)
        out[meta.name] = np.asarray(value)
    return out


def row_request(rows: Any, i: int) -> str:
    """The call body for the i-th row."""
    rows = rows_of(rows)
    return request(rows.iloc[i:i + 1] if is_frame(rows) else np.asarray(rows)[i])


def row(outputs: dict[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
    return {k: v[i:i + 1] if v.ndim else v for k, v in outputs.items()}


def disagreement(local: dict[str, np.ndarray], remote: dict[str, Any],
                 tolerance: float = 1e-4) -> str | None:
    """Why the endpoint's answer differs from onnxruntime's, or None when they agree.

    The endpoint writes each output once: the first under "output" (Scailable's key),
    the others under their names."""
    for i, (name, want) in enumerate(local.items()):
        key = "output" if i == 0 else name
        if key not in remote:
            return f"the endpoint's answer has no output '{name}'"
        got = np.asarray(remote[key]).reshape(-1)
        want = want.reshape(-1)
        if got.shape != want.shape:
            return f"output '{name}' has {got.size} values, onnxruntime's {want.size}"
        if want.dtype.kind == "f":
            # float16 is computed in float32 here: a few float16 steps (2^-10) apart
            close = max(tolerance, 4e-3) if want.dtype == np.float16 else tolerance
            if not np.allclose(got.astype(np.float64), want, rtol=close, atol=close):
                return f"output '{name}' is {got.tolist()}, onnxruntime says {want.tolist()}"
        elif not np.array_equal(got.astype(want.dtype), want):
            return f"output '{name}' is {got.tolist()}, onnxruntime says {want.tolist()}"
    return None


def drift(model: Any, local: dict[str, np.ndarray], rows: Any,
          tolerance: float = 1e-4) -> str | None:
    """How far the ONNX conversion (run by onnxruntime) is from the estimator itself on
    the rows, in numbers, or None when within `tolerance` (or nothing to compare)."""
    if not hasattr(model, "predict") or isinstance(model, (bytes, str, os.PathLike)):
        return None
    rows = rows_of(rows)
    outs = list(local.values())
    n = len(rows)
    found = []
    try:
        predicted = np.asarray(model.predict(rows))
        proba = np.asarray(model.predict_proba(rows)) if hasattr(model, "predict_proba") \
            and len(outs) > 1 else None
    except Exception:  # noqa: BLE001 - an estimator that cannot predict these rows
        return None
    first = outs[0].reshape(n, -1)
    if predicted.dtype.kind in "iubUSO" or proba is not None:  # labels, numbers or strings
        wrong = int((first.reshape(-1)[:n] != predicted.reshape(-1)[:n]).sum()) \
            if first.size == predicted.size else n
        if wrong:
            found.append(f"labels differ on {wrong} of {n} rows")
    elif first.size == predicted.size:
        found += _numbers("predictions", first.reshape(-1), predicted.reshape(-1), tolerance)
    if proba is not None and outs[1].size == proba.size:
        found += _numbers("probabilities", outs[1].reshape(n, -1), proba, tolerance)
    if not found:
        return None
    return ("the ONNX conversion differs from the estimator itself (onnxruntime on the "
            "converted model against its predict): " + "; ".join(found) + " (converters "
            "compute in float32: tree thresholds rounded to float32 send values near them "
            "down the other branch)")


def _numbers(what: str, got: np.ndarray, want: np.ndarray, tolerance: float) -> list[str]:
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    bad = diff > tolerance * (1 + np.abs(want.astype(np.float64)))
    rows = bad.reshape(len(bad), -1).any(axis=1) if bad.ndim else bad
    if not rows.any():
        return []
    return [f"{what} by up to {float(diff.max()):.3g} on {int(rows.sum())} of {len(rows)} rows"]
