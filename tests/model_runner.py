"""Running built models the way a wasmq worker does, and the references they must match."""

from __future__ import annotations

import base64
import hashlib
import json

import numpy as np
import onnx
from onnx import helper as h
from onnx import numpy_helper

from wasmq.broker.limits import Limits
from wasmq.toolchain.model import BuiltModel, build_model
from wasmq.workers.runtime import Outcome, Runtime

LIMITS = Limits(timeout_s=20, max_memory_mb=512)
MAX_BYTES = 256 * 1024 * 1024
_RUNTIME: list[Runtime] = []
NUMPY = {"float32": np.float32, "int64": np.int64, "bool": np.bool_, "float64": np.float64,
         "float16": np.float16, "int8": np.int8, "uint8": np.uint8, "int16": np.int16,
         "uint16": np.uint16, "int32": np.int32, "uint32": np.uint32, "string": np.str_}


def runtime() -> Runtime:
    """One worker runtime per test process (it owns an epoch ticker thread)."""
    if not _RUNTIME:
        _RUNTIME.append(Runtime())
    return _RUNTIME[0]


def run_wasm(wasm: bytes, data: bytes) -> Outcome:
    rt = runtime()
    prepared = rt.prepare(hashlib.sha256(wasm).hexdigest(), lambda: wasm)
    return rt.run(prepared, data, LIMITS)


def request(built: BuiltModel, feeds: dict[str, np.ndarray], raw: bool = False) -> bytes:
    """The request body: by name for several inputs, under "input" for one."""
    def value(a: np.ndarray) -> object:
        if raw and a.dtype.kind not in "OUS":  # strings go as JSON strings
            return base64.b64encode(np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"))
                                    .tobytes()).decode()
        return a.tolist()
    if len(built.inputs) == 1:
        body = {"input": value(feeds[built.inputs[0].name])}
    else:
        body = {"input": {k: value(v) for k, v in feeds.items()}}
    if raw:
        body["type"] = "raw"
    return json.dumps(body).encode()


def outputs(built: BuiltModel, text: bytes) -> dict[str, np.ndarray]:
    reply = json.loads(text)
    out = {}
    for i, info in enumerate(built.outputs):  # the first under "output" only
        values = reply["output"] if i == 0 else reply[info.name]
        out[info.name] = np.array(values, dtype=NUMPY[info.dtype]).reshape(info.shape)
    return out


def run_model(model: onnx.ModelProto, feeds: dict[str, np.ndarray], raw: bool = True,
              **kw: object) -> dict[str, np.ndarray]:
    built = build_model(model.SerializeToString(), max_bytes=MAX_BYTES, **kw)
    return outputs(built, run_wasm(built.wasm, request(built, feeds, raw)).output)


def reference(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from wasmq.modelfile import session

    sess = session(model.SerializeToString(), threads=1)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds), strict=False))


def tensor(name: str, shape: list[int] | None, elem: int = onnx.TensorProto.FLOAT
           ) -> onnx.ValueInfoProto:
    return h.make_tensor_value_info(name, elem, shape)


def single(op: str, inputs: list[tuple[str, list[int], int]], outputs: list[str],
           consts: dict[str, np.ndarray] | None = None, opset: int = 17,
           ml: bool = False, **attrs: object) -> onnx.ModelProto:
    """A model of one node: runtime inputs (name, shape, elem type) and constant inputs."""
    consts = consts or {}
    names = [n for n, _, _ in inputs] + list(consts)
    order = attrs.pop("input_order", None)
    node = h.make_node(op, order or names, outputs, domain="ai.onnx.ml" if ml else "", **attrs)
    graph = h.make_graph([node], op, [tensor(n, s, e) for n, s, e in inputs],
                         [onnx.ValueInfoProto(name=o) for o in outputs],
                         initializer=[numpy_helper.from_array(v, k) for k, v in consts.items()])
    imports = [h.make_opsetid("", opset)] + ([h.make_opsetid("ai.onnx.ml", 3)] if ml else [])
    model = h.make_model(graph, opset_imports=imports)
    model.ir_version = 8
    return typed_outputs(model)


def typed_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Output types filled in by onnx's shape inference (onnxruntime needs them)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    del model.graph.output[:]
    model.graph.output.extend(inferred.graph.output)
    return model
