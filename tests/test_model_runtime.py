"""The kernel module itself: built reproducibly, the ABI, reading input, printing output."""

from __future__ import annotations

import base64
import importlib.util
import json
import time

import numpy as np
import onnx
import pytest
import wasmtime

from tests.model_runner import MAX_BYTES, outputs, run_model, run_wasm, single
from wasmq.broker import abi
from wasmq.toolchain.model import ModelError, build_kernels, build_model, is_onnx
from wasmq.workers.runtime import ModuleFailed

F, INT, B = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64, onnx.TensorProto.BOOL


@pytest.mark.skipif(importlib.util.find_spec("ziglang") is None,
                    reason="ziglang is not installed (pip install ziglang): cannot rebuild")
def test_committed_kernels_are_what_the_source_builds(tmp_path) -> None:
    built = build_kernels.build(tmp_path / "kernels.wasm")
    assert built == build_kernels.TARGET.read_bytes(), \
        "kernels.wasm is stale: run python -m wasmq.toolchain.model.build_kernels"


def identity(shape: list[int], elem: int = F) -> bytes:
    return build_model(single("Identity", [("x", shape, elem)], ["y"]).SerializeToString(),
                       max_bytes=MAX_BYTES)


def test_the_built_module_passes_the_upload_check_and_imports_only_fd_write() -> None:
    built = identity([2])
    module = abi.compile_module(wasmtime.Engine(), built.wasm)
    info = abi.inspect_module(module)
    assert info.imports == ["wasi_snapshot_preview1.fd_write"]
    assert info.entry == "_initialize"
    assert built.inputs[0].as_dict() == {"name": "x", "shape": [2], "type": "float32"}


def test_floats_are_printed_so_they_read_back_to_the_same_float32() -> None:
    rng = np.random.default_rng(1)
    x = np.concatenate([
        rng.standard_normal(300).astype(np.float32) * np.float32(10.0) ** rng.integers(
            -30, 30, 300).astype(np.float32),
        np.array([0.1, 1 / 3, 1e-45, 1.17549435e-38, 3.4028235e38, -0.0, 0.0, 1.0, 100.0,
                  123456789.0, 16777216.0, 1e16, 1e-5, 2.5e-6], np.float32)]).astype(np.float32)
    built = identity([x.size])
    out = run_wasm(built.wasm, json.dumps({"input": x.tolist()}).encode()).output
    back = np.array(json.loads(out)["output"], np.float32)
    assert np.array_equal(back.view(np.uint32), x.view(np.uint32))
    assert b"0.1," in out and b"1e-45" in out  # the shortest form


def test_nan_and_infinities_print_as_python_json_reads_them() -> None:
    built = identity([3])
    raw = base64.b64encode(np.array([np.nan, np.inf, -np.inf], np.float32).tobytes()).decode()
    out = run_wasm(built.wasm, json.dumps({"input": raw, "type": "raw"}).encode()).output
    assert out == b'{"output": [NaN, Infinity, -Infinity]}'


def test_int64_and_bool_tensors_round_trip_exactly() -> None:
    ints = [-(2 ** 63), 2 ** 63 - 1, 0, -1, 12345678901234]
    out = run_wasm(identity([5], INT).wasm, json.dumps({"input": ints}).encode()).output
    assert json.loads(out)["output"] == ints
    out = run_wasm(identity([4], B).wasm, b'{"input": [true, false, 1, 0]}').output
    assert out == b'{"output": [true, false, true, false]}'


def test_each_output_is_written_once_the_first_under_output() -> None:
    model = single("Split", [("x", [6], F)], ["first", "second"], axis=0, num_outputs=2,
                   opset=18)
    built = build_model(model.SerializeToString(), max_bytes=MAX_BYTES)
    out = run_wasm(built.wasm, b'{"input": [1, 2, 3, 4, 5, 6]}').output
    assert out == b'{"output": [1.0, 2.0, 3.0], "second": [4.0, 5.0, 6.0]}'


def test_nested_flat_and_raw_inputs_are_the_same_tensor() -> None:
    built = identity([2, 3])
    x = np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5
    nested = run_wasm(built.wasm, json.dumps({"input": x.tolist()}).encode()).output
    flat = run_wasm(built.wasm, json.dumps({"input": x.reshape(-1).tolist()}).encode()).output
    raw = run_wasm(built.wasm, json.dumps(
        {"input": base64.b64encode(x.tobytes()).decode(), "type": "raw"}).encode()).output
    assert nested == flat == raw
    np.testing.assert_array_equal(outputs(built, nested)["y"], x)


