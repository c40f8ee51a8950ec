"""What `Client.deploy_model` uploads: ONNX bytes, from whatever the user holds.

A file path, bytes, an `onnx.ModelProto`, or a fitted scikit-learn estimator
(converted here, on the client, with skl2onnx: the server never unpickles
anything). The example feature vector fixes the input's width and is run
locally with onnxruntime, so the endpoint's answer can be checked against it.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

# skl2onnx's newest opsets reach past what the server's toolchain plans
TARGET_OPSET = {"": 21, "ai.onnx.ml": 3}


def onnx_bytes(model: Any, example: np.ndarray | None = None) -> bytes:
    """The model as ONNX bytes; a scikit-learn estimator is converted with skl2onnx."""
    if isinstance(model, (bytes, bytearray, memoryview)):
        return bytes(model)
    if isinstance(model, (str, os.PathLike)):
        with open(model, "rb") as f:
            return f.read()
    if type(model).__name__ == "ModelProto" and hasattr(model, "SerializeToString"):
        return model.SerializeToString()
    if hasattr(model, "fit") and (hasattr(model, "predict") or hasattr(model, "transform")):
        return _from_sklearn(model, example)
    raise TypeError(f"deploy_model takes an ONNX file path, ONNX bytes, an onnx.ModelProto or a "
                    f"fitted scikit-learn estimator, not {type(model).__name__}")


def _from_sklearn(model: Any, example: np.ndarray | None) -> bytes:
    try:
        from skl2onnx import to_onnx
        from skl2onnx.common.data_types import FloatTensorType
    except ImportError:
        raise ImportError("converting a scikit-learn model needs skl2onnx: "
                          "pip install 'wasmq[sklearn]'") from None
    if example is not None:
        sample = np.asarray(example, np.float32).reshape(1, -1)
        onx = to_onnx(model, sample, target_opset=TARGET_OPSET)
    else:
        width = getattr(model, "n_features_in_", None)
        if width is None:
            raise ValueError("the estimator is not fitted (it has no n_features_in_); fit it "
                             "or pass example=")
        onx = to_onnx(model, initial_types=[("X", FloatTensorType([None, int(width)]))],
                      target_opset=TARGET_OPSET)
    return onx.SerializeToString()


def request(example: np.ndarray) -> str:
    """The call body for one feature vector, as the endpoint reads it."""
    return json.dumps({"input": np.asarray(example).reshape(1, -1).tolist()})


def local_outputs(data: bytes, example: np.ndarray) -> dict[str, np.ndarray]:
    """What onnxruntime answers for the example, each output as an array (ZipMap's list of
    dicts becomes the probability matrix the endpoint answers)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    first = sess.get_inputs()[0]
    kind = {"tensor(float)": np.float32, "tensor(int64)": np.int64,
            "tensor(bool)": np.bool_}.get(first.type, np.float32)
    feed = np.asarray(example).astype(kind).reshape(1, -1)
    values = sess.run(None, {first.name: feed})
    out = {}
    for meta, value in zip(sess.get_outputs(), values, strict=True):
        if isinstance(value, list) and value and isinstance(value[0], dict):
            value = np.array([[row[k] for k in row] for row in value], np.float32)
        out[meta.name] = np.asarray(value)
    return out


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
            if not np.allclose(got.astype(np.float64), want, rtol=tolerance, atol=tolerance):
                return f"output '{name}' is {got.tolist()}, onnxruntime says {want.tolist()}"
        elif not np.array_equal(got.astype(want.dtype), want):
            return f"output '{name}' is {got.tolist()}, onnxruntime says {want.tolist()}"
    return None
