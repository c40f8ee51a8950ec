"""The operators composed from existing kernels, each against onnxruntime on random
inputs (ONNX's own cases for them run in tests/test_model_backend.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tests.model_runner import MAX_BYTES, request, run_model, run_wasm, single
from tests.test_model_ops import check, rand
from wasmq.toolchain.model import build_model

F, INT = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
RNG = np.random.default_rng(5)
LOOSE = {"rtol": 1e-4, "atol": 1e-4}


@pytest.mark.parametrize(("op", "attrs"), [
    ("Softsign", {}), ("Shrink", {"lambd": 0.7, "bias": 0.2}), ("Gelu", {}),
    ("Gelu", {"approximate": "tanh"}),
])
def test_activations(op: str, attrs: dict) -> None:
    opset = 20 if op == "Gelu" else 17
    check(single(op, [("x", [3, 17], F)], ["y"], opset=opset, **attrs), {"x": rand(3, 17) * 2})


def test_prelu_per_channel_and_broadcast() -> None:
    check(single("PRelu", [("x", [2, 3, 4, 5], F)], ["y"],
                 {"s": rand(3, 1, 1)}), {"x": rand(2, 3, 4, 5)})
    check(single("PRelu", [("x", [2, 5], F), ("s", [5], F)], ["y"]),
          {"x": rand(2, 5), "s": rand(5)})


def test_normalizations() -> None:
    x = {"x": rand(2, 4, 3, 5) * 3 + 1}
    check(single("InstanceNormalization", [("x", [2, 4, 3, 5], F)], ["y"],
                 {"s": rand(4), "b": rand(4)}, epsilon=1e-3), x, **LOOSE)
    check(single("LayerNormalization", [("x", [2, 4, 3, 5], F)], ["y"],
                 {"s": rand(3, 5), "b": rand(3, 5)}, axis=2), x, **LOOSE)
    check(single("GroupNormalization", [("x", [2, 4, 3, 5], F)], ["y"],
                 {"s": rand(4), "b": rand(4)}, opset=21, num_groups=2), x, **LOOSE)


def test_lrn_as_alexnet_uses_it() -> None:
    check(single("LRN", [("x", [1, 7, 4, 4], F)], ["y"], size=5, alpha=1e-4, beta=0.75,
                 bias=2.0), {"x": rand(1, 7, 4, 4) * 10}, **LOOSE)


@pytest.mark.parametrize("mode", ["edge", "reflect", "wrap"])
def test_pad_modes(mode: str) -> None:
    pads = np.array([0, 1, 2, 1, 0, 2, 1, 0], np.int64)
    check(single("Pad", [("x", [2, 3, 4, 5], F)], ["y"], {"p": pads}, opset=19, mode=mode),
          {"x": rand(2, 3, 4, 5)})


@pytest.mark.parametrize("attrs", [
    {"mode": "nearest"}, {"mode": "linear"},
    {"mode": "linear", "coordinate_transformation_mode": "align_corners"},
    {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"},
    {"mode": "cubic"},
])
def test_resize(attrs: dict) -> None:
    scales = np.array([1, 1, 2, 1.5], np.float32)
    check(single("Resize", [("x", [1, 2, 4, 6], F)], ["y"],
                 {"roi": np.zeros(0, np.float32), "scales": scales}, opset=13, **attrs,
                 input_order=["x", "roi", "scales"]), {"x": rand(1, 2, 4, 6)}, **LOOSE)


def test_upsample_at_opset_9() -> None:
    for mode in ("nearest", "linear"):
        check(single("Upsample", [("x", [1, 2, 3, 4], F)], ["y"],
                     {"s": np.array([1, 1, 2, 2], np.float32)}, opset=9, mode=mode),
              {"x": rand(1, 2, 3, 4)}, **LOOSE)


@pytest.mark.parametrize("attrs", [
    {}, {"strides": [2, 2]}, {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]},
    {"group": 2, "strides": [2, 1]}, {"dilations": [2, 2]},
])
def test_conv_transpose_2d(attrs: dict) -> None:
    g = attrs.get("group", 1)
    check(single("ConvTranspose", [("x", [1, 4, 5, 6], F)], ["y"],
                 {"w": rand(4, 6 // g, 3, 3), "b": rand(6)}, **attrs),
          {"x": rand(1, 4, 5, 6)}, **LOOSE)


def test_conv_transpose_1d() -> None:
    check(single("ConvTranspose", [("x", [2, 3, 7], F)], ["y"], {"w": rand(3, 2, 4)},
                 strides=[3], output_padding=[2]), {"x": rand(2, 3, 7)}, **LOOSE)


@pytest.mark.parametrize("attrs", [{}, {"strides": [2, 1, 2], "pads": [1, 0, 1, 1, 1, 0]},
                                   {"group": 2, "dilations": [2, 1, 1]}])
def test_conv_3d(attrs: dict) -> None:
    g = attrs.get("group", 1)
    check(single("Conv", [("x", [2, 4, 6, 5, 5], F)], ["y"],
                 {"w": rand(6, 4 // g, 3, 3, 2), "b": rand(6)}, **attrs),
          {"x": rand(2, 4, 6, 5, 5)}, **LOOSE)


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
def test_pool_3d(op: str) -> None:
    attrs = {"kernel_shape": [3, 2, 3], "strides": [2, 2, 1], "pads": [1, 0, 1, 1, 1, 0]}
    check(single(op, [("x", [1, 3, 7, 6, 5], F)], ["y"], **attrs), {"x": rand(1, 3, 7, 6, 5)})


@pytest.mark.parametrize(("exclusive", "reverse"), [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_cumsum(exclusive: int, reverse: int) -> None:
    check(single("CumSum", [("x", [3, 9, 2], F)], ["y"], {"a": np.array(1, np.int64)},
                 exclusive=exclusive, reverse=reverse), {"x": rand(3, 9, 2)})
    check(single("CumSum", [("x", [11], INT)], ["y"], {"a": np.array(0, np.int64)},
                 exclusive=exclusive, reverse=reverse),
          {"x": RNG.integers(-9, 9, 11).astype(np.int64)})


def test_one_hot_gather_and_scatter_elements() -> None:
    idx = np.array([[1, -1, 0], [2, 3, -4]], np.int64)
    check(single("OneHot", [("i", [2, 3], INT)], ["y"],
                 {"d": np.array(4, np.int64), "v": np.array([0.5, 2.0], np.float32)}, axis=1),
          {"i": idx})
    check(single("GatherElements", [("x", [3, 4], F), ("i", [2, 3], INT)], ["y"], axis=1),
          {"x": rand(3, 4), "i": idx})
    check(single("GatherElements", [("x", [3, 4], F)], ["y"], {"i": idx[:, :2] % 3}, axis=0),
          {"x": rand(3, 4)})
    for reduction in ("none", "add", "max"):
        check(single("ScatterElements", [("x", [3, 4], F), ("u", [2, 3], F)], ["y"],
                     {"i": np.array([[1, 1, 0], [2, 1, 1]], np.int64)}, opset=18, axis=1,
                     reduction=reduction, input_order=["x", "i", "u"]),
              {"x": rand(3, 4), "u": rand(2, 3)})


@pytest.mark.parametrize(("largest", "axis"), [(1, -1), (0, 1), (1, 0)])
def test_topk(largest: int, axis: int) -> None:
    x = RNG.integers(0, 6, (4, 7, 3)).astype(np.float32)  # ties: the lower index first
    model = single("TopK", [("x", [4, 7, 3], F)], ["v", "i"], {"k": np.array([3], np.int64)},
                   largest=largest, axis=axis)
    check(model, {"x": x})


@pytest.mark.parametrize(("equation", "shapes"), [
    ("ij,jk->ik", [[3, 4], [4, 5]]), ("bij,bjk->bik", [[2, 3, 4], [2, 4, 5]]),
    ("ij,kj->ik", [[3, 4], [5, 4]]), ("bhqd,bhkd->bhqk", [[1, 2, 3, 4], [1, 2, 5, 4]]),
    ("ij->ji", [[3, 4]]), ("ij->i", [[3, 4]]), ("i,i->", [[5], [5]]),
])
def test_einsum_matrix_forms(equation: str, shapes: list) -> None:
    names = [f"x{i}" for i in range(len(shapes))]
    model = single("Einsum", [(n, s, F) for n, s in zip(names, shapes, strict=True)], ["y"],
                   equation=equation)
    check(model, {n: rand(*s) for n, s in zip(names, shapes, strict=True)}, **LOOSE)


def test_expand_and_reshape_with_shapes_computed_from_static_inputs() -> None:
    """What exporters write: Shape of a tensor, arithmetic on it, ConstantOfShape: all
    folded at build time, so Expand and Reshape get constant shapes."""
    h = onnx.helper
    nodes = [h.make_node("Shape", ["x"], ["s"]),
             h.make_node("Shape", ["s"], ["rank"]),
             h.make_node("ConstantOfShape", ["rank"], ["ones"],
                         value=onnx.numpy_helper.from_array(np.array([1], np.int64))),
             h.make_node("Mul", ["s", "ones"], ["same"]),
             h.make_node("Concat", ["three", "same"], ["big"], axis=0),
             h.make_node("Expand", ["x", "big"], ["e"]),
             h.make_node("Reshape", ["e", "flat"], ["y"])]
    inits = [onnx.numpy_helper.from_array(np.array([3], np.int64), "three"),
             onnx.numpy_helper.from_array(np.array([-1], np.int64), "flat")]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", F, [2, 1, 4])],
                         [h.make_tensor_value_info("y", F, None)], initializer=inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])
    check(model, {"x": rand(2, 1, 4)})


@pytest.mark.parametrize(("op", "bad"), [("GatherElements", 4), ("GatherElements", -5),
                                         ("Gather", 3), ("Gather", -4)])
def test_an_index_out_of_range_at_run_time_fails_the_call_by_name(op: str, bad: int) -> None:
    """GatherElements along axis 1 with index 4 of 4 read the next row's first value;
    it fails the call, as onnxruntime refuses it, and a good call still answers."""
    shape = [3, 4] if op == "GatherElements" else [3]
    model = single(op, [("x", [3, 4], F), ("i", [2, 3] if op == "GatherElements" else [2],
                                           INT)], ["y"], axis=1 if op == "GatherElements"
                   else 0)
    built = build_model(model.SerializeToString(), max_bytes=MAX_BYTES)
    good = np.zeros([2, 3] if op == "GatherElements" else [2], np.int64)
    good.flat[-1] = -1
    check(model, {"x": rand(3, 4), "i": good})
    wrong = good.copy()
    wrong.flat[1] = bad
    limit = shape[-1] if op == "GatherElements" else 3
    with pytest.raises(Exception, match=rf"an index is out of range: {bad} for an axis of "
                                        rf"{limit}"):
        run_wasm(built.wasm, request(built, {"x": rand(3, 4), "i": wrong}))


def scan_model(length: int, width: int = 256) -> onnx.ModelProto:
    """A Scan over `length` constant rows of `width`, as skl2onnx's k-NN scans: the
    squared distance of x to each row."""
    from onnx import helper as h
    from onnx import numpy_helper

    body = h.make_graph(
        [h.make_node("Sub", ["state", "row"], ["diff"]),
         h.make_node("Mul", ["diff", "diff"], ["sq"]),
         h.make_node("ReduceSum", ["sq"], ["dist"], keepdims=0),
         h.make_node("Identity", ["state"], ["state_out"])],
        "body", [h.make_tensor_value_info("state", F, [width]),
                 h.make_tensor_value_info("row", F, [width])],
        [h.make_tensor_value_info("state_out", F, [width]),
         h.make_tensor_value_info("dist", F, [])])
    rows = RNG.standard_normal((length, width)).astype(np.float32)
    node = h.make_node("Scan", ["x", "rows"], ["xs", "d"], body=body, num_scan_inputs=1,
                       scan_output_directions=[1])
    graph = h.make_graph([node], "g", [h.make_tensor_value_info("x", F, [width])],
                         [h.make_tensor_value_info("d", F, [length])],
                         [numpy_helper.from_array(rows, "rows")])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_a_scans_temporaries_live_one_iteration_not_the_whole_scan() -> None:
    """Each iteration's differences and squares (2 KB here) share bytes with the next
    iteration's: 200 iterations cost the same activations as 10, beyond the weights (a
    row each) and the plan's code. Before, every temporary lived to the Scan's end."""
    short, long = (build_model(scan_model(n).SerializeToString(), max_bytes=MAX_BYTES)
                   for n in (10, 200))
    grown = (long.memory_bytes - short.memory_bytes) - (long.weights_bytes - short.weights_bytes)
    assert grown < 200_000, grown  # 190 iterations' temporaries alone are 390 KB
    x = rand(256)
    check(scan_model(200), {"x": x}, rtol=1e-4, atol=1e-3)
    assert run_model(scan_model(10), {"x": x})["d"].shape == (10,)
