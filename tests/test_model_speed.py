"""The kernels' fast paths (issue 21's speed work) answer as onnxruntime on the shapes
that take them and at their edges: vector interiors of pooled rows, depthwise
convolutions, 1x1 convolutions read in place, Concat written in place."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper as h
from onnx import numpy_helper

from tests.model_runner import reference, run_model, single, typed_outputs

F = onnx.TensorProto.FLOAT
RNG = np.random.default_rng(21)


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def check(model: onnx.ModelProto, feeds: dict[str, np.ndarray], tol: float = 1e-4) -> None:
    want, got = reference(model, feeds), run_model(model, feeds)
    for name, value in want.items():
        assert got[name].shape == value.shape, name
        np.testing.assert_allclose(got[name], value, rtol=tol, atol=tol, err_msg=name)


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
@pytest.mark.parametrize("attrs", [
    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1},
    {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1]},
    {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1},
    {"kernel_shape": [2, 2], "strides": [2, 2]},
    {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [2, 1, 2, 1], "dilations": [2, 2]},
    {"kernel_shape": [5, 5], "strides": [3, 3], "pads": [2, 2, 2, 2]},  # stride 3: scalar
])
@pytest.mark.parametrize("width", [7, 13, 29])
def test_pooled_rows_match_onnxruntime_in_their_vector_interior_and_edges(
        op: str, attrs: dict, width: int) -> None:
    if op == "MaxPool":
        attrs = {k: v for k, v in attrs.items() if k != "count_include_pad"}
    elif "dilations" in attrs:
        attrs = {k: v for k, v in attrs.items() if k != "dilations"}
    shape = [1, 3, 11, width]
    check(single(op, [("x", shape, F)], ["y"], opset=13, **attrs), {"x": rand(*shape)})


def test_max_pool_propagates_nan_in_the_vector_interior() -> None:
    x = rand(1, 1, 6, 16)
    x[0, 0, 2, 7] = np.nan
    got = run_model(single("MaxPool", [("x", list(x.shape), F)], ["y"], opset=13,
                           kernel_shape=[3, 3], strides=[1, 1]), {"x": x})["y"]
    assert np.isnan(got[0, 0, 0:3, 5:8]).all()
    assert not np.isnan(got[0, 0, :, 9:]).any()


def conv_bn_relu(c: int, shape: list[int], k: int, **attrs: object) -> onnx.ModelProto:
    """A depthwise Conv with BatchNormalization and Relu fused into it."""
    inits = [numpy_helper.from_array(rand(c, 1, k, k), "w"), numpy_helper.from_array(rand(c), "b")]
    for name, value in (("s", 1 + 0.1 * rand(c)), ("t", rand(c)), ("m", rand(c)),
                        ("v", 1 + np.abs(rand(c)))):
        inits.append(numpy_helper.from_array(value.astype(np.float32), name))
    nodes = [h.make_node("Conv", ["x", "w", "b"], ["c"], group=c, kernel_shape=[k, k], **attrs),
             h.make_node("BatchNormalization", ["c", "s", "t", "m", "v"], ["n"]),
             h.make_node("Relu", ["n"], ["y"])]
    graph = h.make_graph(nodes, "dw", [h.make_tensor_value_info("x", F, shape)],
                         [onnx.ValueInfoProto(name="y")], initializer=inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])
    model.ir_version = 8
    return typed_outputs(model)


@pytest.mark.parametrize("attrs", [
    {"pads": [1, 1, 1, 1]}, {"pads": [1, 1, 1, 1], "strides": [2, 2]},
    {"pads": [0, 1, 2, 1], "strides": [2, 2]}, {"pads": [2, 2, 2, 2], "dilations": [2, 2]}, {},
])
@pytest.mark.parametrize("width", [5, 9, 20])
def test_depthwise_convolutions_match_onnxruntime(attrs: dict, width: int) -> None:
    shape = [2, 6, 7, width]
    check(conv_bn_relu(6, shape, 3, **attrs), {"x": rand(*shape)})


def test_depthwise_5x5_and_outputs_narrower_than_a_vector() -> None:
    check(conv_bn_relu(4, [1, 4, 9, 9], 5, pads=[2, 2, 2, 2]), {"x": rand(1, 4, 9, 9)})
    check(conv_bn_relu(4, [1, 4, 5, 5], 3, strides=[2, 2]), {"x": rand(1, 4, 5, 5)})


def test_a_model_over_the_memory_limit_names_every_setting_to_raise() -> None:
    """A big model (VGG-19's 548 MB) is refused at once naming all the settings that
    would each refuse it in turn, and once they allow it, its record says how long
    its build took."""
    from wasmq.broker.errors import InvalidModule
    from wasmq.toolchain.build import build_content

    model = single("MatMul", [("x", [1, 512], F)], ["y"], {"w": rand(512, 1024)}, opset=13)
    data = model.SerializeToString()
    with pytest.raises(InvalidModule) as refused:
        build_content(data, max_memory=1 << 20)
    message = refused.value.message
    assert message.startswith("model refused: ")
    for setting in ("WASMQ_MAX_MEMORY_MB", "WASMQ_MAX_MODULE_MB", "WASMQ_COMPILE_MEMORY_MB",
                    "WASMQ_COMPILE_TIMEOUT", "WASMQ_STORAGE_PER_CALLER_MB",
                    "WASMQ_REDIS_MAXMEMORY_MB"):
        assert setting in message
    built = build_content(data, max_memory=64 << 20)
    assert built.kind == "onnx"
    assert built.model["planMs"] >= 0 and built.model["compileMs"] >= 0


def dense_block() -> onnx.ModelProto:
    """DenseNet's pattern and Concat's edges: each layer's output concatenated onto all
    earlier ones; a tensor two Concats take, one taken twice, a Concat on a later axis,
    a Concat input that is also a model output."""
    inits, nodes = [], []
    x, c = "x", 4
    for i in range(3):
        inits.append(numpy_helper.from_array(rand(2, c, 3, 3), f"w{i}"))
        nodes += [h.make_node("Relu", [x], [f"r{i}"]),
                  h.make_node("Conv", [f"r{i}", f"w{i}"], [f"y{i}"], pads=[1, 1, 1, 1]),
                  h.make_node("Concat", [x, f"y{i}"], [f"cat{i}"], axis=1)]
        x, c = f"cat{i}", c + 2
    nodes += [h.make_node("Concat", ["y1", "y2", "y1"], ["twice"], axis=1),  # y1 again
              h.make_node("Concat", ["y0", "y2"], ["rows"], axis=2),  # not one run: copied
              h.make_node("Add", ["y2", "y2"], ["after"])]  # y2, in place, read afterwards
    graph = h.make_graph(nodes, "dense", [h.make_tensor_value_info("x", F, [1, 4, 5, 6])],
                         [onnx.ValueInfoProto(name=n) for n in ("cat2", "twice", "rows",
                                                                "after", "y0")],
                         initializer=inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])
    model.ir_version = 8
    return typed_outputs(model)


def test_concat_writes_its_inputs_in_place_and_answers_as_onnxruntime() -> None:
    from wasmq.toolchain.model import program as pg
    from wasmq.toolchain.model.ops import E
    from wasmq.toolchain.model.planner import Builder

    model = dense_block()
    for seed in range(2):
        check(model, {"x": np.random.default_rng(seed).standard_normal((1, 4, 5, 6))
                      .astype(np.float32)})
    b = Builder(model, 1 << 26, None)
    b.run()
    copied = sorted(i.words[12].tensor.name for i in b.prog.instrs
                    if i.op == pg.OP_ELT and i.words[0] == E["COPY"])
    # the dense block's Concats copy nothing; y1 and y2 already lie in them, so "twice"
    # copies its three inputs, and "rows" (not one run of bytes) its two
    assert copied == ["rows", "rows", "twice", "twice", "twice"]


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("shapes", [[[1, 5, 3, 7], [5, 1, 1]], [[5, 1, 1], [1, 5, 3, 7]],
                                    [[2, 3, 9], [2, 3, 1]]])
def test_an_operand_constant_along_the_row_is_broadcast_in_vectors(
        op: str, shapes: list[list[int]]) -> None:
    feeds = {"a": rand(*shapes[0]), "b": rand(*shapes[1])}
    if op == "Div":
        feeds["b"] = np.abs(feeds["b"]) + 0.5
    check(single(op, [("a", shapes[0], F), ("b", shapes[1], F)], ["y"], opset=13), feeds)


def test_a_batchnorm_after_no_conv_with_relu_matches_onnxruntime() -> None:
    """DenseNet's pre-activation: BatchNormalization on a Concat, then Relu."""
    c = 6
    inits = [numpy_helper.from_array(v.astype(np.float32), n) for n, v in (
        ("s", 1 + 0.1 * rand(c)), ("t", rand(c)), ("m", rand(c)), ("v", 1 + np.abs(rand(c))))]
    nodes = [h.make_node("Concat", ["a", "b"], ["x"], axis=1),
             h.make_node("BatchNormalization", ["x", "s", "t", "m", "v"], ["n"]),
             h.make_node("Relu", ["n"], ["y"])]
    graph = h.make_graph(nodes, "bn", [h.make_tensor_value_info("a", F, [1, 2, 5, 7]),
                                       h.make_tensor_value_info("b", F, [1, 4, 5, 7])],
                         [onnx.ValueInfoProto(name="y")], initializer=inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])
    model.ir_version = 8
    check(typed_outputs(model), {"a": rand(1, 2, 5, 7), "b": rand(1, 4, 5, 7)})


