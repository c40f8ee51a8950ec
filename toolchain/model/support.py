"""What a model needs that the toolchain lacks, found before anything is planned.

A refusal should name everything to change at once: every unsupported operator
(with its domain and opset) and every unsupported tensor type, so the uploader
does not fix one and meet the next. Nodes computed from constants only (shape
arithmetic, Constant, ConstantOfShape, Range...) need no kernel: onnx's
reference evaluator folds them at build time, so they are not counted here.

Other opsets are converted first (`convert_opsets`): onnx.version_converter takes
an opset 1-6 model up to 13 and a model newer than 22 down to 22 (where the
converter can), and the record says so.
"""

from __future__ import annotations

import onnx

from wasmq.toolchain.model.errors import ModelError

DEFAULT_DOMAINS = ("", "ai.onnx")
ML_DOMAIN = "ai.onnx.ml"
MIN_OPSET, MAX_OPSET = 7, 22   # what the handlers are written for
CONVERT_TO = 13
ML_OPSETS = (1, 5)
# ONNX element types a tensor of the model may have (doubles are computed in float32)
# (float16 and integers of up to 32 bits computed as float32 and int64, cast at the edges)
TP = onnx.TensorProto
TYPES = {TP.FLOAT, TP.DOUBLE, TP.FLOAT16, TP.INT64, TP.INT32, TP.UINT32, TP.INT16, TP.UINT16,
         TP.INT8, TP.UINT8, TP.BOOL}
INPUT_TYPES = TYPES | {TP.STRING}  # strings as categories, or text
SUPPORTED_TYPES = ("float32, float64 and float16 (computed in float32), int64, int32, uint32, "
                   "int16, uint16, int8, uint8 (computed in int64) or bool")
# their outputs are not folded (If, Loop and Scan are unrolled while planning: control.py)
CONTROL_FLOW = {"If", "Loop", "Scan", "SequenceMap"}
SHAPE_QUERIES = {"Shape", "Size"}  # constant whatever their input holds
TYPE_NAMES = {v: k for k, v in onnx.TensorProto.DataType.items()}


def domain_of(node_or_import: object) -> str:
    return "" if node_or_import.domain in DEFAULT_DOMAINS else node_or_import.domain


def opsets_of(model: onnx.ModelProto) -> dict[str, int]:
    return {domain_of(imp): int(imp.version) for imp in model.opset_import}


def convert_opsets(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict | None]:
    """The model at an opset the handlers know, and what was converted (None: nothing)."""
    opsets = opsets_of(model)
    core = opsets.get("", 0)
    ml = opsets.get(ML_DOMAIN)
    if ml is not None and not ML_OPSETS[0] <= ml <= ML_OPSETS[1]:
        raise ModelError(f"the model uses ai.onnx.ml opset {ml}; opsets {ML_OPSETS[0]} to "
                         f"{ML_OPSETS[1]} are supported")
    if not core or MIN_OPSET <= core <= MAX_OPSET:
        return model, None
    target = CONVERT_TO if core < MIN_OPSET else MAX_OPSET
    from onnx import version_converter

    listed = {vi.name for vi in model.graph.input}
    for init in model.graph.initializer:  # before IR 4 every weight was an input too
        if init.name not in listed:
            model.graph.input.append(onnx.helper.make_tensor_value_info(
                init.name, init.data_type, list(init.dims)))
    try:
        converted = version_converter.convert_version(model, target)
    except Exception as exc:  # noqa: BLE001 - the converter raises RuntimeError and others
        first = str(exc).strip().splitlines()[0][-200:] if str(exc).strip() else \
            type(exc).__name__
        raise ModelError(f"the model uses ai.onnx opset {core}, and onnx.version_converter "
                         f"could not convert it to opset {target} ({first}); export it with "
                         f"an opset from {MIN_OPSET} to {MAX_OPSET}") from None
    return converted, {"from": core, "to": target, "by": "onnx.version_converter"}


