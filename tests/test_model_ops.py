"""Every operator against onnxruntime on random inputs.

Tolerances: float32 results within rtol 1e-5 / atol 1e-5 of onnxruntime
(transcendental functions and long sums are computed in double, then rounded),
integer and bool results exactly.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper as h
from onnx import numpy_helper

from tests.model_runner import reference, run_model, single, typed_outputs
from wasmq.toolchain.model.planner import Builder

F, INT, B = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64, onnx.TensorProto.BOOL
RNG = np.random.default_rng(7)
RTOL = ATOL = 1e-5


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def check(model: onnx.ModelProto, feeds: dict[str, np.ndarray], rtol: float = RTOL,
          atol: float = ATOL, **kw: object) -> None:
    want = reference(model, feeds)
    got = run_model(model, feeds, **kw)
    for name, value in want.items():
        assert got[name].shape == value.shape, name
        if value.dtype.kind == "f":
            np.testing.assert_allclose(got[name], value, rtol=rtol, atol=atol, err_msg=name)
        else:
            np.testing.assert_array_equal(got[name], value, err_msg=name)


def one(op: str, shapes: list[list[int]], consts: dict | None = None, opset: int = 17,
        elem: int = F, feeds: dict | None = None, **attrs: object) -> None:
    names = [f"x{i}" for i in range(len(shapes))]
    model = single(op, [(n, s, elem) for n, s in zip(names, shapes, strict=True)], ["y"],
                   consts, opset=opset, **attrs)
    if feeds is None:
        feeds = {n: rand(*s) if elem == F else RNG.integers(-5, 6, s).astype(np.int64)
                 if elem == INT else RNG.random(s) > 0.5 for n, s in zip(names, shapes,
                                                                          strict=True)}
    check(model, feeds)


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Max", "Min"])
@pytest.mark.parametrize("shapes", [[[2, 3, 4], [2, 3, 4]], [[2, 3, 4], [4]], [[3, 1], [1, 5]],
                                    [[1, 3, 1, 2], [2, 1, 4, 1]]])
def test_binary_broadcasting(op: str, shapes: list[list[int]]) -> None:
    one(op, shapes)


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Max", "Min", "Mod"])
def test_int64_arithmetic(op: str) -> None:
    a = RNG.integers(-50, 50, (3, 4)).astype(np.int64)
    b = RNG.integers(1, 9, (4,)).astype(np.int64) * RNG.choice([-1, 1], 4)
    model = single(op, [("a", [3, 4], INT), ("b", [4], INT)], ["y"])
    check(model, {"a": a, "b": b})


def test_pow_and_comparisons() -> None:
    x = np.abs(rand(3, 4)) + 0.1
    check(single("Pow", [("x", [3, 4], F)], ["y"], {"p": np.array(2.5, np.float32)}),
          {"x": x})
    check(single("Pow", [("x", [3, 4], F)], ["y"], {"p": np.array(3, np.int64)}),
          {"x": rand(3, 4)})
    for op in ["Less", "Greater", "Equal", "LessOrEqual", "GreaterOrEqual"]:
        a = RNG.integers(-2, 3, (3, 4)).astype(np.float32)
        check(single(op, [("a", [3, 4], F), ("b", [4], F)], ["y"]),
              {"a": a, "b": a[0].copy()})
        check(single(op, [("a", [3, 4], INT), ("b", [3, 1], INT)], ["y"]),
              {"a": a.astype(np.int64), "b": a[:, :1].astype(np.int64)})
    for op in ["And", "Or", "Xor"]:
        one(op, [[2, 5], [5]], elem=B)
    one("Not", [[7]], elem=B)
    one("Equal", [[6], [6]], elem=B)


@pytest.mark.parametrize(("op", "attrs", "positive"), [
    ("Relu", {}, False), ("LeakyRelu", {"alpha": 0.2}, False), ("Sigmoid", {}, False),
    ("Tanh", {}, False), ("Exp", {}, False), ("Log", {}, True), ("Sqrt", {}, True),
    ("Abs", {}, False), ("Neg", {}, False), ("Reciprocal", {}, True), ("Floor", {}, False),
    ("Ceil", {}, False), ("Erf", {}, False), ("Softplus", {}, False), ("Round", {}, False),
    ("Sign", {}, False), ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}, False),
    ("Elu", {"alpha": 0.7}, False), ("Selu", {}, False), ("HardSwish", {}, False),
    ("Identity", {}, False),
])
def test_unary(op: str, attrs: dict, positive: bool) -> None:
    x = rand(4, 33) * 3
    if positive:
        x = np.abs(x) + 1e-3
    check(single(op, [("x", [4, 33], F)], ["y"], opset=17, **attrs), {"x": x})


def test_clip_in_both_opset_forms() -> None:
    check(single("Clip", [("x", [10], F)], ["y"], opset=9, min=-0.5, max=0.7), {"x": rand(10)})
    check(single("Clip", [("x", [10], F)], ["y"], {"lo": np.array(-0.5, np.float32),
                                                   "hi": np.array(0.3, np.float32)}),
          {"x": rand(10)})


def test_where_and_cast() -> None:
    model = single("Where", [("c", [3, 4], B), ("a", [3, 4], F), ("b", [4], F)], ["y"])
    check(model, {"c": RNG.random((3, 4)) > 0.5, "a": rand(3, 4), "b": rand(4)})
    for src, dst, x in [(F, INT, rand(9) * 10), (F, B, np.array([0, 1, -2, 0.5], np.float32)),
                        (INT, F, np.arange(-3, 3, dtype=np.int64)),
                        (B, F, np.array([True, False])), (INT, B, np.arange(-2, 2))]:
        check(single("Cast", [("x", list(x.shape), src)], ["y"], to=dst),
              {"x": x.astype({F: np.float32, INT: np.int64, B: np.bool_}[src])})


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_softmax(op: str, opset: int) -> None:
    for axis in (-1, 1):
        check(single(op, [("x", [2, 3, 5], F)], ["y"], opset=opset, axis=axis),
              {"x": rand(2, 3, 5) * 4})


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin",
                                "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSumExp",
                                "ReduceSumSquare"])
@pytest.mark.parametrize("axes", [[1], [0, 2], [-1], None])
def test_reductions(op: str, axes: list[int] | None) -> None:
    for keepdims in (0, 1):
        x = rand(3, 4, 5)
        if op == "ReduceSum":  # axes as an input from opset 13
            consts = {"axes": np.array(axes, np.int64)} if axes else None
            model = single(op, [("x", [3, 4, 5], F)], ["y"], consts, opset=13,
                           keepdims=keepdims)
        else:
            kw = {"axes": axes} if axes else {}
            model = single(op, [("x", [3, 4, 5], F)], ["y"], opset=13, keepdims=keepdims, **kw)
        check(model, {"x": x}, rtol=1e-4)


def test_reduce_with_axes_as_input_at_opset_18_and_int64() -> None:
    check(single("ReduceMax", [("x", [3, 4], F)], ["y"], {"axes": np.array([1], np.int64)},
                 opset=18), {"x": rand(3, 4)})
    check(single("ReduceSum", [("x", [3, 4], INT)], ["y"], {"axes": np.array([0], np.int64)},
                 opset=13), {"x": RNG.integers(-9, 9, (3, 4))})


def test_argmax_argmin() -> None:
    x = RNG.integers(0, 4, (3, 5, 2)).astype(np.float32)  # ties
    for op in ("ArgMax", "ArgMin"):
        for axis in (0, 1, -1):
            for last in (0, 1):
                check(single(op, [("x", [3, 5, 2], F)], ["y"], axis=axis, keepdims=axis % 2,
                             select_last_index=last), {"x": x})


@pytest.mark.parametrize(("ta", "tb"), [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_gemm(ta: int, tb: int) -> None:
    a = rand(5, 7) if not ta else rand(7, 5)
    w = rand(7, 6) if not tb else rand(6, 7)
    check(single("Gemm", [("a", list(a.shape), F)], ["y"], {"w": w, "c": rand(6)},
                 alpha=0.7, beta=1.3, transA=ta, transB=tb), {"a": a})
    # B at runtime, C a row
    model = single("Gemm", [("a", list(a.shape), F), ("w", list(w.shape), F)], ["y"],
                   {"c": rand(5, 1)}, transA=ta, transB=tb)
    check(model, {"a": a, "w": w})


@pytest.mark.parametrize(("sa", "sb"), [([4, 6], [6, 3]), ([2, 4, 6], [6, 3]), ([6], [6, 3]),
                                        ([4, 6], [6]), ([2, 1, 4, 6], [3, 6, 5]),
                                        ([3, 4, 6], [3, 6, 2])])
def test_matmul(sa: list[int], sb: list[int]) -> None:
    check(single("MatMul", [("a", sa, F)], ["y"], {"b": rand(*sb)}), {"a": rand(*sa)})
    check(single("MatMul", [("a", sa, F), ("b", sb, F)], ["y"]),
          {"a": rand(*sa), "b": rand(*sb)})


@pytest.mark.parametrize("attrs", [
    {}, {"pads": [1, 1, 1, 1]}, {"strides": [2, 2], "pads": [1, 0, 1, 2]},
    {"dilations": [2, 2], "pads": [2, 2, 2, 2]}, {"group": 2}, {"group": 4, "strides": [2, 1]},
    {"auto_pad": "SAME_UPPER", "strides": [2, 2]}, {"auto_pad": "SAME_LOWER"},
])
@pytest.mark.parametrize("kernel", [1, 3])
def test_conv(attrs: dict, kernel: int) -> None:
    g = attrs.get("group", 1)
    w = rand(8, 4 // g, kernel, kernel)
    model = single("Conv", [("x", [2, 4, 9, 11], F)], ["y"], {"w": w, "b": rand(8)}, **attrs)
    check(model, {"x": rand(2, 4, 9, 11)}, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("c,m,hw,pads", [
    (5, 6, (7, 10), [1, 0, 0, 1]),    # output channels not a multiple of 4, odd output sizes
    (20, 20, (18, 18), [1, 1, 1, 1]),  # several tile blocks, the last one short
    (4, 3, (2, 2), [1, 1, 1, 1]),      # fewer tiles than a vector holds
])
def test_winograd_conv_with_fused_relu(c: int, m: int, hw: tuple[int, int],
                                       pads: list[int]) -> None:
    """3x3 stride-1 convolutions take the Winograd path; its tiles, blocks and edges."""
    nodes = [h.make_node("Conv", ["x", "w", "b"], ["c"], pads=pads),
             h.make_node("Relu", ["c"], ["y"])]
    inits = [numpy_helper.from_array(rand(m, c, 3, 3), "w"), numpy_helper.from_array(rand(m), "b")]
    graph = h.make_graph(nodes, "wino", [h.make_tensor_value_info("x", F, [2, c, *hw])],
                         [onnx.ValueInfoProto(name="y")], initializer=inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])
    model.ir_version = 8
    model = typed_outputs(model)
    b = Builder(model, 1 << 26, None)
    b.run()
    assert [i.fields.get("winograd") for i in b.prog.instrs] == [True]
    check(model, {"x": rand(2, c, *hw)}, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel,pads", [(3, [1, 1, 1, 1]), (1, [0, 0, 0, 0]), (3, [0, 1, 1, 0])])
def test_strided_conv_with_rows_of_8(kernel: int, pads: list[int]) -> None:
    """Stride 2 with output rows a multiple of 8 columns: the vector column gather."""
    model = single("Conv", [("x", [1, 6, 16, 16], F)], ["y"],
                   {"w": rand(5, 6, kernel, kernel), "b": rand(5)}, strides=[2, 2], pads=pads)
    check(model, {"x": rand(1, 6, 16, 16)}, rtol=1e-4, atol=1e-4)


def test_conv_1d_and_depthwise_and_no_bias() -> None:
    check(single("Conv", [("x", [1, 3, 20], F)], ["y"], {"w": rand(5, 3, 4)}, strides=[3],
                 pads=[1, 2]), {"x": rand(1, 3, 20)}, rtol=1e-4, atol=1e-4)
    check(single("Conv", [("x", [1, 6, 8, 8], F)], ["y"], {"w": rand(6, 1, 3, 3)}, group=6,
                 pads=[1, 1, 1, 1]), {"x": rand(1, 6, 8, 8)}, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
@pytest.mark.parametrize("attrs", [
    {"kernel_shape": [2, 2], "strides": [2, 2]},
    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1},
    {"kernel_shape": [3, 2], "strides": [2, 2], "ceil_mode": 1},
    {"kernel_shape": [3, 3], "auto_pad": "SAME_UPPER", "strides": [2, 2]},
    {"kernel_shape": [4]},
])
def test_pools(op: str, attrs: dict) -> None:
    if op == "MaxPool":
        attrs = {k: v for k, v in attrs.items() if k != "count_include_pad"}
    shape = [2, 3, 9, 10] if len(attrs["kernel_shape"]) == 2 else [2, 3, 10]
    check(single(op, [("x", shape, F)], ["y"], **attrs), {"x": rand(*shape)})


def test_global_pools_and_batchnorm() -> None:
    for op in ("GlobalAveragePool", "GlobalMaxPool"):
        check(single(op, [("x", [2, 3, 5, 6], F)], ["y"]), {"x": rand(2, 3, 5, 6)})
    consts = {"s": rand(3), "b": rand(3), "m": rand(3), "v": np.abs(rand(3)) + 0.5}
    check(single("BatchNormalization", [("x", [2, 3, 4, 5], F)], ["y"], consts,
                 epsilon=1e-3), {"x": rand(2, 3, 4, 5)})


def test_shape_ops() -> None:
    x = {"x": rand(2, 3, 4)}
    check(single("Reshape", [("x", [2, 3, 4], F)], ["y"], {"s": np.array([0, -1], np.int64)}),
          x)
    check(single("Flatten", [("x", [2, 3, 4], F)], ["y"], axis=2), x)
    check(single("Transpose", [("x", [2, 3, 4], F)], ["y"], perm=[2, 0, 1]), x)
    check(single("Transpose", [("x", [2, 3, 4], F)], ["y"]), x)
    check(single("Unsqueeze", [("x", [2, 3, 4], F)], ["y"], {"a": np.array([0, -1], np.int64)},
                 opset=13), x)
    check(single("Unsqueeze", [("x", [2, 3, 4], F)], ["y"], opset=11, axes=[1]), x)
    check(single("Squeeze", [("x", [2, 1, 4], F)], ["y"], {"a": np.array([1], np.int64)},
                 opset=13), {"x": rand(2, 1, 4)})
    check(single("Squeeze", [("x", [1, 3, 1], F)], ["y"], opset=11), {"x": rand(1, 3, 1)})
    check(single("Expand", [("x", [3, 1], F)], ["y"], {"s": np.array([2, 3, 4], np.int64)}),
          {"x": rand(3, 1)})
    check(single("Tile", [("x", [2, 3], F)], ["y"], {"r": np.array([2, 3], np.int64)}),
          {"x": rand(2, 3)})


def test_concat_slice_split_pad_gather() -> None:
    model = single("Concat", [("a", [2, 3], F), ("b", [2, 5], F)], ["y"], axis=1)
    check(model, {"a": rand(2, 3), "b": rand(2, 5)})
    x = {"x": rand(4, 6, 5)}
    sl = {"s": np.array([1, -1, 0], np.int64), "e": np.array([4, -6, 5], np.int64),
          "a": np.array([0, 1, 2], np.int64), "t": np.array([2, -2, 1], np.int64)}
    check(single("Slice", [("x", [4, 6, 5], F)], ["y"], sl), x)
    check(single("Slice", [("x", [4, 6, 5], F)], ["y"], opset=9, starts=[1], ends=[100],
                 axes=[2]), x)
    check(single("Split", [("x", [4, 6, 5], F)], ["y", "z"], {"s": np.array([2, 4], np.int64)},
                 axis=1), x)
    check(single("Split", [("x", [4, 6, 5], F)], ["y", "z"], opset=11, axis=0), x)
    check(single("Pad", [("x", [4, 6, 5], F)], ["y"],
                 {"p": np.array([1, 0, 2, 0, -1, 1], np.int64), "v": np.array(1.5, np.float32)}),
          x)
    check(single("Pad", [("x", [4, 6, 5], F)], ["y"], opset=9, pads=[0, 1, 1, 0, 1, 1]), x)
    check(single("Gather", [("x", [4, 6, 5], F)], ["y"],
                 {"i": np.array([[0, -1], [2, 2]], np.int64)}, axis=1), x)
    model = single("Gather", [("x", [4, 6], F), ("i", [3], INT)], ["y"])
    check(model, {"x": rand(4, 6), "i": np.array([3, 0, -2], np.int64)})


def test_constant_folding_of_shape_arithmetic() -> None:
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape: all folded, only a copy runs."""
    h = onnx.helper
    nodes = [h.make_node("Shape", ["x"], ["s"]),
             h.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             h.make_node("Unsqueeze", ["n", "zero1"], ["n1"]),
             h.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
             h.make_node("Reshape", ["x", "shape"], ["y"]),
             h.make_node("Constant", [], ["k"], value_float=2.0),
             h.make_node("Mul", ["y", "k"], ["z"])]
    inits = [onnx.numpy_helper.from_array(np.array(0, np.int64), "zero"),
             onnx.numpy_helper.from_array(np.array([0], np.int64), "zero1"),
             onnx.numpy_helper.from_array(np.array([-1], np.int64), "minus1")]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", F, ["N", 3, 4])],
                         [h.make_tensor_value_info("z", F, None)], initializer=inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])
    check(model, {"x": rand(1, 3, 4)})


