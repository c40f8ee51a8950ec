"""From ONNX bytes to a packed Scailable-ABI module: load, pin shapes, fold, plan, pack.

The graph is walked once in its (topological) order. A node whose inputs are
all known constants is evaluated by onnx's reference evaluator (Shape, Gather
on shapes, Concat of dims, Constant... all disappear this way); any other node
goes to its handler, which emits kernel instructions. Unsupported operators
are collected over the whole graph so the refusal names them all at once.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx

from wasmq.toolchain.model import (  # noqa: F401 - ml_tabular, ops_* register handlers
    control,
    ml,
    ml_tabular,
    ops,
    ops_composed,
    ops_indexing,
    scan,
    support,
    text,
)
from wasmq.toolchain.model import program as pg
from wasmq.toolchain.model import tensors as checked
from wasmq.toolchain.model.errors import ModelError, ModelTooLarge
from wasmq.toolchain.model.program import Instr, Program, Ref, Tensor, f32_bits
from wasmq.toolchain.model.wasmfile import Kernel

KERNELS = Path(__file__).with_name("kernels.wasm")
DEFAULT_DOMAINS = ("", "ai.onnx")
ML_DOMAIN = "ai.onnx.ml"
MIN_OPSET, MAX_OPSET = 7, 22  # 22 only widened types; skl2onnx emits it
ONNX_INPUT_TYPES = {1: pg.F32, 7: pg.I64, 9: pg.BOOL, 11: pg.F64, 8: pg.STR, 3: pg.I8,
                    2: pg.U8, 5: pg.I16, 4: pg.U16, 6: pg.I32, 12: pg.U32, 10: pg.F16}
# outputs the plan computes in float32 or int64 and casts at its edge to the declared type
EDGE_OUTPUT_TYPES = {11: pg.F64, 3: pg.I8, 2: pg.U8, 5: pg.I16, 4: pg.U16, 6: pg.I32,
                     12: pg.U32, 10: pg.F16}
# what a string input (its categories' indices) may flow through: moved, or encoded
STRING_MOVES = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Concat", "Slice",
                "Gather", "Transpose", "ArrayFeatureExtractor", "Split"}
STRING_ENCODERS = {"OneHotEncoder", "LabelEncoder", "CategoryMapper"}
# what string class labels (their indices) may pass through on their way out
LABEL_MOVES = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast"}
CATEGORY_ATTRIBUTES = ("cats_strings", "keys_strings")
TYPE_NAMES = {v: k for k, v in onnx.TensorProto.DataType.items()}
# Folding these could allocate their whole output: only when it is small.
GROWING = {"ConstantOfShape", "Expand", "Tile", "Range", "Resize", "Upsample", "Pad", "OneHot",
           "EyeLike", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike"}
NEVER_FOLD = {"If", "Loop", "Scan", "SequenceMap"}  # could run without end at build time
FOLD_LIMIT = 1 << 20
MAX_NODES = 20_000  # ResNet-152 has about 500, BERT-base about 2,000; planning is quadratic
LISTED = 12  # unsupported operators a refusal names
IO_RANK = 8  # dimensions of an input or output (the module's header holds eight)


@lru_cache(maxsize=1)
def kernel() -> Kernel:
    return Kernel.parse(KERNELS.read_bytes())


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str

    def as_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "type": self.dtype}


@dataclass(frozen=True)
class BuiltModel:
    """The module and what a record says about it."""

    wasm: bytes
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    opsets: dict[str, int]
    operators: dict[str, int] = field(default_factory=dict)
    weights_bytes: int = 0
    memory_bytes: int = 0
    instructions: int = 0
    converted: dict | None = None  # an old opset converted: {"from", "to", "by"}

    def describe(self) -> dict:
        described = {"inputs": [t.as_dict() for t in self.inputs],
                     "outputs": [t.as_dict() for t in self.outputs], "opsets": self.opsets,
                     "operators": self.operators, "weightsBytes": self.weights_bytes,
                     "memoryBytes": self.memory_bytes, "instructions": self.instructions}
        if self.converted:
            described["converted"] = self.converted
        return described


def load(data: bytes) -> onnx.ModelProto:
    try:
        model = onnx.load_model_from_string(data)
    except Exception:  # noqa: BLE001 - protobuf raises several kinds
        raise ModelError("the file is not a valid ONNX model (it does not parse as an ONNX "
                         "ModelProto)") from None
    if not model.HasField("graph"):
        raise ModelError("the ONNX model has no graph")
    return model


class Builder:
    def __init__(self, model: onnx.ModelProto, max_bytes: int,
                 input_shapes: dict[str, tuple[int, ...]] | None) -> None:
        self.model = model
        self.graph = model.graph
        self.prog = Program(max_bytes)
        self.values: dict[str, Tensor | None] = {}
        self.producers: dict[str, Instr] = {}
        self.opsets = self._opsets()
        self.input_shapes = input_shapes or {}
        self.outputs = {o.name for o in self.graph.output}
        self.consumers: Counter[str] = Counter()
        for node in self.graph.node:
            self.consumers.update(n for n in node.input if n)
        self.consumers.update(self.outputs)
        self.node: onnx.NodeProto | None = None
        self.opset = 0
        self.unsupported: dict[str, int] = {}
        self.op_counts: Counter[str] = Counter()
        self.strings: set[str] = set()  # values holding categories' indices
        self.categories: dict[str, int] = {}
        for node in self.graph.node:
            for attr in node.attribute:
                if attr.name in CATEGORY_ATTRIBUTES:
                    for value in attr.strings:
                        category = value.decode("utf-8", "replace")
                        if "\0" in category:
                            raise ModelError(f"{ops._where(node)}: a category holds a NUL")
                        self.categories.setdefault(category, len(self.categories))
        self.prog.categories = list(self.categories)
        self.texts: dict[str, text.Flow] = {}  # values standing for text (text.py)
        self.unrolled = 0  # nodes planned from If, Loop and Scan bodies (control.py)
        # values holding indices of string class labels (ml.class_labels), their labels
        self.labelled: dict[str, list[str]] = {}
        self.text_inputs = self._text_inputs()
        # id of a constant's array (kept alive here) -> its packed copy
        self._packed: dict[tuple[int, int], tuple[np.ndarray, int]] = {}

    # ---------------------------------------------------------------- setup
    def _text_inputs(self) -> set[str]:
        """String inputs that reach a text operator through views: read as text (their
        bytes), not as categories."""
        found = set()
        for vi in self.graph.input:
            if vi.type.tensor_type.elem_type != onnx.TensorProto.STRING:
                continue
            reach = {vi.name}
            for node in self.graph.node:
                if not any(n in reach for n in node.input):
                    continue
                if node.op_type in text.OPERATORS:
                    found.add(vi.name)
                    break
                if node.op_type in text.MOVES:
                    reach.update(node.output)
        return found

    def _opsets(self) -> dict[str, int]:
        opsets = {}
        for imp in self.model.opset_import:
            domain = "" if imp.domain in DEFAULT_DOMAINS else imp.domain
            opsets[domain] = int(imp.version)
        if "" not in opsets:
            opsets[""] = MAX_OPSET if ML_DOMAIN in opsets else 0
        if not MIN_OPSET <= opsets[""] <= MAX_OPSET and opsets[""]:
            raise ModelError(f"the model uses ai.onnx opset {opsets['']}; opsets {MIN_OPSET} "
                             f"to {MAX_OPSET} are supported")
        return opsets

    def const_tensor(self, name: str, array: np.ndarray) -> Tensor:
        array = np.asarray(array)
        kind = array.dtype.kind
        dtype = {"f": pg.F32, "i": pg.I64, "u": pg.I64, "b": pg.BOOL}.get(kind, -1)
        return Tensor(name, tuple(int(d) for d in array.shape), dtype, const=array)

    def _inputs(self) -> list[Tensor]:
        inits = {i.name for i in self.graph.initializer}
        for init in self.graph.initializer:
            self.values[init.name] = self.const_tensor(init.name, checked.to_array(init))
        for sparse in self.graph.sparse_initializer:
            self.values[sparse.values.name] = self.const_tensor(
                sparse.values.name, checked.sparse_to_array(sparse))
        inputs = []
        for vi in self.graph.input:
            if vi.name in inits:
                continue
            inputs.append(self._input(vi))
        if not inputs:
            raise ModelError("the model has no inputs")
        return inputs

    def _input(self, vi: onnx.ValueInfoProto) -> Tensor:
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            raise ModelError(f"input '{vi.name}' is not a tensor (sequences and maps are not "
                             f"supported as inputs)")
        if tt.elem_type not in ONNX_INPUT_TYPES:
            name = TYPE_NAMES.get(tt.elem_type, str(tt.elem_type))
            raise ModelError(f"input '{vi.name}' has type {name}; inputs may be "
                             f"{support.SUPPORTED_TYPES} or strings")
        given = self.input_shapes.get(vi.name)
        dims = list(tt.shape.dim) if tt.HasField("shape") else None
        if given is not None:
            shape = tuple(int(d) for d in given)
            fixed = [d.dim_value if d.HasField("dim_value") else None for d in dims or []]
            if dims is not None and (len(dims) != len(shape) or any(
                    f is not None and f != s for f, s in zip(fixed, shape, strict=False))):
                raise ModelError(f"input '{vi.name}': the shape {list(shape)} given does not "
                                 f"match the model's {_dims_text(dims)}")
        elif dims is None:
            raise ModelError(f"input '{vi.name}' has no shape in the model; give its shape")
        else:
            shape_list = []
            for axis, d in enumerate(dims):
                if d.HasField("dim_value") and d.dim_value > 0:
                    shape_list.append(int(d.dim_value))
                elif axis == 0:
                    shape_list.append(1)  # the batch: one sample a call
                else:
                    label = d.dim_param or "?"
                    raise ModelError(f"input '{vi.name}' has a dynamic dimension '{label}' at "
                                     f"axis {axis} ({_dims_text(dims)}) that wasmq cannot pin; "
                                     f"export the model with a fixed size there or give the "
                                     f"input's shape")
            shape = tuple(shape_list)
        dtype = ONNX_INPUT_TYPES[tt.elem_type]
        if vi.name in self.text_inputs:
            dtype = pg.TXT
        t = self.prog.new(vi.name, shape, dtype)
        t.storage.first = -1
        self.values[vi.name] = t
        if t.dtype in pg.COMPUTED:  # computed in float32 or int64 from here on
            self.values[vi.name] = ops.elementwise_to(self, ops.E["CAST"], t,
                                                      pg.COMPUTED[t.dtype])
        if t.dtype == pg.TXT:
            self.texts[vi.name] = text.Flow(t)
        if t.dtype == pg.STR:  # the same bytes: int64 indices of the model's categories
            self.values[vi.name] = Tensor(vi.name, shape, pg.I64, storage=t.storage)
            self.strings.add(vi.name)
        return t

    # ---------------------------------------------------------------- what handlers call
    @property
    def where(self) -> str:
        return ops._where(self.node)

    @property
    def name(self) -> str:
        return self.node.name or self.node.output[0]

    def out(self, i: int, shape: tuple[int, ...], dtype: int) -> Tensor:
        t = self.prog.new(self.node.output[i], shape, dtype)
        return t

    def alias(self, src: Tensor, i: int, shape: tuple[int, ...]) -> Tensor:
        t = self.prog.alias(src, self.node.output[i], shape)
        # a view of a tensor nothing else reads may still take a fused activation
        if src.name in self.producers and self.consumers[src.name] == 1 and \
                src.name not in self.outputs:
            self.producers[t.name] = self.producers[src.name]
        return t

    def const(self, i: int, array: np.ndarray) -> Tensor:
        return self.const_tensor(self.node.output[i], array)

    def used(self, name: str) -> bool:
        return self.consumers[name] > 0

    def ref(self, t: Tensor, extra: int = 0) -> Ref:
        if t.is_const:
            if t.dtype < 0:
                raise ModelError(f"{self.where}: constant '{t.name}' has type "
                                 f"{t.const.dtype}, which the kernels cannot use")
            # One packed copy per constant however many nodes read it (issue 22).
            key = (id(t.const), t.dtype)
            if key not in self._packed:
                self._packed[key] = (t.const, self.prog.constant(
                    t.const.astype(pg.NUMPY[t.dtype])))
            return Ref(const=self._packed[key][1], extra=extra)
        return self.prog.ref(t, extra)

    def in_place(self, t: Tensor, out: Tensor, at: int, whole: bool) -> bool:
        """Whether `t` (a Concat input, already planned) can be written straight into
        `out` from byte `at` on, so that the Concat copies nothing: when its slice of
        `out` is one run of bytes (`whole`) and t is all of its own storage. DenseNet
        concatenates each layer's output onto all the earlier ones: copied, each
        Concat would move them all again."""
        if not whole or t.is_const or t.storage is None or out.storage is None or t.offset:
            return False
        if t.storage.nbytes != t.size * pg.ESIZE[t.dtype]:
            return False
        return self.prog.place_inside(t.storage, out.storage, at)

    def producer(self, t: Tensor, instr: Instr) -> None:
        self.producers[t.name] = instr

    def _fusable(self, x: Tensor, *kinds: str) -> Instr | None:
        instr = self.producers.get(x.name)
        if instr is None or instr.kind not in kinds or x.is_const:
            return None
        if self.consumers[x.name] != 1 or x.name in self.outputs:
            return None
        return instr

    def fuse_act(self, x: Tensor, act: int, a: float, c: float) -> Tensor | None:
        instr = self._fusable(x, "conv", "gemm", "elt")
        if instr is None:
            return None
        if instr.kind == "elt":
            if act != ops.ACT_RELU or instr.words[0] not in (ops.E["ADD"], ops.E["SUB"],
                                                             ops.E["MUL"], ops.E["DIV"]) \
                    or instr.words[2] != pg.F32 or instr.words[4] != 0:
                return None
            instr.words[4] = f32_bits(1.0)
        else:
            if instr.fields["act"]:
                return None
            at = 20 if instr.kind == "conv" else 18
            instr.words[at:at + 3] = [act, f32_bits(a), f32_bits(c)]
            instr.fields["act"] = act
        return self.alias(x, 0, x.shape)

    def fuse_batchnorm(self, x: Tensor, s: np.ndarray, t: np.ndarray) -> Tensor | None:
        instr = self._fusable(x, "conv")
        if instr is None or instr.fields["act"] or instr.fields["residual"]:
            return None
        f = instr.fields
        w = (f["w"].astype(np.float64) * s.reshape(-1, *([1] * (f["w"].ndim - 1)))).astype(
            np.float32)
        bias = (f["bias"].astype(np.float64) * s + t).astype(np.float32)
        f["w"], f["bias"] = w, bias
        self.prog.consts[f["wi"]] = ops.pack_conv(w, f["groups"], f["winograd"]).tobytes()
        self.prog.consts[f["bi"]] = bias.tobytes()
        return self.alias(x, 0, x.shape)

    def fuse_residual(self, x: Tensor, y: Tensor) -> Tensor | None:
        """Add(conv, r) as the Conv adding r before its activation (ResNet's and
        ShuffleNet's shortcuts), so the sum is not a pass of its own over memory: when
        r has the Conv's shape and is computed before the Conv runs."""
        for out, res in ((x, y), (y, x)):
            instr = self._fusable(out, "conv")
            if instr is None or instr.fields["act"] or instr.fields["residual"] or \
                    instr.fields["depthwise"] or res.is_const or res.dtype != pg.F32 or \
                    res.shape != out.shape or res.storage is None or \
                    res.storage.first >= instr.node:
                continue
            instr.words[34] = self.prog.ref(res)
            instr.fields["residual"] = True
            return self.alias(out, 0, out.shape)
        return None

    def fuse_bias(self, x: Tensor, y: Tensor) -> Tensor | None:
        for mat, bias in ((x, y), (y, x)):
            instr = self._fusable(mat, "gemm")
            if instr is None or instr.fields["has_bias"] or not bias.is_const:
                continue
            n = instr.words[2]
            if bias.size != n or mat.shape[-1:] != (n,) or bias.dtype != pg.F32 or \
                    len(bias.shape) > len(mat.shape):
                continue
            instr.words[13] = self.prog.cref(bias.const.astype(np.float32).reshape(-1))
            instr.words[14:16] = [0, 1]
            instr.words[17] = f32_bits(1.0)
            instr.fields["has_bias"] = True
            return self.alias(mat, 0, mat.shape)
        return None

    # ---------------------------------------------------------------- the walk
    def run(self) -> tuple[list[Tensor], list[Tensor]]:
        inputs = self._inputs()
        for node in self.graph.node:
            self.prog.step += 1  # when it runs: a Scan's body nodes take steps of their own
            self.node = node
            self._node(node)
        if self.unsupported:
            kinds = list(self.unsupported.items())
            listed = ", ".join(f"{k} ({n}x)" if n > 1 else k for k, n in kinds[:LISTED])
            more = f" and {len(kinds) - LISTED} more" if len(kinds) > LISTED else ""
            raise ModelError(f"unsupported operators: {listed}{more}")
        self.prog.step += 1
        outputs = []
        for vi in self.graph.output:
            t = self.values.get(vi.name)
            if t is None:
                raise ModelError(f"output '{vi.name}' is not computed by any node")
            if vi.name in self.texts or t.dtype == pg.TXT or (
                    vi.type.tensor_type.elem_type == onnx.TensorProto.STRING and (
                        vi.name not in self.labelled or t.is_const)):
                raise ModelError(f"unsupported types: output '{checked.shown(vi.name)}' is "
                                 f"STRING (a string output can only be a classifier's labels)")
            if vi.type.tensor_type.elem_type == onnx.TensorProto.STRING:
                t = Tensor(vi.name, t.shape, pg.STR, storage=t.storage, offset=t.offset)
                self.prog.labels[vi.name] = self.labelled[vi.name]
            if t.is_const:  # nothing of the input flows there: answer the constant
                self.node = onnx.helper.make_node("Identity", [], [vi.name], name=vi.name)
                src = t
                t = self.prog.new(vi.name, t.shape, t.dtype if t.dtype >= 0 else pg.F32)
                ops.copy_view(self, src, t.shape, ops.contiguous(t.shape), 0, t)
            elif t.name != vi.name:
                t = Tensor(vi.name, t.shape, t.dtype, storage=t.storage, offset=t.offset)
            edge = EDGE_OUTPUT_TYPES.get(vi.type.tensor_type.elem_type)
            if edge is not None and t.dtype == pg.COMPUTED[edge]:
                self.node = onnx.helper.make_node("Cast", [], [vi.name], name=vi.name)
                src = t
                t = self.prog.new(vi.name, t.shape, edge)
                ops.elt(self, ops.E["CAST"], [(src, ops.contiguous(t.shape), 0)], t, t.shape)
            if t.size == 0:
                raise ModelError(f"output '{vi.name}' is empty")
            outputs.append(t)
        return inputs, outputs

    def _node(self, node: onnx.NodeProto) -> None:
        domain = "" if node.domain in DEFAULT_DOMAINS else node.domain
        ins = [self.values.get(n) if n else None for n in node.input]
        missing = [n for n, t in zip(node.input, ins, strict=False) if n and t is None]
        if missing:
            # produced by an unsupported node (or by none): check this one's support and
            # move on, so the refusal names the unsupported, not what follows it
            if not self._known(domain, node.op_type):
                self._unsupported(domain, node)
            for name in node.output:
                self.values[name] = None
            return
        known = self._known(domain, node.op_type)  # If, Loop, Scan: unrolled (control.py)
        if all(t is None or t.is_const for t in ins) and self._fold(node, ins, domain):
            return
        if not known:
            self._unsupported(domain, node)
            for name in node.output:
                self.values[name] = None
            return
        self.opset = self.opsets.get(domain, 1)
        stringly = any(n in self.strings for n in node.input)
        if stringly and node.op_type not in STRING_MOVES | STRING_ENCODERS:
            raise ModelError(f"{self.where}: {node.op_type} on a string tensor is not "
                             f"supported (strings are categories: encoded by OneHotEncoder, "
                             f"LabelEncoder or CategoryMapper)")
        textual = any(n in self.texts for n in node.input)
        if textual and node.op_type not in text.MOVES | text.OPERATORS:
            raise ModelError(f"{self.where}: {node.op_type} on text is not supported (text "
                             f"is lowered, tokenized and counted: StringNormalizer, Tokenizer, "
                             f"TfIdfVectorizer)")
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        table = ml.HANDLERS if domain == ML_DOMAIN else text.MS_HANDLERS \
            if domain == text.MS_DOMAIN else ops.HANDLERS
        try:
            outs = table[node.op_type](self, node, ins, attrs)
        except ModelError:
            raise
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
            # a node without an attribute or input its operator needs
            raise ModelError(f"{self.where} is malformed ({type(exc).__name__}: {exc}); "
                             f"onnx.checker.check_model(model) says more") from None
        self.op_counts[node.op_type] += 1
        for name, t in zip(node.output, outs, strict=False):
            if name:
                self.values[name] = t
                if stringly and node.op_type in STRING_MOVES:
                    self.strings.add(name)
                if textual and node.op_type in text.MOVES:
                    self.texts[name] = self.texts[node.input[0]]
                if node.input and node.input[0] in self.labelled and \
                        node.op_type in LABEL_MOVES:
                    self.labelled[name] = self.labelled[node.input[0]]

    def _known(self, domain: str, op: str) -> bool:
        return (domain == "" and op in ops.HANDLERS) or (
            domain == ML_DOMAIN and op in ml.HANDLERS) or (
            domain == text.MS_DOMAIN and op in text.MS_HANDLERS)

    def _unsupported(self, domain: str, node: onnx.NodeProto) -> None:
        key = f"{checked.shown(node.op_type)} (domain {checked.shown(domain or 'ai.onnx')}, " \
              f"opset {self.opsets.get(domain, '?')})"
        self.unsupported[key] = self.unsupported.get(key, 0) + 1

    def _fold(self, node: onnx.NodeProto, ins: list[Tensor | None], domain: str) -> bool:
        if node.op_type == "Shape" or node.op_type == "Size":
            return False  # the handler knows shapes of runtime tensors too
        if node.op_type in GROWING and not self._small(node, ins):
            if node.op_type in self.WEIGHT_MAKERS and all(t is not None for t in ins):
                self._check_weight_size(node, ins)  # no kernel: fold it whatever its size
            else:
                return False
        if node.op_type in NEVER_FOLD or any(a.type in (onnx.AttributeProto.GRAPH,
                                                         onnx.AttributeProto.GRAPHS)
                                             for a in node.attribute):
            return False
        from onnx.reference import ReferenceEvaluator

        feeds = {n: t.const for n, t in zip(node.input, ins, strict=False) if n and t is not None}
        try:
            ref = ReferenceEvaluator(node, opsets={k or "": v for k, v in self.opsets.items()})
            results = ref.run(None, feeds)
        except Exception:  # noqa: BLE001 - an evaluator failure: the handler decides
            return False
        for name, value in zip(node.output, results, strict=False):
            if name:
                value = np.asarray(value)
                if value.nbytes > self.prog.max_bytes:
                    raise ModelTooLarge(f"{ops._where(node)}: its constant result is over "
                                        f"the model limit", value.nbytes)
                self.values[name] = self.const_tensor(name, value)
        return True

    # growing operators without a kernel: a constant weight (ResNet-50's and VGG-19's
    # exports make some with ConstantOfShape) is folded up to the model's size limit
    WEIGHT_MAKERS = {"ConstantOfShape", "Range", "OneHot", "EyeLike"}

    def _check_weight_size(self, node: onnx.NodeProto, ins: list[Tensor | None]) -> None:
        count = None
        try:
            if node.op_type == "ConstantOfShape":
                count = int(np.prod([int(d) for d in ins[0].const.reshape(-1)], dtype=object))
            elif node.op_type == "EyeLike":
                count = ins[0].size
        except (TypeError, ValueError, AttributeError):
            return
        if count is not None and count * 8 > self.prog.max_bytes:
            raise ModelTooLarge(f"{ops._where(node)} makes a constant of {count} values, over "
                                f"the model limit of {self.prog.max_bytes} bytes", count * 8)

    def _small(self, node: onnx.NodeProto, ins: list[Tensor | None]) -> bool:
        try:
            # Python integers: reps of [2**62, 4] wrap an int64 product to 0.
            if node.op_type == "ConstantOfShape":
                return pg.volume(ins[0].const.reshape(-1)) <= FOLD_LIMIT
            if node.op_type == "Range":
                start, limit, delta = (float(t.const) for t in ins)
                return delta != 0 and abs((limit - start) / delta) <= FOLD_LIMIT
            if node.op_type == "Expand":
                wanted = [int(d) for d in ins[1].const.reshape(-1)]
                if pg.volume(wanted) > FOLD_LIMIT:
                    return False
                return pg.volume(np.broadcast_shapes(ins[0].shape, tuple(wanted))) <= FOLD_LIMIT
            if node.op_type == "Tile":
                return ins[0].size * pg.volume(ins[1].const.reshape(-1)) <= FOLD_LIMIT
            if node.op_type == "Pad" and len(ins) > 1 and ins[1] is not None:
                pads = [int(p) for p in ins[1].const.reshape(-1)]
                grown = ins[0].size + sum(abs(p) for p in pads) * max(ins[0].shape or (1,))
                return grown <= FOLD_LIMIT
        except (TypeError, ValueError, AttributeError):
            return False
        return False


def _dims_text(dims: list | None) -> str:
    if dims is None:
        return "no shape"
    return "[" + ", ".join(str(d.dim_value) if d.HasField("dim_value") else
                           (d.dim_param or "?") for d in dims) + "]"


def build(data: bytes, max_bytes: int,
          input_shapes: dict[str, tuple[int, ...]] | None = None) -> BuiltModel:
    if len(data) > max_bytes:
        raise ModelTooLarge(f"the model file is {len(data)} bytes, over the limit of "
                            f"{max_bytes}", len(data))
    model = load(data)
    checked.check_tensors(model, max_bytes)  # before anything reads a tensor
    checked.check_names(model)
    if len(model.graph.node) > MAX_NODES:
        raise ModelError(f"the model has {len(model.graph.node)} nodes; at most {MAX_NODES} "
                         f"are supported")
    model, converted = support.convert_opsets(model)
    b = Builder(model, max_bytes, input_shapes)
    support.refuse(*support.unsupported(model.graph, b.opsets, b._known))
    inputs, outputs = b.run()
    for t in inputs + outputs:  # their shapes go into the record and the module's header
        if len(t.shape) > IO_RANK:
            raise ModelError(f"{t.describe()} has {len(t.shape)} dimensions; inputs and "
                             f"outputs may have at most {IO_RANK}")
    k = kernel()
    blob, end = b.prog.pack(k.plan_address, inputs, outputs)
    weights = b.prog.weights_bytes()
    b.prog.consts.clear()  # in the blob now: a big model's weights are held twice, not thrice
    io_bytes = sum(t.size * pg.ESIZE[t.dtype] for t in inputs + outputs)
    wasm = k.pack(blob, end, slack=min(64 << 20, (1 << 20) + 8 * io_bytes))
    del blob

    def info(t: Tensor) -> TensorInfo:
        return TensorInfo(t.name, t.shape, pg.NAMES[t.dtype])

    return BuiltModel(wasm, [info(t) for t in inputs], [info(t) for t in outputs],
                      {(d or "ai.onnx"): v for d, v in b.opsets.items() if v},
                      dict(b.op_counts), weights, end,
                      len(b.prog.instrs), converted)