@pytest.mark.parametrize(("body", "says"), [
    (b'{"input": [1, 2]}', "input 'x': got 2 values, the model expects 6 (shape 2x3, float32)"),
    (b'{"input": [1, 2, 3, 4, 5, 6, 7]}', "got 7 values, the model expects 6"),
    (b'{"input": [1, 2, "a", 4, 5, 6]}', "expected numbers"),
    (b'[1, 2, 3]', "the input is not a JSON object"),
    (b'{"input": [1, 2, 3, 4, 5, 6}', "not valid JSON"),
    (b'{"inputs": [1, 2, 3, 4, 5, 6]}', "missing input 'x' (shape 2x3, float32)"),
    (b'{"input": "AAAA", "type": "raw"}', "the raw tensor has 3 bytes, the model expects 24"),
    (b'{"input": "!!", "type": "raw"}', "not base64"),
])
def test_bad_input_fails_with_what_the_model_expects(body: bytes, says: str) -> None:
    built = identity([2, 3])
    with pytest.raises(ModuleFailed) as failed:
        run_wasm(built.wasm, body)
    assert says in str(failed.value)


def test_int_input_refuses_fractions() -> None:
    with pytest.raises(ModuleFailed, match="a value is not an integer"):
        run_wasm(identity([2], INT).wasm, b'{"input": [1.5, 2]}')
    out = run_wasm(identity([2], INT).wasm, b'{"input": [1.0, 2e3]}').output
    assert json.loads(out)["output"] == [1, 2000]


def test_several_inputs_are_taken_by_name() -> None:
    model = single("Add", [("a", [3], F), ("b", [3], F)], ["sum"])
    feeds = {"a": np.array([1, 2, 3], np.float32), "b": np.array([10, 20, 30], np.float32)}
    np.testing.assert_array_equal(run_model(model, feeds, raw=False)["sum"], [11, 22, 33])
    built = build_model(model.SerializeToString(), max_bytes=MAX_BYTES)
    top = run_wasm(built.wasm, b'{"a": [1, 2, 3], "b": [1, 1, 1]}').output
    assert json.loads(top)["output"] == [2.0, 3.0, 4.0]
    with pytest.raises(ModuleFailed, match="the model has 2 inputs; send them by name"):
        run_wasm(built.wasm, b'{"input": [1, 2, 3]}')
    with pytest.raises(ModuleFailed, match="missing input 'b'"):
        run_wasm(built.wasm, b'{"input": {"a": [1, 2, 3]}}')


def test_is_onnx_sniffs_content_not_names() -> None:
    data = single("Relu", [("x", [2], F)], ["y"]).SerializeToString()
    assert is_onnx(data)
    wasm = identity([1]).wasm
    assert not is_onnx(wasm)
    for other in (b"", b"hello world", b"PK\x03\x04" + bytes(100), bytes(range(256)),
                  json.dumps({"a": 1}).encode(), data[:-3]):
        assert not is_onnx(other)


def test_is_onnx_reads_a_bounded_number_of_fields_of_a_hostile_upload() -> None:
    """It runs in the gateway's request thread: 64 MB of empty opset_import fields
    made it walk 32 M field headers, 25 s of the process's CPU, before any limit."""
    spam = b"\x08\x07" + b"\x42\x00" * (32 * 1024 * 1024 - 1)
    started = time.process_time()
    assert not is_onnx(spam)
    assert time.process_time() - started < 2.0
    # A model's graph comes early (fields are written in number order), whatever follows.
    model = single("Relu", [("x", [2], F)], ["y"])
    for i in range(20000):
        model.metadata_props.add(key=f"k{i}", value="v")
    assert is_onnx(model.SerializeToString())


