"""ONNX operators (the default domain) as kernel instructions.

Each handler gets the builder, the node, its input tensors and attributes, and
returns its output tensors. Shapes are all static here: a handler computes its
output shapes and the integer parameters of its kernel, and refuses with a
ModelError what the kernels cannot do. Fusion is a peephole: Relu after a Conv
or Gemm becomes that instruction's activation, BatchNormalization after a Conv
is folded into its weights, an Add of a bias after MatMul becomes its bias.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx

from wasmq.toolchain.model import program as pg
from wasmq.toolchain.model.errors import ModelError
from wasmq.toolchain.model.program import Instr, Ref, Tensor, f32_bits

Handler = Callable[..., list[Tensor]]
HANDLERS: dict[str, Handler] = {}

# kernels.c enums
E = dict(COPY=0, ADD=1, SUB=2, MUL=3, DIV=4, POW=5, MAX=6, MIN=7, MOD=8, FMOD=9,
         LT=20, GT=21, EQ=22, LE=23, GE=24, AND=25, OR=26, XOR=27, WHERE=30,
         RELU=40, LEAKY=41, SIGMOID=42, TANH=43, EXP=44, LOG=45, SQRT=46, ABS=47, NEG=48,
         CLIP=49, RECIP=50, FLOOR=51, CEIL=52, ERF=53, NOT=54, CAST=55, SOFTPLUS=56,
         HARDSIGMOID=57, ROUND=58, SIGN=59, ELU=60, SELU=61, HARDSWISH=62, SIN=63, COS=64,
         ISNAN=65, ISINF=66, PROBIT=67)
ACT_NONE, ACT_RELU, ACT_LEAKY, ACT_CLIP = 0, 1, 2, 3
R = dict(ReduceSum=0, ReduceMean=1, ReduceMax=2, ReduceMin=3, ReduceProd=4, ReduceL1=5,
         ReduceL2=6, ReduceLogSumExp=7, ReduceSumSquare=8, ReduceLogSum=9)


def registrar(table: dict[str, Handler]) -> Callable[..., Callable[[Handler], Handler]]:
    """A decorator factory: @handler("Add", "Sub") files the function under those names."""
    def handler(*names: str) -> Callable[[Handler], Handler]:
        def register(fn: Handler) -> Handler:
            for name in names:
                table[name] = fn
            return fn
        return register
    return handler


handler = registrar(HANDLERS)


# ---------------------------------------------------------------- shapes and strides
def contiguous(shape: tuple[int, ...]) -> list[int]:
    strides, acc = [], 1
    for d in reversed(shape):
        strides.append(acc)
        acc *= d
    return strides[::-1]


def broadcast_strides(shape: tuple[int, ...], out: tuple[int, ...]) -> list[int]:
    base = contiguous(shape)
    pad = len(out) - len(shape)
    return [0] * pad + [0 if d == 1 and o != 1 else s
                        for d, s, o in zip(shape, base, out[pad:], strict=False)]


def broadcast(node: object, *shapes: tuple[int, ...]) -> tuple[int, ...]:
    try:
        return tuple(int(d) for d in np.broadcast_shapes(*shapes))
    except ValueError:
        raise ModelError(f"{_where(node)}: shapes {' and '.join(map(str, shapes))} do not "
                         f"broadcast") from None


def collapse(dims: list[int], strides: list[list[int]]) -> tuple[list[int], list[list[int]]]:
    """Drop unit dims and merge dims every operand walks contiguously."""
    keep = [i for i, d in enumerate(dims) if d != 1]
    dims = [dims[i] for i in keep]
    strides = [[s[i] for i in keep] for s in strides]
    i = len(dims) - 2
    while i >= 0:
        if all(s[i] == s[i + 1] * dims[i + 1] for s in strides):
            dims[i] *= dims[i + 1]
            del dims[i + 1]
            for s in strides:
                s[i] = s[i + 1]
                del s[i + 1]
        i -= 1
    if not dims:
        return [1], [[0] for _ in strides]
    return dims, strides


def axis_of(node: object, axis: int, rank: int) -> int:
    a = axis + rank if axis < 0 else axis
    if not 0 <= a < max(rank, 1):
        raise ModelError(f"{_where(node)}: axis {axis} is out of range for rank {rank}")
    return a


def _where(node: object) -> str:
    name = getattr(node, "name", "") or (node.output[0] if getattr(node, "output", None) else "")
    return f"{node.op_type} node '{name}'"


def need_const(node: object, t: Tensor | None, what: str) -> np.ndarray:
    if t is None:
        raise ModelError(f"{_where(node)}: {what} is missing")
    if not t.is_const:
        raise ModelError(f"{_where(node)}: {what} must be a constant (it is computed from "
                         f"the model's inputs, which wasmq cannot plan statically)")
    return t.const


def ints(array: np.ndarray) -> list[int]:
    return [int(v) for v in np.asarray(array).reshape(-1)]


# ---------------------------------------------------------------- emitting helpers
def elt(b: object, op: int, views: list[tuple[Tensor, list[int], int]], out: Tensor,
        dims: tuple[int, ...], out_strides: list[int] | None = None, out_extra: int = 0,
        a: float = 0.0, c: float = 0.0) -> Instr:
    """One elementwise instruction: each view is (tensor, strides over dims, byte offset)."""
    prog = b.prog
    if out_strides is None:
        out_strides = contiguous(dims)
    ndims, strides = collapse(list(dims), [list(out_strides)] + [list(s) for _, s, _ in views])
    if len(ndims) > pg.MAX_DIMS:
        raise ModelError(f"{b.where}: the operation needs {len(ndims)} dimensions after "
                         f"merging, more than the kernels' {pg.MAX_DIMS}")
    pad = pg.MAX_DIMS - len(ndims)
    words: list = [op, len(views), out.dtype, len(ndims), f32_bits(a), f32_bits(c),
                   *ndims, *([1] * pad), prog.ref(out, out_extra), *strides[0], *([0] * pad)]
    for i in range(3):
        if i < len(views):
            t, _, extra = views[i]
            words += [b.ref(t, extra), t.dtype, *strides[i + 1], *([0] * pad)]
        else:
            words += [0, 0, *([0] * pg.MAX_DIMS)]
    return prog.emit(pg.OP_ELT, words, "elt")


def elementwise(b: object, op: int, ins: list[Tensor], dtype: int | None = None,
                a: float = 0.0, c: float = 0.0) -> Tensor:
    shape = broadcast(b.node, *[t.shape for t in ins])
    out = b.out(0, shape, ins[0].dtype if dtype is None else dtype)
    instr = elt(b, op, [(t, broadcast_strides(t.shape, shape), 0) for t in ins], out, shape,
                a=a, c=c)
    b.producer(out, instr)
    return out


def elementwise_to(b: object, op: int, x: Tensor, dtype: int) -> Tensor:
    """A fresh runtime tensor: op applied to x, of type dtype (a Cast inside a lowering)."""
    out = b.prog.new(f"{x.name}:{pg.NAMES[dtype]}", x.shape, dtype)
    elt(b, op, [(x, contiguous(x.shape), 0)], out, x.shape)
    return out


def copy_view(b: object, src: Tensor, dims: tuple[int, ...], strides: list[int], extra: int,
              out: Tensor, out_strides: list[int] | None = None, out_extra: int = 0) -> None:
    elt(b, E["COPY"], [(src, strides, extra)], out, dims, out_strides, out_extra)


def materialize(b: object, t: Tensor, shape: tuple[int, ...]) -> Tensor:
    """A contiguous runtime copy of t broadcast to shape."""
    out = b.prog.new(f"{t.name}:expanded", shape, t.dtype)
    copy_view(b, t, shape, broadcast_strides(t.shape, shape), 0, out)
    return out


def need_dtype(b: object, t: Tensor, *allowed: int) -> None:
    if t.dtype not in allowed:
        names = " or ".join(pg.NAMES[d] for d in allowed)
        raise ModelError(f"{b.where}: input {t.describe()} must be {names}")


# ---------------------------------------------------------------- elementwise ops
BINARY = {"Add": "ADD", "Sub": "SUB", "Mul": "MUL", "Div": "DIV", "Pow": "POW"}
COMPARE = {"Less": "LT", "Greater": "GT", "Equal": "EQ", "LessOrEqual": "LE",
           "GreaterOrEqual": "GE", "And": "AND", "Or": "OR", "Xor": "XOR"}


@handler(*BINARY)
def binary(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    x, y = ins[0], ins[1]
    if node.op_type == "Pow":
        if x.dtype != pg.F32:
            raise ModelError(f"{b.where}: Pow on {pg.NAMES[x.dtype]} is not supported "
                             f"(float32 is)")
        if y.dtype != x.dtype and y.is_const:
            y = Tensor(y.name, y.shape, x.dtype, const=y.const.astype(pg.NUMPY[x.dtype]))
        elif y.dtype != x.dtype:
            y = elementwise_to(b, E["CAST"], y, x.dtype)
    if x.dtype != y.dtype:
        raise ModelError(f"{b.where}: inputs {x.describe()} and {y.describe()} differ in type")
    need_dtype(b, x, pg.F32, pg.I64)
    if node.op_type == "Add" and ((fused := b.fuse_bias(x, y)) or
                                  (fused := b.fuse_residual(x, y))):
        return [fused]
    return [elementwise(b, E[BINARY[node.op_type]], [x, y])]


@handler("Mod")
def mod(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    need_dtype(b, ins[0], pg.F32, pg.I64)
    fmod = int(attrs.get("fmod", 0))
    if ins[0].dtype == pg.F32 and not fmod:
        raise ModelError(f"{b.where}: Mod on floats needs fmod=1 (ONNX's rule)")
    return [elementwise(b, E["FMOD" if fmod else "MOD"], ins[:2])]


@handler("Max", "Min", "Sum", "Mean")
def variadic(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    op = {"Max": "MAX", "Min": "MIN", "Sum": "ADD", "Mean": "ADD"}[node.op_type]
    ins = [t for t in ins if t is not None]
    for t in ins:
        need_dtype(b, t, pg.F32, pg.I64)
    acc = ins[0]
    if len(ins) == 1:
        return [b.alias(acc, 0, acc.shape)]
    for i, t in enumerate(ins[1:]):
        last = i == len(ins) - 2 and node.op_type != "Mean"
        shape = broadcast(node, acc.shape, t.shape)
        out = b.out(0, shape, acc.dtype) if last else b.prog.new(f"{b.name}:acc{i}", shape,
                                                                   acc.dtype)
        elt(b, E[op], [(acc, broadcast_strides(acc.shape, shape), 0),
                       (t, broadcast_strides(t.shape, shape), 0)], out, shape)
        acc = out
    if node.op_type == "Mean":
        need_dtype(b, acc, pg.F32)
        out = b.out(0, acc.shape, pg.F32)
        scale = Tensor("mean", (), pg.F32, const=np.array(1.0 / len(ins), np.float32))
        elt(b, E["MUL"], [(acc, contiguous(acc.shape), 0), (scale, [0] * len(acc.shape), 0)],
            out, acc.shape)
        acc = out
    return [acc]


@handler(*COMPARE)
def compare(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    x, y = ins
    if x.dtype != y.dtype:
        raise ModelError(f"{b.where}: inputs {x.describe()} and {y.describe()} differ in type")
    if node.op_type in ("And", "Or", "Xor"):
        need_dtype(b, x, pg.BOOL)
    return [elementwise(b, E[COMPARE[node.op_type]], [x, y], pg.BOOL)]


UNARY = {"Relu": "RELU", "Sigmoid": "SIGMOID", "Tanh": "TANH", "Exp": "EXP", "Log": "LOG",
         "Sqrt": "SQRT", "Abs": "ABS", "Neg": "NEG", "Reciprocal": "RECIP", "Floor": "FLOOR",
         "Ceil": "CEIL", "Erf": "ERF", "Softplus": "SOFTPLUS", "Round": "ROUND", "Sign": "SIGN",
         "HardSwish": "HARDSWISH", "LeakyRelu": "LEAKY", "HardSigmoid": "HARDSIGMOID",
         "Elu": "ELU", "Selu": "SELU"}
INT_UNARY = {"Abs", "Neg", "Relu", "Sign"}


@handler(*UNARY)
def unary(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    x = ins[0]
    if node.op_type in INT_UNARY:
        need_dtype(b, x, pg.F32, pg.I64)
    else:
        need_dtype(b, x, pg.F32)
    a = c = 0.0
    if node.op_type == "LeakyRelu":
        a = float(attrs.get("alpha", 0.01))
    elif node.op_type == "HardSigmoid":
        a, c = float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5))
    elif node.op_type == "Elu":
        a = float(attrs.get("alpha", 1.0))
    elif node.op_type == "Selu":
        a = float(attrs.get("alpha", 1.6732632423543772))
        c = float(attrs.get("gamma", 1.0507009873554805))
    if x.dtype == pg.F32 and node.op_type in ("Relu", "LeakyRelu"):
        act = ACT_RELU if node.op_type == "Relu" else ACT_LEAKY
        if (fused := b.fuse_act(x, act, a, 0.0)) is not None:
            return [fused]
    return [elementwise(b, E[UNARY[node.op_type]], [x], a=a, c=c)]


@handler("Clip")
def clip(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    x = ins[0]
    need_dtype(b, x, pg.F32)
    if b.opset < 11:
        lo, hi = float(attrs.get("min", -np.inf)), float(attrs.get("max", np.inf))
    else:
        lo = float(need_const(node, ins[1], "min")) if len(ins) > 1 and ins[1] else -np.inf
        hi = float(need_const(node, ins[2], "max")) if len(ins) > 2 and ins[2] else np.inf
    lo, hi = max(lo, -3.4028234663852886e38), min(hi, 3.4028234663852886e38)
    lo = min(lo, hi)  # min over max: every value is max (ONNX's rule)
    if (fused := b.fuse_act(x, ACT_CLIP, lo, hi)) is not None:
        return [fused]
    return [elementwise(b, E["CLIP"], [x], a=lo, c=hi)]


@handler("Not")
def not_(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    need_dtype(b, ins[0], pg.BOOL)
    return [elementwise(b, E["NOT"], ins[:1], pg.BOOL)]


@handler("IsNaN", "IsInf")
def isnan(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    need_dtype(b, ins[0], pg.F32)
    if node.op_type == "IsInf" and (not attrs.get("detect_negative", 1)
                                    or not attrs.get("detect_positive", 1)):
        raise ModelError(f"{b.where}: IsInf detecting one sign only is not supported")
    return [elementwise(b, E["ISNAN" if node.op_type == "IsNaN" else "ISINF"], ins[:1], pg.BOOL)]


@handler("Where")
def where(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    cond, x, y = ins
    need_dtype(b, cond, pg.BOOL)
    if x.dtype != y.dtype:
        raise ModelError(f"{b.where}: X and Y differ in type")
    shape = broadcast(node, cond.shape, x.shape, y.shape)
    out = b.out(0, shape, x.dtype)
    elt(b, E["WHERE"], [(t, broadcast_strides(t.shape, shape), 0) for t in (cond, x, y)],
        out, shape)
    return [out]


ONNX_TYPES = {1: pg.F32, 7: pg.I64, 9: pg.BOOL}


@handler("CastLike")
def cast_like(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    """Cast to the second input's type (what version_converter writes for newer Casts)."""
    like = ins[1]
    to = {pg.F32: 1, pg.I64: 7, pg.BOOL: 9, pg.F64: 11}[like.dtype]
    if like.is_const and like.const.dtype.kind == "f":
        to = 11 if like.const.dtype == np.float64 else 1
    return cast(b, node, ins[:1], {**attrs, "to": to})


