"""Whole models, built and run as wasmq's worker runs them, against onnxruntime.

Tolerances: logits within 1e-4 (absolute and relative; long float32 sums
in another order), the same top-1 class, labels and booleans exactly.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper as h
from onnx import numpy_helper

from bench.model import resnet20
from tests.model_runner import MAX_BYTES, reference, run_model, typed_outputs
from wasmq.toolchain.model import build_model

F, INT, B = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64, onnx.TensorProto.BOOL
RNG = np.random.default_rng(3)


def const(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array, name)


def small_cnn(opset: int = 13) -> onnx.ModelProto:
    """Every CNN operator: Conv (groups, strides, pads, dilations), BatchNormalization, Relu,
    LeakyRelu, Clip, MaxPool, AveragePool, Add, Concat, GlobalAveragePool, Flatten, Reshape,
    MatMul, Gemm, Softmax."""
    r = lambda *s: (RNG.standard_normal(s) * 0.3).astype(np.float32)  # noqa: E731
    bn = lambda c, p: [const(f"{p}s", 1 + r(c)), const(f"{p}b", r(c)), const(f"{p}m", r(c)),  # noqa: E731
                       const(f"{p}v", np.abs(r(c)) + 0.5)]
    inits = [const("w1", r(8, 3, 3, 3)), const("b1", r(8)), *bn(8, "n1"),
             const("w2", r(8, 2, 3, 3)), *bn(8, "n2"),
             const("w3", r(8, 8, 3, 3)), const("w4", r(16, 16, 1, 1)), const("b4", r(16)),
             const("shape", np.array([1, -1], np.int64)), const("wm", r(64, 20)),
             const("bm", r(20)), const("wg", r(10, 20)), const("bg", r(10)),
             const("lo", np.array(-1.0, np.float32)), const("hi", np.array(1.5, np.float32))]
    nodes = [
        h.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        h.make_node("BatchNormalization", ["c1", "n1s", "n1b", "n1m", "n1v"], ["bn1"]),
        h.make_node("Relu", ["bn1"], ["r1"]),
        h.make_node("Conv", ["r1", "w2"], ["c2"], group=4, pads=[2, 2, 2, 2], dilations=[2, 2]),
        h.make_node("BatchNormalization", ["c2", "n2s", "n2b", "n2m", "n2v"], ["bn2"]),
        h.make_node("LeakyRelu", ["bn2"], ["r2"], alpha=0.1),
        h.make_node("Add", ["r1", "r2"], ["res"]),
        h.make_node("MaxPool", ["res"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        h.make_node("Conv", ["p1", "w3"], ["c3"], strides=[2, 2], pads=[1, 1, 1, 1]),
        h.make_node("Clip", ["c3", "lo", "hi"], ["k3"]),
        h.make_node("AveragePool", ["p1"], ["a1"], kernel_shape=[3, 3], strides=[2, 2],
                    pads=[1, 1, 1, 1]),
        h.make_node("Concat", ["k3", "a1"], ["cat"], axis=1),
        h.make_node("Conv", ["cat", "w4", "b4"], ["c4"]),
        h.make_node("Relu", ["c4"], ["r4"]),
        h.make_node("GlobalAveragePool", ["r4"], ["gap"]),
        h.make_node("Flatten", ["gap"], ["flat"]),
        h.make_node("MaxPool", ["r4"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        h.make_node("Reshape", ["p2", "shape"], ["flat2"]),
        h.make_node("MatMul", ["flat2", "wm"], ["mm"]),
        h.make_node("Add", ["mm", "bm"], ["mmb"]),
        h.make_node("Relu", ["mmb"], ["hid"]),
        h.make_node("Gemm", ["hid", "wg", "bg"], ["logits0"], transB=1),
        h.make_node("Add", ["logits0", "gapsum"], ["logits"]),
        h.make_node("ReduceSum", ["flat"], ["gapsum"], axes=[1], keepdims=1),
        h.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    # ReduceSum (opset 13) takes axes as an input; keep it an attribute-free sum
    nodes[-2] = h.make_node("ReduceSum", ["flat"], ["gapsum"], keepdims=1)
    order = nodes[:-3] + [nodes[-2], nodes[-3], nodes[-1]]
    graph = h.make_graph(order, "cnn", [h.make_tensor_value_info("x", F, ["N", 3, 16, 16])],
                         [onnx.ValueInfoProto(name="probs"), onnx.ValueInfoProto(name="logits")],
                         initializer=inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])
    model.ir_version = 8
    return typed_outputs(model)


def test_small_cnn_with_every_cnn_operator_matches_onnxruntime() -> None:
    model = small_cnn()
    for _ in range(3):
        x = RNG.standard_normal((1, 3, 16, 16)).astype(np.float32)
        want, got = reference(model, {"x": x}), run_model(model, {"x": x})
        np.testing.assert_allclose(got["logits"], want["logits"], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got["probs"], want["probs"], rtol=1e-4, atol=1e-5)


def test_conv_batchnorm_relu_and_matmul_bias_relu_are_fused() -> None:
    built = build_model(small_cnn().SerializeToString(), max_bytes=MAX_BYTES)
    plan = built.describe()
    # 25 nodes; 8 join the instruction before them (both BatchNormalizations, the two Relu,
    # LeakyRelu and Clip after a Conv, the MatMul's Add and Relu); Flatten and Reshape are
    # views; Concat's inputs are written in place in its output: 25 - 8 - 2 - 1 = 14.
    assert plan["instructions"] == 14, plan


def house_prices() -> onnx.ModelProto:
    """Scailable's house-price pipeline: standardise, regress, bring back to dollars."""
    mean, std = np.array([2000, 3, 20], np.float32), np.array([500, 1, 10], np.float32)
    coef = np.array([[120.5], [30.1], [-4.2]], np.float32)
    nodes = [h.make_node("Sub", ["x", "mean"], ["centred"]),
             h.make_node("Div", ["centred", "std"], ["z"]),
             h.make_node("MatMul", ["z", "coef"], ["lin"]),
             h.make_node("Add", ["lin", "icpt"], ["pred"]),
             h.make_node("Mul", ["pred", "k"], ["dollars"]),
             h.make_node("Exp", ["zero"], ["one"]),
             h.make_node("Add", ["dollars", "one"], ["y"])]
    inits = [const("mean", mean), const("std", std), const("coef", coef),
             const("icpt", np.array([250.0], np.float32)), const("k", np.array(1000, np.float32)),
             const("zero", np.array(0, np.float32))]
    graph = h.make_graph(nodes, "prices", [h.make_tensor_value_info("x", F, [1, 3])],
                         [onnx.ValueInfoProto(name="y")], initializer=inits)
    return typed_outputs(h.make_model(graph, opset_imports=[h.make_opsetid("", 12)]))