def test_floats_print_with_the_fewest_digits_that_read_back() -> None:
    """The reply's float formatting (halving the digit count instead of trying each)
    prints as few digits as numpy's shortest round trip, for floats of every magnitude
    (the last digit may differ where two shortest forms read back)."""
    import base64
    import json

    from tests.model_runner import run_wasm
    from wasmq.toolchain.model import build_model

    n = 20000
    x = (RNG.standard_normal(n) * 10.0 ** RNG.integers(-40, 38, n)).astype(np.float32)
    built = build_model(single("Identity", [("x", [n], F)], ["y"]).SerializeToString(),
                        max_bytes=1 << 26)
    body = json.dumps({"input": base64.b64encode(x.tobytes()).decode(), "type": "raw"})
    out = run_wasm(built.wasm, body.encode()).output
    printed = out[len(b'{"output": ['):-2].decode().split(", ")
    assert len(printed) == n

    def digits(text: str) -> str:
        return text.lower().split("e")[0].replace("-", "").replace(".", "").strip("0")

    for text, value in zip(printed, x, strict=True):
        assert np.float32(float(text)) == value
        shortest = digits(np.format_float_scientific(value, unique=True))
        assert len(digits(text)) == len(shortest), (text, shortest)


@pytest.mark.parametrize("hw", [(14, 14), (7, 7), (3, 5), (8, 8)])
def test_1x1_convolutions_read_columns_in_vectors_whatever_the_row_width(
        hw: tuple[int, int]) -> None:
    """A 1x1 stride-1 Conv reads eight consecutive input columns a panel (its last panel
    past the plane's end, those columns dropped), with any number of columns a row."""
    shape = [1, 40, *hw]
    inits = {"w": rand(10, 40, 1, 1), "b": rand(10)}
    check(single("Conv", [("x", shape, F)], ["y"], inits, opset=13), {"x": rand(*shape)})