def static_names(graph: onnx.GraphProto) -> set[str]:
    """Values known at build time: initializers and what is computed from them only."""
    known = {i.name for i in graph.initializer} | {s.values.name for s in graph.sparse_initializer}
    known.add("")
    for node in graph.node:
        if node.op_type in SHAPE_QUERIES or (node.op_type not in CONTROL_FLOW
                                             and all(n in known for n in node.input)):
            known.update(node.output)
    return known


def unsupported(graph: onnx.GraphProto, opsets: dict[str, int],
                known: object) -> tuple[list[str], list[str]]:
    """Each unsupported operator ('Op (domain d, opset n)' with a count) and each
    unsupported type (with the tensor that has it), in the graph's order; `known(domain,
    op)` says whether a handler exists."""
    static = static_names(graph)
    ops: dict[str, int] = {}
    for node in graph.node:
        domain = domain_of(node)
        runs = not all(n in static for n in node.input) or node.op_type in CONTROL_FLOW
        if node.op_type in SHAPE_QUERIES:
            runs = False
        if runs and not known(domain, node.op_type):
            key = (f"{node.op_type} (domain {domain or 'ai.onnx'}, opset "
                   f"{opsets.get(domain, '?')})")
            ops[key] = ops.get(key, 0) + 1
    listed = [f"{k} ({n}x)" if n > 1 else k for k, n in ops.items()]
    types: list[str] = []
    inits = {i.name for i in graph.initializer}
    for vi in graph.input:
        if vi.name in inits:
            continue
        what = _value_type(vi, INPUT_TYPES)
        if what:
            types.append(f"input '{vi.name}' is {what}")
    for vi in graph.output:  # strings: a classifier's labels (the planner checks)
        what = _value_type(vi, TYPES | {TP.STRING})
        if what and vi.type.HasField("tensor_type"):
            types.append(f"output '{vi.name}' is {what}")
    for init in graph.initializer:
        if init.data_type not in TYPES and init.data_type != onnx.TensorProto.UNDEFINED:
            if _used_at_run_time(graph, init.name, static):
                types.append(f"weight '{init.name}' is {_type_name(init.data_type)}")
    return listed, types


def _used_at_run_time(graph: onnx.GraphProto, name: str, static: set[str]) -> bool:
    return any(name in node.input and not all(n in static for n in node.input)
               for node in graph.node)


def _type_name(elem: int) -> str:
    return TYPE_NAMES.get(elem, str(elem))


def _value_type(vi: onnx.ValueInfoProto, allowed: set[int]) -> str | None:
    kind = vi.type.WhichOneof("value")
    if kind is None:
        return None
    if kind != "tensor_type":
        return {"sequence_type": "a sequence", "map_type": "a map",
                "optional_type": "an optional", "sparse_tensor_type": "a sparse tensor"}.get(
            kind, kind)
    elem = vi.type.tensor_type.elem_type
    if elem == onnx.TensorProto.UNDEFINED or elem in allowed:
        return None
    return f"{_type_name(elem)}"


LISTED, NAMED = 12, 80  # a refusal names at most 12, each cut to 80 characters (issue 22)


def _listed(names: list[str]) -> str:
    """Names an upload chose go into its refusal bounded: a few, each cut short."""
    shown = [n if len(n) <= NAMED else n[:NAMED - 3] + "..." for n in names[:LISTED]]
    more = f" and {len(names) - LISTED} more" if len(names) > LISTED else ""
    return ", ".join(shown) + more


def refuse(ops: list[str], types: list[str]) -> None:
    """One refusal naming everything at once, or nothing."""
    parts = []
    if ops:
        parts.append("unsupported operators: " + _listed(ops))
    if types:
        parts.append("unsupported types: " + _listed(types) + f" (tensors may be "
                     f"{SUPPORTED_TYPES}; inputs may be strings, read as categories or text)")
    if parts:
        raise ModelError("; ".join(parts))