def test_refusals_name_the_problem() -> None:
    with pytest.raises(ModelError, match="not a valid ONNX model"):
        build_model(b"\x08\x07garbage", max_bytes=MAX_BYTES)
    model = single("Relu", [("x", ["N", "T"], F)], ["y"])
    with pytest.raises(ModelError, match="dynamic dimension 'T' at axis 1"):
        build_model(model.SerializeToString(), max_bytes=MAX_BYTES)
    built = build_model(model.SerializeToString(), max_bytes=MAX_BYTES,
                        input_shapes={"x": (1, 5)})
    assert built.inputs[0].shape == (1, 5)
    with pytest.raises(ModelError, match="over the model limit of 1000000 bytes"):
        build_model(single("Relu", [("x", [1000, 1000], F)], ["y"]).SerializeToString(),
                    max_bytes=1_000_000)
    weird = single("Relu", [("x", [2], F)], ["y"])
    weird.graph.node.append(onnx.helper.make_node("Frobnicate", ["y"], ["z"], domain="x.y"))
    weird.graph.node.append(onnx.helper.make_node("Hardmax", ["z"], ["w"]))
    weird.graph.output.append(onnx.helper.make_tensor_value_info("w", F, None))
    with pytest.raises(ModelError, match=r"unsupported operators: Frobnicate \(domain x.y, "
                                         r"opset \?\), Hardmax \(domain ai.onnx, opset 17\)"):
        build_model(weird.SerializeToString(), max_bytes=MAX_BYTES)


def test_a_module_without_a_plan_says_so() -> None:
    with pytest.raises(ModuleFailed, match="holds no model plan"):
        run_wasm(build_kernels.TARGET.read_bytes(), b'{"input": []}')


def test_external_weights_are_refused_not_read_from_disk(tmp_path) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(4, dtype=np.float32).tobytes())
    model = single("Add", [("x", [4], F)], ["y"], {"w": np.zeros(4, np.float32)})
    init = model.graph.initializer[0]
    init.ClearField("raw_data")
    init.data_location = onnx.TensorProto.EXTERNAL
    init.external_data.add(key="location", value=str(secret))
    with pytest.raises(ModelError, match="keeps its data in an external file"):
        build_model(model.SerializeToString(), max_bytes=MAX_BYTES)


def test_constant_control_flow_is_not_run_at_build_time() -> None:
    h = onnx.helper
    body = h.make_graph([h.make_node("Identity", ["c"], ["c_out"])], "body",
                        [h.make_tensor_value_info("i", INT, []),
                         h.make_tensor_value_info("c", B, [])],
                        [h.make_tensor_value_info("c_out", B, [])])
    model = single("Relu", [("x", [2], F)], ["y"])
    model.graph.node.append(h.make_node("Loop", ["", "forever"], [], body=body))
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(True), "forever"))
    with pytest.raises(ModelError, match=r"Loop node '.*': a Loop without a trip count known "
                                         r"at build time is not supported"):
        build_model(model.SerializeToString(), max_bytes=MAX_BYTES)


def test_a_model_with_too_many_nodes_is_refused_before_planning() -> None:
    h = onnx.helper
    n = 20_001
    nodes = [h.make_node("Relu", [f"t{i}"], [f"t{i + 1}"]) for i in range(n)]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("t0", F, [1])],
                         [h.make_tensor_value_info(f"t{n}", F, None)])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])
    with pytest.raises(ModelError, match="the model has 20001 nodes; at most 20000"):
        build_model(model.SerializeToString(), max_bytes=MAX_BYTES)


def test_an_input_named_input_is_found_by_name_among_several() -> None:
    model = single("Sub", [("input", [2], F), ("other", [2], F)], ["d"])
    built = build_model(model.SerializeToString(), max_bytes=MAX_BYTES)
    out = run_wasm(built.wasm, b'{"input": [5, 5], "other": [1, 2]}').output
    assert json.loads(out)["output"] == [4.0, 3.0]


def test_a_malformed_node_is_a_model_error_naming_it() -> None:
    model = single("MaxPool", [("x", [1, 1, 4, 4], F)], ["y"])  # no kernel_shape
    with pytest.raises(ModelError, match="MaxPool node 'y' is malformed"):
        build_model(model.SerializeToString(), max_bytes=MAX_BYTES)
    model = single("Conv", [("x", [1, 1, 4, 4], F)], ["y"])  # no weights
    with pytest.raises(ModelError, match="Conv node 'y' is malformed"):
        build_model(model.SerializeToString(), max_bytes=MAX_BYTES)