def image_check() -> onnx.ModelProto:
    """Scailable's image check: is the picture close enough to a reference one?"""
    ref = RNG.random((1, 4, 8, 8)).astype(np.float32)
    nodes = [h.make_node("Sub", ["x", "ref"], ["d"]), h.make_node("Abs", ["d"], ["a"]),
             h.make_node("ReduceSum", ["a"], ["total"], keepdims=0),
             h.make_node("Less", ["total", "limit"], ["same"]),
             h.make_node("Not", ["same"], ["different"]),
             h.make_node("Cast", ["same"], ["score"], to=F),
             h.make_node("ArgMax", ["a"], ["where"], axis=1, keepdims=0)]
    inits = [const("ref", ref), const("limit", np.array(20.0, np.float32))]
    graph = h.make_graph(nodes, "check", [h.make_tensor_value_info("x", F, [1, 4, 8, 8])],
                         [onnx.ValueInfoProto(name=n) for n in ("same", "different", "score",
                                                                "where", "total")],
                         initializer=inits)
    return typed_outputs(h.make_model(graph, opset_imports=[h.make_opsetid("", 11)]))


def test_scailable_like_pipelines_match_onnxruntime() -> None:
    model = house_prices()
    x = np.array([[2300, 4, 12]], np.float32)
    np.testing.assert_allclose(run_model(model, {"x": x}, raw=False)["y"],
                               reference(model, {"x": x})["y"], rtol=1e-6)
    model = image_check()
    for scale in (0.05, 1.0):
        x = (RNG.random((1, 4, 8, 8)) * scale).astype(np.float32)
        want, got = reference(model, {"x": x}), run_model(model, {"x": x}, raw=False)
        for name, value in want.items():
            if value.dtype.kind == "f":
                np.testing.assert_allclose(got[name], value, rtol=1e-5)
            else:
                np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_resnet20_matches_onnxruntime_in_the_worker_runtime() -> None:
    model = resnet20(seed=5)
    for _ in range(2):
        x = RNG.standard_normal((1, 3, 32, 32)).astype(np.float32)
        want = reference(model, {"input": x})["logits"]
        got = run_model(model, {"input": x})["logits"]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        assert got.argmax() == want.argmax()