@pytest.mark.parametrize("c,hw,k,attrs", [
    (3, (11, 13), 3, {"pads": [1, 1, 1, 1]}),                     # too few channels for Winograd
    (3, (21, 27), 7, {"pads": [3, 3, 3, 3], "strides": [2, 2]}),  # a stem; chunks end mid-row
    (40, (9, 29), 1, {"strides": [2, 2]}),                        # a downsampling 1x1
    (6, (12, 22), 3, {"pads": [2, 2, 2, 2], "dilations": [2, 2]}),
    (5, (10, 40), 3, {"pads": [1, 1, 1, 1], "strides": [3, 3]}),  # stride 3: one at a time
])
def test_column_matrices_at_row_widths_not_a_multiple_of_8_match_onnxruntime(
        c: int, hw: tuple[int, int], k: int, attrs: dict) -> None:
    shape = [1, c, *hw]
    inits = {"w": rand(6, c, k, k), "b": rand(6)}
    check(single("Conv", [("x", shape, F)], ["y"], inits, opset=13, **attrs),
          {"x": rand(*shape)})


def shortcut_block(kernel: int, group: int, late_shortcut: bool, width: int) -> onnx.ModelProto:
    """Conv (BatchNormalization folded in), Add of a shortcut, Relu: ResNet's and
    ShuffleNet's blocks. `late_shortcut`: the shortcut is a Conv after the first one in
    the graph (ResNet's downsampling block), so only it can take the sum."""
    c = 6
    inits = [numpy_helper.from_array(v.astype(np.float32), n) for n, v in (
        ("w", rand(c, c // group, kernel, kernel)), ("wb", rand(c)), ("ws", rand(c, c, 1, 1)),
        ("s", 1 + 0.1 * rand(c)), ("t", rand(c)), ("m", rand(c)), ("v", 1 + np.abs(rand(c))))
        if late_shortcut or n != "ws"]
    pad = kernel // 2
    nodes = [h.make_node("Conv", ["x", "w", "wb"], ["c"], pads=[pad] * 4, group=group),
             h.make_node("BatchNormalization", ["c", "s", "t", "m", "v"], ["y"])]
    short = "x"
    if late_shortcut:
        nodes.append(h.make_node("Conv", ["x", "ws"], ["short"]))
        short = "short"
    nodes += [h.make_node("Add", ["y", short], ["sum"]), h.make_node("Relu", ["sum"], ["out"])]
    graph = h.make_graph(nodes, "block", [h.make_tensor_value_info("x", F, [1, c, 5, width])],
                         [onnx.ValueInfoProto(name="out")], initializer=inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])
    model.ir_version = 8
    return typed_outputs(model)


@pytest.mark.parametrize("kernel, group", [(1, 1), (3, 1), (1, 3), (3, 6)])
@pytest.mark.parametrize("late_shortcut", [False, True])
@pytest.mark.parametrize("width", [6, 13])
def test_a_shortcut_add_is_taken_by_the_conv_and_answers_as_onnxruntime(
        kernel: int, group: int, late_shortcut: bool, width: int) -> None:
    """Im2col (1x1, grouped, with edge tiles), Winograd (3x3) and, not fused, depthwise."""
    from wasmq.toolchain.model import program as pg
    from wasmq.toolchain.model.planner import Builder

    model = shortcut_block(kernel, group, late_shortcut, width)
    check(model, {"x": rand(1, 6, 5, width)})
    b = Builder(model, 1 << 26, None)
    b.run()
    kinds = [i.op for i in b.prog.instrs]
    # the sum and the Relu go into a Conv, never a depthwise one: with no other Conv, they
    # stay in the Add
    alone = group == 6 and not late_shortcut
    assert kinds.count(pg.OP_ELT) == (1 if alone else 0), kinds
    fused = [i for i in b.prog.instrs if i.op == pg.OP_CONV and i.fields["residual"]]
    assert len(fused) == (0 if alone else 1)
    if late_shortcut:
        assert fused[0] is b.prog.instrs[1]  # the later Conv took the earlier one's output


@pytest.mark.parametrize("c,hw,k,group,attrs", [
    (3, (224, 224), 3, 1, {"pads": [1, 1, 1, 1], "strides": [2, 2]}),  # ShuffleNet's stem
    (3, (32, 32), 7, 1, {"pads": [3, 3, 3, 3], "strides": [2, 2]}),    # ResNet's, smaller
    (3, (9, 16), 3, 1, {"pads": [1, 1, 1, 1]}),                        # stride 1, one panel a row
    (4, (12, 32), 5, 2, {"pads": [2, 1, 3, 2], "strides": [2, 2]}),    # grouped, uneven pads
    (6, (10, 16), 3, 1, {"pads": [2, 2, 2, 2], "dilations": [2, 2]}),
])
def test_padding_read_inline_matches_onnxruntime_and_allocates_no_padded_copy(
        c: int, hw: tuple[int, int], k: int, group: int, attrs: dict) -> None:
    """Rows of 8 output columns at strides 1 and 2 read the padding as zeros where the
    taps fall: panels inside the row in vectors, those at its edges one column at a time,
    rows above and below the plane as zeros."""
    from wasmq.toolchain.model import program as pg
    from wasmq.toolchain.model.planner import Builder

    shape = [1, c, *hw]
    inits = {"w": rand(8, c // group, k, k), "b": rand(8)}
    model = single("Conv", [("x", shape, F)], ["y"], inits, opset=13, group=group, **attrs)
    check(model, {"x": rand(*shape)})
    b = Builder(model, 1 << 28, None)
    b.run()
    conv = next(i for i in b.prog.instrs if i.op == pg.OP_CONV)
    assert conv.words[35] == 1 and conv.words[24] == 0  # inline, no padded scratch


@pytest.mark.parametrize("raw", [True, False])
def test_the_request_text_lies_in_the_arena_clear_of_the_inputs(raw: bool) -> None:
    """malloc_buffer places the request where the activations later go (their pages are
    then faulted in once a call, not twice), never over an input tensor, which pred()
    writes while it reads the text; a text the arena cannot hold goes above it."""
    import struct

    import wasmtime

    from tests.model_runner import MAX_BYTES, outputs, request, run_wasm
    from wasmq.toolchain.model import build_model
    from wasmq.toolchain.model.planner import kernel

    shape = [1, 3, 32, 32]
    inits = [numpy_helper.from_array(rand(16, 3, 3, 3), "w"),
             numpy_helper.from_array(rand(16), "b")]
    # a second input, so that the text must avoid two tensors
    nodes = [h.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1]),
             h.make_node("Relu", ["z"], ["zz"])]
    graph = h.make_graph(nodes, "two", [h.make_tensor_value_info("x", F, shape),
                                        h.make_tensor_value_info("z", F, [2, 3])],
                         [onnx.ValueInfoProto(name="y"), onnx.ValueInfoProto(name="zz")],
                         initializer=inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])
    model.ir_version = 8
    model = typed_outputs(model)
    feeds = {"x": rand(*shape), "z": rand(2, 3)}
    built = build_model(model.SerializeToString(), max_bytes=MAX_BYTES)
    body = request(built, feeds, raw=raw)
    want = reference(model, feeds)
    got = outputs(built, run_wasm(built.wasm, body).output)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-4, err_msg=name)

    engine = wasmtime.Engine()
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    store = wasmtime.Store(engine)
    store.set_wasi(wasmtime.WasiConfig())
    ex = linker.instantiate(store, wasmtime.Module(engine, built.wasm)).exports(store)
    ex["_initialize"](store)
    memory = ex["memory"]
    base = kernel().plan_address
    head = struct.unpack("<8I", bytes(memory.read(store, base, base + 32)))
    arena = (base + head[1] + 63) & ~63
    arena_end, n_in, io_off = head[2], head[3], head[5]
    ins = []
    for i in range(n_in):
        words = struct.unpack("<16i", bytes(memory.read(store, base + io_off + 64 * i,
                                                        base + io_off + 64 * (i + 1))))
        ins.append((words[4], words[4] + 4 * words[3]))  # float32: 4 bytes a value
    ptr = ex["malloc_buffer"](store, len(body) + 1) & 0xFFFFFFFF
    # 16 KB of base64 or about 60 KB of JSON: either fits beside the 12 KB image
    assert arena <= ptr and ptr + len(body) + 1 <= arena_end
    assert all(e <= ptr or a >= ptr + len(body) + 1 for a, e in ins)
    big = ex["malloc_buffer"](store, 1 << 24) & 0xFFFFFFFF
    assert big >= arena_end