# Cast to these: there and back, so values wrap (integers) or round (float16) as in them
NARROW = {3: pg.I8, 2: pg.U8, 5: pg.I16, 4: pg.U16, 6: pg.I32, 12: pg.U32, 10: pg.F16}


@handler("Cast")
def cast(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    to = int(attrs["to"])
    if to == 11:  # double: computed in float32, the only float type the kernels have
        to = 1
    x = ins[0]
    if to == 8 and node.input[0] in b.labelled:  # class labels' indices, written as strings
        return [b.alias(x, 0, x.shape)]
    if to in NARROW:
        narrow = elementwise_to(b, E["CAST"], x, NARROW[to])
        computed = pg.COMPUTED[NARROW[to]]
        return [elementwise(b, E["CAST"], [narrow], computed)]
    if to not in ONNX_TYPES:
        name = onnx.TensorProto.DataType.Name(to) if to in \
            onnx.TensorProto.DataType.values() else str(to)
        raise ModelError(f"{b.where}: Cast to {name} is not supported (float32, float64, "
                         f"float16, bool and integers of up to 32 bits and int64 are)")
    if x.dtype == ONNX_TYPES[to]:
        return [b.alias(x, 0, x.shape)]
    return [elementwise(b, E["CAST"], [x], ONNX_TYPES[to])]


# ---------------------------------------------------------------- shape-only ops
@handler("Identity", "Dropout")
def identity(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    if node.op_type == "Dropout" and len(node.output) > 1 and node.output[1]:
        if b.used(node.output[1]):
            raise ModelError(f"{b.where}: Dropout's mask output is not supported")
    if node.op_type == "Dropout" and len(ins) > 2 and ins[2] is not None and (
            not ins[2].is_const or bool(ins[2].const.reshape(-1)[0])):
        raise ModelError(f"{b.where}: Dropout in training mode is not supported (export the "
                         f"model in eval mode)")
    return [b.alias(ins[0], 0, ins[0].shape)]


@handler("Reshape")
def reshape(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    x = ins[0]
    shape = ints(attrs["shape"]) if b.opset < 5 else ints(need_const(node, ins[1], "shape"))
    allowzero = int(attrs.get("allowzero", 0))
    out = []
    for i, d in enumerate(shape):
        out.append(x.shape[i] if d == 0 and not allowzero and i < len(x.shape) else d)
    if out.count(-1) > 1:
        raise ModelError(f"{b.where}: more than one -1 in shape {shape}")
    if -1 in out:
        known = int(np.prod([d for d in out if d != -1], dtype=np.int64))
        if known == 0 or x.size % known:
            raise ModelError(f"{b.where}: cannot reshape {x.shape} to {shape}")
        out[out.index(-1)] = x.size // known
    if int(np.prod(out, dtype=np.int64)) != x.size:
        raise ModelError(f"{b.where}: cannot reshape {x.shape} ({x.size} values) to {out}")
    return [b.alias(x, 0, tuple(out))]


@handler("Flatten")
def flatten(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    x = ins[0]
    axis = int(attrs.get("axis", 1))
    axis = axis + len(x.shape) if axis < 0 else axis
    outer = int(np.prod(x.shape[:axis], dtype=np.int64))
    return [b.alias(x, 0, (outer, x.size // max(outer, 1) if outer else 0))]


def _axes(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[int] | None:
    if "axes" in attrs:
        return ints(attrs["axes"])
    if len(ins) > 1 and ins[1] is not None:
        return ints(need_const(node, ins[1], "axes"))
    return None


@handler("Squeeze")
def squeeze(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    x = ins[0]
    axes = _axes(b, node, ins, attrs)
    rank = len(x.shape)
    if axes is None:
        shape = tuple(d for d in x.shape if d != 1)
    else:
        axes = {axis_of(node, a, rank) for a in axes}
        if any(x.shape[a] != 1 for a in axes):
            raise ModelError(f"{b.where}: cannot squeeze axes {sorted(axes)} of {x.shape}")
        shape = tuple(d for i, d in enumerate(x.shape) if i not in axes)
    return [b.alias(x, 0, shape)]


@handler("Unsqueeze")
def unsqueeze(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    x = ins[0]
    axes = _axes(b, node, ins, attrs) or []
    rank = len(x.shape) + len(axes)
    axes = sorted(axis_of(node, a, rank) for a in axes)
    shape = list(x.shape)
    for a in axes:
        shape.insert(a, 1)
    return [b.alias(x, 0, tuple(shape))]


@handler("Transpose")
def transpose(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    x = ins[0]
    perm = ints(attrs["perm"]) if "perm" in attrs else list(range(len(x.shape)))[::-1]
    strides = contiguous(x.shape)
    shape = tuple(x.shape[p] for p in perm)
    out = b.out(0, shape, x.dtype)
    copy_view(b, x, shape, [strides[p] for p in perm], 0, out)
    return [out]


@handler("Expand")
def expand(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    x = ins[0]
    shape = broadcast(node, x.shape, tuple(ints(need_const(node, ins[1], "shape"))))
    out = b.out(0, shape, x.dtype)
    copy_view(b, x, shape, broadcast_strides(x.shape, shape), 0, out)
    return [out]


@handler("Tile")
def tile(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    x = ins[0]
    reps = ints(need_const(node, ins[1], "repeats"))
    shape = tuple(d * r for d, r in zip(x.shape, reps, strict=False))
    if len(x.shape) > pg.MAX_DIMS // 2:  # one axis at a time: rank + 1 dims each
        for axis, r in enumerate(reps):
            if r == 1 and axis < len(reps) - 1:
                continue
            grown = tuple(d * (r if i == axis else 1) for i, d in enumerate(x.shape))
            last = grown == shape and all(q == 1 for q in reps[axis + 1:])
            t = b.out(0, grown, x.dtype) if last else b.prog.new(f"{b.name}:tile{axis}",
                                                                   grown, x.dtype)
            xs, os_ = contiguous(x.shape), contiguous(grown)
            dims = (*x.shape[:axis], r, *x.shape[axis:])
            strides = [*xs[:axis], 0, *xs[axis:]]
            ostr = [*os_[:axis], os_[axis] * x.shape[axis], *os_[axis:]]
            copy_view(b, x, dims, strides, 0, t, ostr)
            x = t
            if last:
                break
        return [x]
    out = b.out(0, shape, x.dtype)
    dims, strides, ostr = [], [], []
    xs, os_ = contiguous(x.shape), contiguous(shape)
    for d, r, s, o in zip(x.shape, reps, xs, os_, strict=False):
        dims += [r, d]
        strides += [0, s]
        ostr += [o * d, o]
    copy_view(b, x, tuple(dims), strides, 0, out, ostr)
    return [out]


@handler("Concat")
def concat(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    ins = [t for t in ins if t is not None and t.size > 0]
    rank = len(ins[0].shape)
    axis = axis_of(node, int(attrs.get("axis", 0)), rank)
    shape = list(ins[0].shape)
    shape[axis] = sum(t.shape[axis] for t in ins)
    shape = tuple(shape)
    out = b.out(0, shape, ins[0].dtype)
    ostr = contiguous(shape)
    at = 0
    for t in ins:
        if t.dtype != out.dtype or len(t.shape) != rank:
            raise ModelError(f"{b.where}: inputs differ in type or rank")
        offset = at * ostr[axis] * pg.ESIZE[out.dtype]
        if not b.in_place(t, out, offset, whole=math.prod(shape[:axis]) == 1):
            copy_view(b, t, t.shape, contiguous(t.shape), 0, out, ostr, offset)
        at += t.shape[axis]
    return [out]


def _slice_ranges(x: Tensor, starts: list[int], ends: list[int], axes: list[int],
                  steps: list[int], node: object) -> tuple[tuple[int, ...], list[int], int]:
    rank = len(x.shape)
    begin = [0] * rank
    step = [1] * rank
    count = list(x.shape)
    for s, e, a, st in zip(starts, ends, axes, steps, strict=False):
        a = axis_of(node, a, rank)
        if st == 0:
            raise ModelError(f"{_where(node)}: a step of 0")
        r = range(*slice(s, e, st).indices(x.shape[a]))
        begin[a], step[a], count[a] = r.start, st, len(r)
    base = contiguous(x.shape)
    extra = sum(bg * s for bg, s in zip(begin, base, strict=False)) * pg.ESIZE[x.dtype]
    return tuple(count), [s * st for s, st in zip(base, step, strict=False)], extra


@handler("Slice")
def slice_(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    x = ins[0]
    if b.opset < 10:
        starts, ends = ints(attrs["starts"]), ints(attrs["ends"])
        axes = ints(attrs["axes"]) if "axes" in attrs else list(range(len(starts)))
        steps = [1] * len(starts)
    else:
        starts = ints(need_const(node, ins[1], "starts"))
        ends = ints(need_const(node, ins[2], "ends"))
        axes = ints(need_const(node, ins[3], "axes")) if len(ins) > 3 and ins[3] \
            else list(range(len(starts)))
        steps = ints(need_const(node, ins[4], "steps")) if len(ins) > 4 and ins[4] \
            else [1] * len(starts)
    shape, strides, extra = _slice_ranges(x, starts, ends, axes, steps, node)
    if 0 in shape:
        raise ModelError(f"{b.where}: the slice is empty")
    out = b.out(0, shape, x.dtype)
    copy_view(b, x, shape, strides, extra, out)
    return [out]


@handler("Split")
def split(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    x = ins[0]
    axis = axis_of(node, int(attrs.get("axis", 0)), len(x.shape))
    n = len(node.output)
    if "split" in attrs:
        sizes = ints(attrs["split"])
    elif len(ins) > 1 and ins[1] is not None:
        sizes = ints(need_const(node, ins[1], "split"))
    else:
        per = -(-x.shape[axis] // n)
        sizes = [min(per, x.shape[axis] - i * per) for i in range(n)]
    outs, at = [], 0
    for i, size in enumerate(sizes):
        shape, strides, extra = _slice_ranges(x, [at], [at + size], [axis], [1], node)
        out = b.out(i, shape, x.dtype)
        copy_view(b, x, shape, strides, extra, out)
        outs.append(out)
        at += size
    return outs


@handler("Pad")
def pad(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    x = ins[0]
    mode = attrs.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode not in ("constant", "edge", "reflect", "wrap"):
        raise ModelError(f"{b.where}: Pad mode '{mode}' is not supported (constant, edge, "
                         f"reflect and wrap are)")
    rank = len(x.shape)
    if b.opset < 11:
        pads, value = ints(attrs["pads"]), float(attrs.get("value", 0.0))
    else:
        pads = ints(need_const(node, ins[1], "pads"))
        value = float(need_const(node, ins[2], "constant_value").reshape(-1)[0]) \
            if len(ins) > 2 and ins[2] is not None else 0.0
        if len(ins) > 3 and ins[3] is not None:
            axes = [axis_of(node, a, rank) for a in ints(need_const(node, ins[3], "axes"))]
            full = [0] * (2 * rank)
            for i, a in enumerate(axes):
                full[a], full[a + rank] = pads[i], pads[i + len(axes)]
            pads = full
    before, after = pads[:rank], pads[rank:]
    shape = tuple(d + p + q for d, p, q in zip(x.shape, before, after, strict=False))
    out = b.out(0, shape, x.dtype)
    fill(b, out, value)
    # negative pads crop the input
    starts = [max(0, -p) for p in before]
    ends = [d - max(0, -q) for d, q in zip(x.shape, after, strict=False)]
    src_shape, src_strides, extra = _slice_ranges(x, starts, ends, list(range(rank)),
                                                  [1] * rank, node)
    ostr = contiguous(shape)
    at = sum(max(0, p) * s for p, s in zip(before, ostr, strict=False)) * pg.ESIZE[x.dtype]
    if 0 not in src_shape:
        copy_view(b, x, src_shape, src_strides, extra, out, ostr, at)
    if mode != "constant":
        if min(pads) < 0:
            raise ModelError(f"{b.where}: negative pads with mode '{mode}' are not supported")
        from wasmq.toolchain.model.ops_composed import pad_borders

        pad_borders(b, out, x.shape, before, after, mode)
    return [out]


def fill(b: object, out: Tensor, value: float) -> None:
    raw = np.array(value, dtype=pg.NUMPY[out.dtype]).tobytes()
    raw = raw + b"\0" * (8 - len(raw))
    b.prog.emit(pg.OP_FILL, [out.size, pg.ESIZE[out.dtype], b.prog.ref(out),
                            *np.frombuffer(raw, np.int32).tolist()])


@handler("Gather")
def gather(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    data, idx = ins
    axis = axis_of(node, int(attrs.get("axis", 0)), len(data.shape))
    if idx.is_const:
        idx = Tensor(idx.name, idx.shape, pg.I64, const=idx.const.astype(np.int64))
    need_dtype(b, idx, pg.I64)
    shape = data.shape[:axis] + idx.shape + data.shape[axis + 1:]
    out = b.out(0, shape, data.dtype)
    outer = int(np.prod(data.shape[:axis], dtype=np.int64))
    inner = int(np.prod(data.shape[axis + 1:], dtype=np.int64))
    b.prog.emit(pg.OP_GATHER, [outer, data.shape[axis], inner, idx.size, pg.ESIZE[data.dtype],
                              b.ref(data), b.ref(idx), b.prog.ref(out)])
    return [out]


# ---------------------------------------------------------------- reductions
def _reduce_layout(b: object, x: Tensor, axes: list[int]) -> tuple[Tensor, int, int, int]:
    """(tensor, outer, r, inner): transposed first when the axes are not adjacent."""
    rank = len(x.shape)
    axes = sorted(set(axes))
    if not axes:
        return x, x.size, 1, 1
    if axes == list(range(axes[0], axes[-1] + 1)):
        outer = int(np.prod(x.shape[:axes[0]], dtype=np.int64))
        r = int(np.prod(x.shape[axes[0]:axes[-1] + 1], dtype=np.int64))
        inner = int(np.prod(x.shape[axes[-1] + 1:], dtype=np.int64))
        return x, outer, r, inner
    perm = [i for i in range(rank) if i not in axes] + axes
    shape = tuple(x.shape[p] for p in perm)
    t = b.prog.new(f"{x.name}:T", shape, x.dtype)
    strides = contiguous(x.shape)
    copy_view(b, x, shape, [strides[p] for p in perm], 0, t)
    r = int(np.prod([x.shape[a] for a in axes], dtype=np.int64))
    return t, x.size // max(r, 1), r, 1


@handler(*R)
def reduce(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    x = ins[0]
    need_dtype(b, x, pg.F32, pg.I64)
    rank = len(x.shape)
    axes = _axes(b, node, ins, attrs)
    keep = int(attrs.get("keepdims", 1))
    if axes is None or axes == []:
        if int(attrs.get("noop_with_empty_axes", 0)):
            return [b.alias(x, 0, x.shape)]
        axes = list(range(rank))
    axes = [axis_of(node, a, rank) for a in axes]
    shape = tuple((1 if keep else None) if i in axes else d for i, d in enumerate(x.shape))
    shape = tuple(d for d in shape if d is not None)
    src, outer, r, inner = _reduce_layout(b, x, axes)
    out = b.out(0, shape, x.dtype)
    if x.dtype == pg.I64 and node.op_type not in ("ReduceSum", "ReduceMax", "ReduceMin",
                                                 "ReduceProd", "ReduceMean"):
        raise ModelError(f"{b.where}: {node.op_type} is supported on float32 only")
    b.prog.emit(pg.OP_REDUCE, [outer, r, inner, R[node.op_type], x.dtype, b.ref(src),
                              b.prog.ref(out)])
    return [out]


@handler("ArgMax", "ArgMin")
def argmax(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    x = ins[0]
    rank = len(x.shape)
    axis = axis_of(node, int(attrs.get("axis", 0)), rank)
    keep = int(attrs.get("keepdims", 1))
    shape = tuple(x.shape[:axis]) + ((1,) if keep else ()) + tuple(x.shape[axis + 1:])
    out = b.out(0, shape, pg.I64)
    emit_arg(b, x, axis, out, node.op_type == "ArgMin", int(attrs.get("select_last_index", 0)))
    return [out]


def emit_arg(b: object, x: Tensor, axis: int, out: Tensor, is_min: bool = False,
             last: int = 0) -> None:
    outer = int(np.prod(x.shape[:axis], dtype=np.int64))
    inner = int(np.prod(x.shape[axis + 1:], dtype=np.int64))
    b.prog.emit(pg.OP_ARG, [outer, x.shape[axis], inner, int(is_min), last, x.dtype, b.ref(x),
                           b.prog.ref(out)])


@handler("Softmax", "LogSoftmax")
def softmax(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    x = ins[0]
    need_dtype(b, x, pg.F32)
    rank = len(x.shape)
    if b.opset < 13:
        axis = axis_of(node, int(attrs.get("axis", 1)), rank)
        outer = int(np.prod(x.shape[:axis], dtype=np.int64))
        n, inner = x.size // max(outer, 1), 1
    else:
        axis = axis_of(node, int(attrs.get("axis", -1)), rank)
        outer = int(np.prod(x.shape[:axis], dtype=np.int64))
        n, inner = x.shape[axis], int(np.prod(x.shape[axis + 1:], dtype=np.int64))
    out = b.out(0, x.shape, pg.F32)
    emit_softmax(b, x, out, outer, n, inner, node.op_type == "LogSoftmax")
    return [out]


def emit_softmax(b: object, x: Tensor, out: Tensor, outer: int, n: int, inner: int,
                 log: bool = False) -> None:
    b.prog.emit(pg.OP_SOFTMAX, [outer, n, inner, int(log), b.ref(x), b.prog.ref(out)])


# ---------------------------------------------------------------- linear algebra
def emit_gemm(b: object, a: Tensor, a_strides: tuple[int, int], bmat: Tensor, out: Tensor,
              m: int, n: int, k: int, batch: int = 1, batch_strides: tuple[int, int, int] =
              (0, 0, 0), alpha: float = 1.0, bias: Tensor | None = None,
              bias_strides: tuple[int, int] = (0, 0), beta: float = 1.0) -> Instr:
    """out[m][n] = alpha * a[m][k] b[k][n] + beta * bias; b's rows contiguous."""
    words = [batch, m, n, k, b.ref(a), a_strides[0], a_strides[1], batch_strides[0],
             b.ref(bmat), n, batch_strides[1], b.prog.ref(out), batch_strides[2],
             b.ref(bias) if bias is not None else 0, bias_strides[0], bias_strides[1],
             f32_bits(alpha), f32_bits(beta), ACT_NONE, 0, 0, 0]
    instr = b.prog.emit(pg.OP_GEMM, words, "gemm", has_bias=bias is not None, act=0)
    b.producer(out, instr)
    return instr


def _bias_strides(c: Tensor, m: int, n: int, node: object) -> tuple[int, int]:
    shape = (1,) * (2 - len(c.shape)) + tuple(c.shape) if len(c.shape) < 2 else c.shape
    if len(shape) != 2 or shape[0] not in (1, m) or shape[1] not in (1, n):
        raise ModelError(f"{_where(node)}: C of shape {c.shape} does not broadcast to "
                         f"({m}, {n})")
    return (0 if shape[0] == 1 else shape[1], 0 if shape[1] == 1 else 1)


@handler("Gemm")
def gemm(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    a, bm = ins[0], ins[1]
    c = ins[2] if len(ins) > 2 else None
    need_dtype(b, a, pg.F32)
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    ta, tb = int(attrs.get("transA", 0)), int(attrs.get("transB", 0))
    m, k = (a.shape[1], a.shape[0]) if ta else a.shape
    kb, n = (bm.shape[1], bm.shape[0]) if tb else bm.shape
    if k != kb:
        raise ModelError(f"{b.where}: A {a.shape} and B {bm.shape} do not multiply")
    a_strides = (1, a.shape[1]) if ta else (a.shape[1], 1)
    if bm.is_const:
        w = bm.const.T if tb else bm.const
        bm = Tensor(bm.name, (k, n), pg.F32, const=np.ascontiguousarray(w * alpha, np.float32))
        alpha = 1.0
    elif tb:
        t = b.prog.new(f"{bm.name}:T", (k, n), pg.F32)
        copy_view(b, bm, (k, n), [1, k], 0, t)
        bm = t
    out = b.out(0, (m, n), pg.F32)
    bias_strides = _bias_strides(c, m, n, node) if c is not None else (0, 0)
    emit_gemm(b, a, a_strides, bm, out, m, n, k, alpha=alpha, bias=c,
              bias_strides=bias_strides, beta=beta)
    return [out]


@handler("MatMul")
def matmul(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    a, bm = ins
    need_dtype(b, a, pg.F32)
    need_dtype(b, bm, pg.F32)
    a_shape = (1,) + a.shape if len(a.shape) == 1 else a.shape
    b_shape = bm.shape + (1,) if len(bm.shape) == 1 else bm.shape
    m, k = a_shape[-2:]
    kb, n = b_shape[-2:]
    if k != kb:
        raise ModelError(f"{b.where}: shapes {a.shape} and {bm.shape} do not multiply")
    batch = broadcast(node, a_shape[:-2], b_shape[:-2])
    out_shape = batch + (m, n)
    final = batch + ((m,) if len(a.shape) > 1 else ()) + ((n,) if len(bm.shape) > 1 else ())
    out = b.out(0, final, pg.F32)
    nb = int(np.prod(batch, dtype=np.int64))
    if len(b_shape) == 2:  # one matrix: A's batch folds into its rows
        a_full = a if a_shape[:-2] == batch else materialize(b, a, batch + (m, k))
        mm = nb * m
        bt = bm
        if bm.is_const:
            bt = Tensor(bm.name, (k, n), pg.F32, const=bm.const.reshape(k, n))
        emit_gemm(b, a_full, (k, 1), bt, out, mm, n, k)
        return [out]
    a_full = a if a_shape[:-2] == batch else materialize(b, a, batch + (m, k))
    b_full = bm if b_shape[:-2] == batch else materialize(b, bm, batch + (k, n))
    emit_gemm(b, a_full, (k, 1), b_full, out, m, n, k, batch=nb,
              batch_strides=(m * k, k * n, m * n))
    del out_shape
    return [out]


# ---------------------------------------------------------------- convolution and pooling
def _pads(node: object, attrs: dict, spatial: tuple[int, ...], kernel: list[int],
          strides: list[int], dil: list[int], ceil: bool = False) -> tuple[list[int], list[int]]:
    """Begin and end pads, auto_pad resolved."""
    rank = len(spatial)
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for d, k, s, dl in zip(spatial, kernel, strides, dil, strict=False):
            out = -(-d // s)
            total = max(0, (out - 1) * s + (k - 1) * dl + 1 - d)
            small, big = total // 2, total - total // 2
            begin.append(small if auto == "SAME_UPPER" else big)
            end.append(big if auto == "SAME_UPPER" else small)
        return begin, end
    if auto == "VALID":
        return [0] * rank, [0] * rank
    pads = ints(attrs.get("pads", [0] * (2 * rank)))
    return pads[:rank], pads[rank:]


def _spatial_attrs(node: object, attrs: dict, x: Tensor, kernel: list[int],
                   ceil: bool = False) -> tuple:
    spatial = x.shape[2:]
    rank = len(spatial)
    if rank not in (1, 2):
        raise ModelError(f"{_where(node)}: {rank}-d spatial inputs are not supported "
                         f"(1-d and 2-d are)")
    strides = ints(attrs.get("strides", [1] * rank))
    dil = ints(attrs.get("dilations", [1] * rank))
    begin, end = _pads(node, attrs, spatial, kernel, strides, dil)
    outs = []
    for d, k, s, dl, p, q in zip(spatial, kernel, strides, dil, begin, end, strict=False):
        span = d + p + q - dl * (k - 1) - 1
        o = (-(-span // s) if ceil else span // s) + 1
        if ceil and (o - 1) * s >= d + p:
            o -= 1
        if o <= 0:
            raise ModelError(f"{_where(node)}: the kernel does not fit the input {x.shape}")
        outs.append(o)
    if rank == 1:  # as 2-d with a height of 1
        return ([1, *spatial], [1, *kernel], [1, *strides], [1, *dil], [0, *begin], [0, *end],
                [1, *outs], outs)
    return list(spatial), kernel, strides, dil, begin, end, outs, outs


def pack_conv_weights(w: np.ndarray, groups: int) -> np.ndarray:
    """[M, C/G, KH, KW] to per-group blocks of 4 output channels: [G][M/G/4][K][4]."""
    m = w.shape[0]
    mg = m // groups
    mg4 = (mg + 3) // 4 * 4
    k = int(np.prod(w.shape[1:]))
    wg = w.reshape(groups, mg, k)
    padded = np.zeros((groups, mg4, k), np.float32)
    padded[:, :mg] = wg
    return np.ascontiguousarray(padded.reshape(groups, mg4 // 4, 4, k).transpose(0, 1, 3, 2))


# Winograd F(2x2, 3x3): the filter transform G g G^T, done here in double
WINOGRAD_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
# Below this many input channels the transforms cost more than the multiply-adds saved.
WINOGRAD_MIN_CHANNELS = 4


def pack_winograd_weights(w: np.ndarray) -> np.ndarray:
    """[M, C, 3, 3] to each transform position's GEMM operand: [16][M/4][C][4]."""
    m, c = w.shape[:2]
    m4 = (m + 3) // 4 * 4
    u = np.einsum("ai,mcij,bj->abmc", WINOGRAD_G, w.astype(np.float64), WINOGRAD_G)
    padded = np.zeros((16, m4, c))
    padded[:, :m] = u.reshape(16, m, c)
    return np.ascontiguousarray(
        padded.reshape(16, m4 // 4, 4, c).transpose(0, 1, 3, 2).astype(np.float32))


def pack_conv(w: np.ndarray, groups: int, winograd: bool) -> np.ndarray:
    return pack_winograd_weights(w) if winograd else pack_conv_weights(w, groups)


@handler("Conv")
def conv(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    x = ins[0]
    need_dtype(b, x, pg.F32)
    if len(x.shape) == 5:
        from wasmq.toolchain.model.ops_composed import conv_3d

        return conv_3d(b, node, ins, attrs)
    w = need_const(node, ins[1], "the weight W").astype(np.float32)
    bias = need_const(node, ins[2], "the bias B").astype(np.float32) \
        if len(ins) > 2 and ins[2] is not None else np.zeros(w.shape[0], np.float32)
    groups = int(attrs.get("group", 1))
    n, c = x.shape[:2]
    m = w.shape[0]
    if c != w.shape[1] * groups or m % groups:
        raise ModelError(f"{b.where}: input {x.shape} with group={groups} does not match "
                         f"weights {w.shape}")
    kernel = list(w.shape[2:])
    (hw, kk, st, dl, begin, end, ohw, outs) = _spatial_attrs(node, attrs, x, kernel)
    out = b.out(0, (n, m, *outs), pg.F32)
    kg = (c // groups) * kk[0] * kk[1]
    winograd = (kk == [3, 3] and st == [1, 1] and dl == [1, 1] and groups == 1
                and c >= WINOGRAD_MIN_CHANNELS)
    inline_pad = False
    if winograd:
        # 2x2 output tiles, four side by side in a vector and a block a multiple of 8
        th, tw4 = -(-ohw[0] // 2), -(-ohw[1] // 8) * 4
        th += (th * tw4) % 8 // 4
        hp, wp = 2 * th + 2, 2 * tw4 + 2
        tb = max(8, min(th * tw4, 4096 // (c + m) // 8 * 8))
        padded = b.prog.scratch(c * hp * wp * 4)
        v, prods = b.prog.scratch(16 * c * tb * 4), b.prog.scratch(16 * m * tb * 4)
        col, chunk = None, 0
        extra = [1, b.prog.ref(v), b.prog.ref(prods), tb, tw4, th]
    else:
        # with padding, the kernel first copies the input into a zeroed, padded buffer
        hp = max(hw[0] + begin[0], (ohw[0] - 1) * st[0] + (kk[0] - 1) * dl[0] + 1)
        wp = max(hw[1] + begin[1], (ohw[1] - 1) * st[1] + (kk[1] - 1) * dl[1] + 1)
        pads = any(begin) or hp > hw[0] or wp > hw[1]
        # Read inline (kernels.c, conv_columns_inline_pad) where the kernel can, rows of 8
        # output columns at strides 1 and 2 (a stem's): no padded copy to fault in.
        inline_pad = pads and ohw[1] % 8 == 0 and st[1] in (1, 2) and \
            not (groups == c == m)
        padded = b.prog.scratch((c // groups) * hp * wp * 4) if pads and not inline_pad \
            else None
        # the column matrix, panel-packed for the GEMM, built a chunk of columns at a time
        # (a multiple of 8, about 32 KB of columns: it stays in cache and touches few pages)
        cols = ohw[0] * ohw[1]
        chunk = min((cols + 7) // 8 * 8, max(8, (8192 // kg) // 8 * 8))
        col = b.prog.scratch(kg * chunk * 4 + kg * 12)  # and each tap's offsets
        extra = [0, 0, 0, 0, 0, 0]
    wi = b.prog.constant(pack_conv(w, groups, winograd))
    bi = b.prog.constant(bias)
    words = [n, c, hw[0], hw[1], m, kk[0], kk[1], ohw[0], ohw[1], st[0], st[1], begin[0],
             begin[1], dl[0], dl[1], groups, b.ref(x), Ref(const=wi), Ref(const=bi),
             b.prog.ref(out), ACT_NONE, 0, 0, b.prog.ref(col) if col is not None else 0,
             b.prog.ref(padded) if padded is not None else 0, hp, wp, chunk, *extra,
             0,  # the residual (planner.fuse_residual)
             int(not winograd and inline_pad)]
    depthwise = groups == c == m
    instr = b.prog.emit(pg.OP_CONV, words, "conv", w=w, bias=bias, wi=wi, bi=bi, groups=groups,
                        act=0, winograd=winograd, depthwise=depthwise, residual=False)
    b.producer(out, instr)
    return [out]


@handler("BatchNormalization")
def batchnorm(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    x = ins[0]
    need_dtype(b, x, pg.F32)
    for extra in node.output[1:]:
        if extra and b.used(extra):
            raise ModelError(f"{b.where}: training-mode outputs are not supported")
    scale, shift, mean, var = (need_const(node, t, what).astype(np.float64) for t, what in
                               zip(ins[1:5], ("scale", "B", "mean", "var"), strict=False))
    eps = float(attrs.get("epsilon", 1e-5))
    s = scale / np.sqrt(var + eps)
    t = shift - mean * s
    if (fused := b.fuse_batchnorm(x, s, t)) is not None:
        return [fused]
    shape = (x.shape[1],) + (1,) * (len(x.shape) - 2)
    mid = b.prog.new(f"{b.name}:scaled", x.shape, pg.F32)
    sc = Tensor("scale", shape, pg.F32, const=s.astype(np.float32).reshape(shape))
    sh = Tensor("shift", shape, pg.F32, const=t.astype(np.float32).reshape(shape))
    elt(b, E["MUL"], [(x, contiguous(x.shape), 0), (sc, broadcast_strides(shape, x.shape), 0)],
        mid, x.shape)
    out = b.out(0, x.shape, pg.F32)
    elt(b, E["ADD"], [(mid, contiguous(x.shape), 0), (sh, broadcast_strides(shape, x.shape), 0)],
        out, x.shape)
    return [out]


@handler("MaxPool", "AveragePool", "LpPool")
def pool(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    x = ins[0]
    need_dtype(b, x, pg.F32)
    if node.op_type == "LpPool":
        raise ModelError(f"{b.where}: LpPool is not supported")
    if len(x.shape) == 5:
        from wasmq.toolchain.model.ops_composed import pool_3d

        return pool_3d(b, node, ins, attrs)
    if len(node.output) > 1 and node.output[1] and b.used(node.output[1]):
        raise ModelError(f"{b.where}: MaxPool's Indices output is not supported")
    kernel = ints(attrs["kernel_shape"])
    ceil = bool(int(attrs.get("ceil_mode", 0)))
    (hw, kk, st, dl, begin, end, ohw, outs) = _spatial_attrs(node, attrs, x, kernel, ceil)
    out = b.out(0, x.shape[:2] + tuple(outs), pg.F32)
    emit_pool(b, x, out, hw, ohw, kk, st, begin, end, dl, node.op_type == "MaxPool",
              int(attrs.get("count_include_pad", 0)))
    return [out]


def emit_pool(b: object, x: Tensor, out: Tensor, hw: list[int], ohw: list[int],
              kk: list[int], st: list[int], begin: list[int], end: list[int], dl: list[int],
              is_max: bool, include_pad: int) -> None:
    planes = x.shape[0] * x.shape[1]
    b.prog.emit(pg.OP_POOL, [planes, hw[0], hw[1], ohw[0], ohw[1], kk[0], kk[1], st[0], st[1],
                            begin[0], begin[1], end[0], end[1], dl[0], dl[1],
                            0 if is_max else 1, include_pad, b.ref(x), b.prog.ref(out)])


@handler("GlobalAveragePool", "GlobalMaxPool")
def global_pool(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    x = ins[0]
    need_dtype(b, x, pg.F32)
    planes = x.shape[0] * x.shape[1]
    out = b.out(0, x.shape[:2] + (1,) * (len(x.shape) - 2), pg.F32)
    mode = R["ReduceMean" if node.op_type == "GlobalAveragePool" else "ReduceMax"]
    b.prog.emit(pg.OP_REDUCE, [planes, x.size // max(planes, 1), 1, mode, pg.F32, b.ref(x),
                              b.prog.ref(out)])
    return [out]


# ---------------------------------------------------------------- shape queries (folded)
@handler("Shape")
def shape(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    dims = np.array(ins[0].shape, np.int64)
    start, end = int(attrs.get("start", 0)), attrs.get("end")
    dims = dims[start:int(end) if end is not None else None]
    return [b.const(0, dims)]


@handler("Size")
def size(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    return [b.const(0, np.array(ins[0].size, np.int64))]