@pytest.mark.parametrize("opset", [7, 9, 11, 13, 15, 17, 19, 21])
def test_an_mlp_at_every_opset_matches_onnxruntime(opset: int) -> None:
    r = lambda *s: (RNG.standard_normal(s) * 0.5).astype(np.float32)  # noqa: E731
    nodes = [h.make_node("Gemm", ["x", "w1", "b1"], ["g1"]),
             h.make_node("Relu", ["g1"], ["h1"]),
             h.make_node("Gemm", ["h1", "w2", "b2"], ["g2"], transB=1),
             h.make_node("Sigmoid", ["g2"], ["s2"]),
             h.make_node("Softmax", ["s2"], ["probs"], axis=1)]
    inits = [const("w1", r(6, 16)), const("b1", r(16)), const("w2", r(4, 16)),
             const("b2", r(4))]
    graph = h.make_graph(nodes, "mlp", [h.make_tensor_value_info("x", F, [2, 6])],
                         [onnx.ValueInfoProto(name="probs")], initializer=inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])
    model.ir_version = 3 if opset < 8 else 8
    model = typed_outputs(model)
    x = RNG.standard_normal((2, 6)).astype(np.float32)
    np.testing.assert_allclose(run_model(model, {"x": x})["probs"],
                               reference(model, {"x": x})["probs"], rtol=1e-5, atol=1e-6)


def test_no_fusion_into_a_tensor_that_something_else_reads() -> None:
    """Conv -> Reshape -> Relu may not fold the Relu into the Conv when the Conv's output
    also feeds a Sigmoid, nor Conv -> BatchNormalization when the Conv's output is a model
    output."""
    w = (RNG.standard_normal((4, 2, 3, 3)) * 0.5).astype(np.float32)
    stats = [const("s", np.ones(4, np.float32) * 2), const("b", np.ones(4, np.float32)),
             const("m", np.zeros(4, np.float32)), const("v", np.ones(4, np.float32))]
    nodes = [h.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             h.make_node("Reshape", ["c", "shape"], ["flat"]),
             h.make_node("Relu", ["flat"], ["relu"]),
             h.make_node("Sigmoid", ["c"], ["sig"]),
             h.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["bn"])]
    graph = h.make_graph(nodes, "shared", [h.make_tensor_value_info("x", F, [1, 2, 5, 5])],
                         [onnx.ValueInfoProto(name=n) for n in ("relu", "sig", "bn", "c")],
                         initializer=[const("w", w), const("shape", np.array([1, -1], np.int64)),
                                      *stats])
    model = typed_outputs(h.make_model(graph, opset_imports=[h.make_opsetid("", 13)]))
    x = RNG.standard_normal((1, 2, 5, 5)).astype(np.float32)
    want, got = reference(model, {"x": x}), run_model(model, {"x": x})
    for name in ("relu", "sig", "bn", "c"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5, err_msg=name)
