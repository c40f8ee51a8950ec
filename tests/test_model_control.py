"""If and Loop, unrolled at build time, against onnxruntime; what cannot be unrolled is
refused by name."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper as h
from onnx import numpy_helper

from tests.model_runner import MAX_BYTES, reference, run_model, typed_outputs
from wasmq.toolchain.model import ModelError, build_model

F, INT, B = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64, onnx.TensorProto.BOOL
RNG = np.random.default_rng(8)


def model_of(nodes: list, inputs: list, outputs: list[str], inits: list | None = None
             ) -> onnx.ModelProto:
    graph = h.make_graph(nodes, "g", inputs, [onnx.ValueInfoProto(name=o) for o in outputs],
                         initializer=inits or [])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    return typed_outputs(model)


def branch(name: str, nodes: list, out: str, shape: list[int]) -> onnx.GraphProto:
    return h.make_graph(nodes, name, [], [h.make_tensor_value_info(out, F, shape)])


def if_model(else_shape: list[int] | None = None) -> onnx.ModelProto:
    """y = x * 2 if sum(x) > 0 else x - 1 (or a differently shaped else branch)."""
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    one = numpy_helper.from_array(np.array(1.0, np.float32), "one")
    zero = numpy_helper.from_array(np.array(0.0, np.float32), "zero")
    then = branch("then", [h.make_node("Mul", ["x", "two"], ["t"])], "t", [2, 3])
    if else_shape is None:
        other = branch("else", [h.make_node("Sub", ["x", "one"], ["e"])], "e", [2, 3])
    else:
        other = branch("else", [h.make_node("ReduceSum", ["x"], ["e"], keepdims=1)], "e",
                       else_shape)
    nodes = [h.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             h.make_node("Greater", ["s", "zero"], ["c"]),
             h.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)]
    return model_of(nodes, [h.make_tensor_value_info("x", F, [2, 3])], ["y"],
                    [two, one, zero])


def test_an_if_decided_at_run_time_answers_as_onnxruntime() -> None:
    model = if_model()
    for sign in (1.0, -1.0):
        x = np.abs(RNG.standard_normal((2, 3))).astype(np.float32) * sign
        np.testing.assert_allclose(run_model(model, {"x": x})["y"],
                                   reference(model, {"x": x})["y"], rtol=1e-6)


def test_an_if_whose_branches_differ_in_shape_is_refused_by_name() -> None:
    with pytest.raises(ModelError, match=r"If node 'y': output 0 is 't' \(2x3, float32\) in "
                                         r"one branch and 'e' \(1x1, float32\) in the other"):
        build_model(if_model([1, 1]).SerializeToString(), max_bytes=MAX_BYTES)


def test_an_if_known_at_build_time_plans_only_the_branch_taken() -> None:
    """The branch not taken may hold what wasmq cannot run."""
    flag = numpy_helper.from_array(np.array(True), "flag")
    then = branch("then", [h.make_node("Neg", ["x"], ["t"])], "t", [3])
    other = branch("else", [h.make_node("Frobnicate", ["x"], ["e"], domain="com.example")],
                   "e", [3])
    model = model_of([h.make_node("If", ["flag"], ["y"], then_branch=then, else_branch=other)],
                     [h.make_tensor_value_info("x", F, [3])], ["y"], [flag])
    model.opset_import.append(h.make_opsetid("com.example", 1))
    x = RNG.standard_normal(3).astype(np.float32)
    np.testing.assert_array_equal(run_model(model, {"x": x})["y"], -x)


def loop_model(condition: str = "true") -> onnx.ModelProto:
    """for i in range(5): y = y * 0.5 + x + i; if i is even, the scan output is y, else -y
    (an If inside the body, on the iteration number known at build time)."""
    half = numpy_helper.from_array(np.array(0.5, np.float32), "half")
    two = numpy_helper.from_array(np.array(2, np.int64), "two_i")
    zero = numpy_helper.from_array(np.array(0, np.int64), "zero_i")
    limit = numpy_helper.from_array(np.array(9.0, np.float32), "limit")
    even = branch("even", [h.make_node("Identity", ["y1"], ["ev"])], "ev", [2, 3])
    odd = branch("odd", [h.make_node("Neg", ["y1"], ["od"])], "od", [2, 3])
    body_nodes = [
        h.make_node("Mul", ["y0", "half"], ["m"]),
        h.make_node("Add", ["m", "x"], ["a"]),
        h.make_node("Cast", ["i"], ["fi"], to=F),
        h.make_node("Add", ["a", "fi"], ["y1"]),
        h.make_node("Mod", ["i", "two_i"], ["r"]),
        h.make_node("Equal", ["r", "zero_i"], ["is_even"]),
        h.make_node("If", ["is_even"], ["scanned"], then_branch=even, else_branch=odd),
    ]
    if condition == "true":
        body_nodes.append(h.make_node("Identity", ["c0"], ["c1"]))
    else:  # while sum(y) < limit: computed at run time
        body_nodes += [h.make_node("ReduceSum", ["y1"], ["total"], keepdims=0),
                       h.make_node("Less", ["total", "limit"], ["c1"])]
    body = h.make_graph(body_nodes, "body",
                        [h.make_tensor_value_info("i", INT, []),
                         h.make_tensor_value_info("c0", B, []),
                         h.make_tensor_value_info("y0", F, [2, 3])],
                        [h.make_tensor_value_info("c1", B, []),
                         h.make_tensor_value_info("y1", F, [2, 3]),
                         h.make_tensor_value_info("scanned", F, [2, 3])])
    trips = numpy_helper.from_array(np.array(5, np.int64), "trips")
    go = numpy_helper.from_array(np.array(True), "go")
    init = numpy_helper.from_array(np.zeros((2, 3), np.float32), "y_init")
    node = h.make_node("Loop", ["trips", "go", "y_init"], ["y", "ys"], body=body)
    return model_of([node], [h.make_tensor_value_info("x", F, [2, 3])], ["y", "ys"],
                    [trips, go, init, half, two, zero, limit])


def test_a_loop_of_a_fixed_count_answers_as_onnxruntime() -> None:
    model = loop_model()
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    got, want = run_model(model, {"x": x}), reference(model, {"x": x})
    assert got["ys"].shape == (5, 2, 3)
    for name in ("y", "ys"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)


def test_a_loop_whose_condition_is_computed_at_run_time_is_refused_by_name() -> None:
    with pytest.raises(ModelError, match="Loop node 'y': a Loop whose condition is computed "
                                         "at run time is not supported"):
        build_model(loop_model("while").SerializeToString(), max_bytes=MAX_BYTES)


def test_unrolling_is_bounded_over_the_whole_model() -> None:
    """Two nested Loops of 4096 (each allowed alone) would plan 16 M bodies: refused by
    name before the build's time limit ends it."""
    inner_body = h.make_graph(
        [h.make_node("Identity", ["c0"], ["c1"]), h.make_node("Neg", ["v0"], ["v1"])],
        "inner", [h.make_tensor_value_info("j", INT, []), h.make_tensor_value_info("c0", B, []),
                  h.make_tensor_value_info("v0", F, [1])],
        [h.make_tensor_value_info("c1", B, []), h.make_tensor_value_info("v1", F, [1])])
    outer_body = h.make_graph(
        [h.make_node("Identity", ["oc0"], ["oc1"]),
         h.make_node("Loop", ["many", "", "w0"], ["w1"], body=inner_body)],
        "outer", [h.make_tensor_value_info("i", INT, []), h.make_tensor_value_info("oc0", B, []),
                  h.make_tensor_value_info("w0", F, [1])],
        [h.make_tensor_value_info("oc1", B, []), h.make_tensor_value_info("w1", F, [1])])
    many = numpy_helper.from_array(np.array(4096, np.int64), "many")
    model = model_of([h.make_node("Loop", ["many", "", "x"], ["y"], body=outer_body)],
                     [h.make_tensor_value_info("x", F, [1])], ["y"], [many])
    with pytest.raises(ModelError, match="unrolling its body plans more than 100000 nodes"):
        build_model(model.SerializeToString(), max_bytes=MAX_BYTES)
