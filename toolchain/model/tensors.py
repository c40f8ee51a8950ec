"""Every tensor an uploaded model holds, checked before anything reads one.

The model is untrusted: a tensor may keep its data "externally" (a path that onnx
resolves against the working folder: issue 22 found the reference evaluator
opening the gateway's own log through a sparse tensor in a node attribute), or
claim dims its data does not have, or a type no numpy dtype stands for. So the
whole ModelProto is walked (graph, subgraphs, functions, training graphs, every
attribute, sparse tensors' values and indices), generically over its protobuf
fields so that no place a tensor can hide is forgotten, and each tensor found is
refused unless its data is inside the file and matches its dims and type. Only
then does the planner read one (`to_array`), and what it reads is bounded.

Names the model gives land in its record and in refusals: `shown` cuts them, and
`check_names` refuses a model whose names or counts are past MAX_NAME / the counts.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import onnx
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from onnx import numpy_helper

from wasmq.toolchain.model.errors import ModelError

# Longest name or domain a record keeps (a few hundred characters), and how much of
# one a refusal quotes.
MAX_NAME = 256
QUOTED = 80
MAX_INPUTS, MAX_OUTPUTS, MAX_OPSETS = 16, 64, 16
# Values per element in the typed field that holds them (complex: real, imaginary).
PAIRS = {onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128}
NIBBLES = {getattr(onnx.TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1")
           if hasattr(onnx.TensorProto, n)}


def shown(text: str) -> str:
    """A model-given name as a message quotes it: cut, with its length said."""
    if len(text) <= QUOTED:
        return text
    return f"{text[:QUOTED]}... ({len(text)} characters)"


def tensors(message: Message) -> Iterator[onnx.TensorProto]:
    """Every TensorProto inside `message`, at any depth (iterative: a deeply nested
    model cannot exhaust the stack here)."""
    stack = [message]
    while stack:
        msg = stack.pop()
        if isinstance(msg, onnx.TensorProto):
            yield msg
            continue
        for fd, value in msg.ListFields():
            if fd.type != FieldDescriptor.TYPE_MESSAGE:
                continue
            repeated = fd.is_repeated if hasattr(fd, "is_repeated") else \
                fd.label == FieldDescriptor.LABEL_REPEATED  # protobuf before 5.28
            if repeated:
                stack.extend(value)
            else:
                stack.append(value)


def _type_name(data_type: int) -> str:
    try:
        return onnx.TensorProto.DataType.Name(data_type)
    except ValueError:
        return str(data_type)


def _values(t: onnx.TensorProto, count: int) -> tuple[int, int]:
    """(values the tensor holds, values its dims and type need), in the unit of the
    field that holds them; raises ModelError for a type no array can have."""
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
        field = onnx.helper.tensor_dtype_to_field(t.data_type)
    except (KeyError, ValueError, TypeError):
        raise ModelError(f"tensor '{shown(t.name)}' has data type "
                         f"{_type_name(t.data_type)}, which is not a tensor type") from None
    if t.data_type in NIBBLES:
        need = (count + 1) // 2
        return (len(t.raw_data) if t.HasField("raw_data") else len(getattr(t, field))), need
    if t.HasField("raw_data"):
        if t.data_type == onnx.TensorProto.STRING:
            raise ModelError(f"tensor '{shown(t.name)}' is a string tensor with raw data")
        return len(t.raw_data), count * dtype.itemsize
    per = 2 if t.data_type in PAIRS else 1
    return len(getattr(t, field)), count * per


def check_tensors(model: onnx.ModelProto, max_bytes: int) -> None:
    """Refuse the model unless every tensor in it keeps its data in the file, has
    non-negative dims, a tensor type, and exactly the data its dims and type need."""
    for t in tensors(model):
        name = shown(t.name)
        if t.data_location == onnx.TensorProto.EXTERNAL or t.external_data:
            raise ModelError(f"tensor '{name}' keeps its data in an external file; save the "
                             f"model with its weights inside (onnx.save_model(model, path, "
                             f"save_as_external_data=False))")
        dims = list(t.dims)
        if len(dims) > 64:
            raise ModelError(f"tensor '{name}' has {len(dims)} dimensions")
        if any(d < 0 for d in dims):
            raise ModelError(f"tensor '{name}' has a negative dimension in its dims {dims}")
        count = math.prod(dims)
        if count > max_bytes:
            raise ModelError(f"tensor '{name}' has dims {dims} ({count} values), over the "
                             f"model limit of {max_bytes} bytes")
        have, need = _values(t, count)
        if have != need:
            raise ModelError(f"tensor '{name}' of type {_type_name(t.data_type)} and dims "
                             f"{dims} holds {have} data units where its dims and type need "
                             f"{need}: its data does not match its dims or type")


def to_array(t: onnx.TensorProto) -> np.ndarray:
    """A tensor `check_tensors` has passed, as an array (ModelError if onnx still
    cannot read it)."""
    try:
        return numpy_helper.to_array(t)
    except Exception as exc:  # noqa: BLE001 - onnx raises several kinds
        raise ModelError(f"tensor '{shown(t.name)}' cannot be read "
                         f"({type(exc).__name__}: {shown(str(exc))})") from None


def sparse_to_array(sparse: onnx.SparseTensorProto) -> np.ndarray:
    """A sparse initializer as the dense array it stands for; its indices (linear, or
    one row of coordinates per value) must each name a place inside its dims."""
    name = shown(sparse.values.name)
    dims = tuple(int(d) for d in sparse.dims)
    if any(d < 0 for d in dims):
        raise ModelError(f"sparse tensor '{name}' has a negative dimension in {list(dims)}")
    values = to_array(sparse.values).reshape(-1)
    indices = to_array(sparse.indices).astype(np.int64, copy=False)
    size = math.prod(dims)
    try:
        if indices.ndim == 2 and indices.shape[1] == len(dims) and len(dims) > 1:
            linear = np.ravel_multi_index(tuple(indices.T), dims)
        else:
            linear = indices.reshape(-1)
        if len(linear) != len(values):
            raise ValueError(f"{len(linear)} indices for {len(values)} values")
        if len(linear) and (linear.min() < 0 or linear.max() >= size):
            raise ValueError(f"an index is outside its {size} values")
        dense = np.zeros(size, values.dtype)
        dense[linear] = values
    except (ValueError, IndexError, TypeError) as exc:
        raise ModelError(f"sparse tensor '{name}' of dims {list(dims)} is malformed: "
                         f"{shown(str(exc))}") from None
    return dense.reshape(dims)


def check_names(model: onnx.ModelProto) -> None:
    """What the model's record will say is bounded: each name and domain at most
    MAX_NAME characters, printable, and at most so many inputs, outputs and opsets."""
    graph = model.graph
    weights = {t.name for t in graph.initializer} | \
        {s.values.name for s in graph.sparse_initializer}
    inputs = [vi for vi in graph.input if vi.name not in weights]
    counts = (("inputs", len(inputs), MAX_INPUTS), ("outputs", len(graph.output), MAX_OUTPUTS),
              ("opset imports", len(model.opset_import), MAX_OPSETS))
    for what, count, bound in counts:
        if count > bound:
            raise ModelError(f"the model has {count} {what}; at most {bound} are supported")
    named = [("input", vi.name) for vi in inputs] + \
            [("output", vi.name) for vi in graph.output] + \
            [("opset domain", imp.domain) for imp in model.opset_import]
    for what, name in named:
        if len(name) > MAX_NAME:
            raise ModelError(f"the {what} name '{shown(name)}' is longer than {MAX_NAME} "
                             f"characters")
        if what != "opset domain" and (not name or any(ord(ch) < 0x20 for ch in name)):
            raise ModelError(f"the {what} name {shown(name)!r} is empty or holds control "
                             f"characters")
