"""Integer and float16 inputs and outputs: computed as int64 and float32 inside the plan,
read and written in their own type at its edges, as onnxruntime takes and answers them."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper as h
from onnx import numpy_helper

from tests.model_runner import MAX_BYTES, reference, run_model, run_wasm, single, typed_outputs
from wasmq import modelfile
from wasmq.toolchain.model import ModelError, build_model

TP = onnx.TensorProto
RNG = np.random.default_rng(21)
EDGE = [(TP.INT8, np.int8), (TP.UINT8, np.uint8), (TP.INT16, np.int16),
        (TP.UINT16, np.uint16), (TP.INT32, np.int32), (TP.UINT32, np.uint32),
        (TP.INT64, np.int64), (TP.FLOAT16, np.float16)]


def values(dtype: type, shape: tuple[int, ...]) -> np.ndarray:
    if np.dtype(dtype).kind == "f":
        return (RNG.standard_normal(shape) * 50).astype(dtype)
    info = np.iinfo(dtype)
    return RNG.integers(max(info.min, -1000), min(info.max, 1000), shape).astype(dtype)


@pytest.mark.parametrize(("elem", "dtype"), EDGE, ids=[np.dtype(d).name for _, d in EDGE])
@pytest.mark.parametrize("raw", [True, False], ids=["raw", "json"])
def test_an_input_and_output_of_each_type_answers_as_onnxruntime(elem: int, dtype: type,
                                                                 raw: bool) -> None:
    """Add and Mul in the input's type: the output is that type too, in the reply's
    numbers and in the record."""
    x = h.make_tensor_value_info("x", elem, [2, 5])
    k = numpy_helper.from_array(np.array([3, 2, 1, 0, 2], dtype), "k")
    nodes = [h.make_node("Mul", ["x", "k"], ["m"]), h.make_node("Add", ["m", "x"], ["y"])]
    graph = h.make_graph(nodes, "g", [x], [h.make_tensor_value_info("y", elem, [2, 5])], [k])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    built = build_model(model.SerializeToString(), max_bytes=MAX_BYTES)
    name = np.dtype(dtype).name
    assert [t.dtype for t in built.inputs + built.outputs] == [name, name]
    feeds = {"x": values(dtype, (2, 5))}
    got = run_model(model, feeds, raw=raw)["y"]
    want = reference(model, feeds)["y"]
    assert got.dtype == want.dtype
    if np.dtype(dtype).kind == "f":  # float16 computed in float32, rounded once at the end
        np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32),
                                   rtol=2e-3, atol=1e-2)
    else:
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(("to", "dtype"), [(TP.INT8, np.int8), (TP.UINT8, np.uint8),
                                           (TP.INT32, np.int32), (TP.FLOAT16, np.float16)])
def test_a_cast_inside_the_model_wraps_or_rounds_as_its_type(to: int, dtype: type) -> None:
    """Cast(int64 -> int8) of 300 is 44 in onnxruntime; to float16, 0.1 is 0.0999755859375."""
    if to == TP.FLOAT16:
        x = np.array([[0.1, 1000.7, -3.3e-6, 70000.0, 1 / 3]], np.float32)
        elem = TP.FLOAT
    else:
        x = np.array([[300, -129, 255, 2**31 + 5, -7]], np.int64)
        elem = TP.INT64
    nodes = [h.make_node("Cast", ["x"], ["c"], to=to),
             h.make_node("Cast", ["c"], ["y"], to=elem)]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", elem, [1, 5])],
                         [h.make_tensor_value_info("y", elem, [1, 5])])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    got = run_model(model, {"x": x})["y"]
    np.testing.assert_array_equal(got, reference(model, {"x": x})["y"])


def test_a_value_outside_an_input_type_is_refused_naming_the_type() -> None:
    model = single("Identity", [("x", [3], TP.UINT8)], ["y"])
    built = build_model(model.SerializeToString(), max_bytes=MAX_BYTES)
    with pytest.raises(Exception, match=r"input 'x': a value is not in the range of uint8"):
        run_wasm(built.wasm, b'{"input": [1, 256, 3]}')
    with pytest.raises(Exception, match=r"input 'x': a value is not an integer"):
        run_wasm(built.wasm, b'{"input": [1, 2.5, 3]}')
    reply = json.loads(run_wasm(built.wasm, b'{"input": [0, 255, 7]}').output)
    assert reply["output"] == [0, 255, 7]


def test_float16_special_values_round_trip() -> None:
    with np.errstate(over="ignore"):  # 1e5 is past float16: infinity
        x = np.array([65504, -65504, 6.1e-5, 6e-8, 0.0, -0.0, np.inf, -np.inf, 1e5, 3e-8],
                     np.float32).astype(np.float16)
    model = single("Identity", [("x", [10], TP.FLOAT16)], ["y"])
    got = run_model(model, {"x": x})["y"]
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got.view(np.uint16), x.view(np.uint16))
    built = build_model(model.SerializeToString(), max_bytes=MAX_BYTES)
    body = b'{"input": [65519, 65520, 1e-8, 2.98e-8, NaN, -Infinity, 0.1, 1, 2, 3]}'
    reply = json.loads(run_wasm(built.wasm, body).output)["output"]
    with np.errstate(over="ignore"):  # 65520 rounds to infinity
        want = np.array([65519, 65520, 1e-8, 2.98e-8, np.nan, -np.inf, 0.1, 1, 2, 3],
                        np.float64).astype(np.float16)
    np.testing.assert_array_equal(np.array(reply, np.float16)[:4], want[:4])
    assert np.isnan(reply[4]) and reply[5] == -np.inf
    np.testing.assert_array_equal(np.array(reply[6:], np.float16), want[6:])


@pytest.mark.parametrize("elem", [TP.UINT64, TP.BFLOAT16, TP.COMPLEX64],
                         ids=["uint64", "bfloat16", "complex64"])
def test_a_type_that_stays_unsupported_is_named_in_the_refusal(elem: int) -> None:
    model = single("Identity", [("x", [3], elem)], ["y"])
    model = typed_outputs(model)
    name = TP.DataType.Name(elem)
    with pytest.raises(ModelError, match=rf"unsupported types: input 'x' is {name}, output "
                                         rf"'y' is {name} \(tensors may be float32"):
        build_model(model.SerializeToString(), max_bytes=MAX_BYTES)


@pytest.mark.parametrize(("elem", "dtype"), [(TP.INT8, np.int8), (TP.UINT8, np.uint8),
                                             (TP.INT32, np.int32), (TP.FLOAT16, np.float16)])
def test_deploy_models_check_of_each_type_agrees_with_onnxruntime(elem: int, dtype: type
                                                                  ) -> None:
    """What deploy_model's check does for such a model: the rows run locally (onnxruntime,
    fed in the input's type) and on the module (JSON numbers) agree, row by row."""
    x = h.make_tensor_value_info("x", elem, [None, 4])
    w = numpy_helper.from_array(np.array([1, 2, 3, 1], dtype), "w")
    graph = h.make_graph([h.make_node("Mul", ["x", "w"], ["y"])], "g", [x],
                         [h.make_tensor_value_info("y", elem, [None, 4])], [w])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    data = model.SerializeToString()
    built = build_model(data, max_bytes=MAX_BYTES)
    rows = values(dtype, (6, 4)) // (3 if np.dtype(dtype).kind in "iu" else 1)
    local = modelfile.local_outputs(data, rows)
    for i in range(len(rows)):
        answer = json.loads(run_wasm(built.wasm, modelfile.row_request(rows, i).encode())
                            .output)
        assert modelfile.disagreement(modelfile.row(local, i), answer) is None