@pytest.mark.parametrize("norm", ["MAX", "L1", "L2"])
def test_ml_normalizer(norm: str) -> None:
    x = np.abs(rand(4, 5)) + 0.1
    check(single("Normalizer", [("x", [4, 5], F)], ["y"], ml=True, norm=norm), {"x": x})


def test_ml_scaler_regressor_and_feature_extractor() -> None:
    check(single("Scaler", [("x", [4, 3], F)], ["y"], ml=True, offset=[0.5, -1.0, 2.0],
                 scale=[2.0, 0.5, 3.0]), {"x": rand(4, 3)})
    check(single("LinearRegressor", [("x", [4, 3], F)], ["y"], ml=True,
                 coefficients=rand(6).tolist(), intercepts=[0.5, -0.25], targets=2),
          {"x": rand(4, 3)})
    check(single("ArrayFeatureExtractor", [("x", [4, 5], F)], ["y"],
                 {"i": np.array([4, 0, 2], np.int64)}, ml=True), {"x": rand(4, 5)})


def test_ml_tree_regressor_average_with_missing_values() -> None:
    attrs = dict(nodes_treeids=[0, 0, 0, 1, 1, 1], nodes_nodeids=[0, 1, 2, 0, 1, 2],
                 nodes_featureids=[0, 0, 0, 1, 0, 0], nodes_values=[0.0, 0, 0, 0.5, 0, 0],
                 nodes_modes=["BRANCH_LT", "LEAF", "LEAF", "BRANCH_GTE", "LEAF", "LEAF"],
                 nodes_truenodeids=[1, 0, 0, 1, 0, 0], nodes_falsenodeids=[2, 0, 0, 2, 0, 0],
                 nodes_missing_value_tracks_true=[1, 0, 0, 0, 0, 0],
                 target_treeids=[0, 0, 1, 1], target_nodeids=[1, 2, 1, 2],
                 target_ids=[0, 0, 0, 0], target_weights=[1.0, 2.0, 10.0, 20.0], n_targets=1,
                 aggregate_function="AVERAGE", base_values=[0.5])
    x = rand(6, 2)
    x[0, 0] = np.nan
    check(single("TreeEnsembleRegressor", [("x", [6, 2], F)], ["y"], ml=True, **attrs),
          {"x": x})
