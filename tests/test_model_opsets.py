"""Any opset builds, and a refusal names everything the model needs at once."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper as h
from onnx import numpy_helper

from tests.model_runner import MAX_BYTES, reference, run_model, run_wasm, single, typed_outputs
from wasmq.toolchain.model import ModelError, build_model

F, D, INT, H = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.INT64,
                onnx.TensorProto.BFLOAT16)
RNG = np.random.default_rng(3)


def model_of(nodes: list, inputs: list, outputs: list, inits: list | None = None,
             opset: int = 13) -> onnx.ModelProto:
    graph = h.make_graph(nodes, "g", inputs, outputs, initializer=inits or [])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])
    model.ir_version = 7 if opset > 6 else 3
    return model


@pytest.mark.parametrize("opset", [1, 3, 6])
def test_an_old_opset_is_converted_and_the_record_says_so(opset: int) -> None:
    x = h.make_tensor_value_info("x", F, [2, 4])
    w = numpy_helper.from_array(RNG.standard_normal((3, 4)).astype(np.float32), "w")
    c = numpy_helper.from_array(RNG.standard_normal(3).astype(np.float32), "c")
    nodes = [h.make_node("Gemm", ["x", "w", "c"], ["g"], transB=1, broadcast=1),
             h.make_node("Relu", ["g"], ["y"])]
    model = model_of(nodes, [x], [h.make_tensor_value_info("y", F, [2, 3])], [w, c],
                     opset=opset)
    built = build_model(model.SerializeToString(), max_bytes=MAX_BYTES)
    assert built.describe()["converted"] == {"from": opset, "to": 13,
                                             "by": "onnx.version_converter"}
    feeds = {"x": RNG.standard_normal((2, 4)).astype(np.float32)}
    want = np.maximum(feeds["x"] @ numpy_helper.to_array(w).T + numpy_helper.to_array(c), 0)
    np.testing.assert_allclose(run_model(model, feeds)["y"], want, rtol=1e-5, atol=1e-6)


def test_a_current_opset_is_not_converted() -> None:
    built = build_model(single("Relu", [("x", [2], F)], ["y"]).SerializeToString(),
                        max_bytes=MAX_BYTES)
    assert "converted" not in built.describe()


def test_an_unsupported_operator_before_a_supported_one_is_named_not_the_next() -> None:
    """AlexNet's LRN before a MaxPool was reported as the MaxPool being malformed."""
    x = h.make_tensor_value_info("x", F, [1, 2, 4, 4])
    nodes = [h.make_node("Frobnicate", ["x"], ["f"], domain="com.example"),
             h.make_node("MaxPool", ["f"], ["p"], kernel_shape=[2, 2]),
             h.make_node("Hardmax", ["p"], ["y"])]
    model = model_of(nodes, [x], [h.make_tensor_value_info("y", F, None)])
    model.opset_import.append(h.make_opsetid("com.example", 2))
    with pytest.raises(ModelError) as err:
        build_model(model.SerializeToString(), max_bytes=MAX_BYTES)
    assert str(err.value).startswith("unsupported operators: Frobnicate (domain com.example, "
                                     "opset 2), Hardmax (domain ai.onnx, opset 13)")
    assert "MaxPool" not in str(err.value)


def test_unsupported_types_and_operators_are_named_together_before_anything_else() -> None:
    """A bfloat16 input, a sequence operator and a dynamic dimension: the refusal names the
    first two at once, and comes before the shape problem."""
    s = h.make_tensor_value_info("s", H, [1, "T"])
    x = h.make_tensor_value_info("x", F, [1, "T"])
    nodes = [h.make_node("SequenceConstruct", ["x", "x"], ["seq"]),
             h.make_node("SequenceLength", ["seq"], ["n"]),
             h.make_node("Identity", ["s"], ["t"])]
    model = model_of(nodes, [s, x], [h.make_tensor_value_info("n", INT, []),
                                     h.make_tensor_value_info("t", H, None)])
    with pytest.raises(ModelError) as err:
        build_model(model.SerializeToString(), max_bytes=MAX_BYTES)
    text = str(err.value)
    assert text.startswith("unsupported operators: SequenceConstruct (domain ai.onnx, opset "
                           "13), SequenceLength (domain ai.onnx, opset 13); unsupported types: "
                           "input 's' is BFLOAT16, output 't' is BFLOAT16")
    assert "dynamic" not in text


def test_float64_inputs_and_outputs_are_computed_in_float32() -> None:
    model = single("Add", [("a", [3, 4], D), ("b", [4], D)], ["y"])
    feeds = {"a": RNG.standard_normal((3, 4)), "b": RNG.standard_normal(4)}
    built = build_model(model.SerializeToString(), max_bytes=MAX_BYTES)
    assert [t.dtype for t in built.inputs + built.outputs] == ["float64"] * 3
    got = run_model(model, feeds)["y"]
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, reference(model, feeds)["y"], rtol=1e-6, atol=1e-6)
    row = single("Add", [("a", [1, 4], D), ("b", [4], D)], ["y"])
    built = build_model(row.SerializeToString(), max_bytes=MAX_BYTES)
    body = b'{"input": {"a": [[1.5, NaN, 3, -Infinity]], "b": [1, 2, 3, 4]}}'
    reply = json.loads(run_wasm(built.wasm, body).output)["output"]
    assert reply[0] == 2.5 and np.isnan(reply[1]) and reply[2:] == [6.0, -np.inf]


def test_a_large_constant_of_shape_weight_is_folded_up_to_the_model_limit() -> None:
    """ResNet-50's and VGG-19's shipped exports make a weight with ConstantOfShape; over
    2^20 values it was neither folded nor supported, and the Conv was blamed."""
    shape = np.array([1200, 1024, 1, 1], np.int64)  # 1.2 M values
    x = h.make_tensor_value_info("x", F, [1, 1024, 2, 2])
    nodes = [h.make_node("ConstantOfShape", ["shape"], ["w"],
                         value=numpy_helper.from_array(np.array([0.001], np.float32))),
             h.make_node("Conv", ["x", "w"], ["y"])]
    model = typed_outputs(model_of(nodes, [x], [onnx.ValueInfoProto(name="y")],
                                   [numpy_helper.from_array(shape, "shape")]))
    feeds = {"x": RNG.standard_normal((1, 1024, 2, 2)).astype(np.float32)}
    np.testing.assert_allclose(run_model(model, feeds)["y"], reference(model, feeds)["y"],
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(ModelError, match=r"ConstantOfShape node 'w' makes a constant of "
                                         r"1228800 values, over the model limit"):
        build_model(model.SerializeToString(), max_bytes=4 << 20)
