"""Scans, one-hot, element gathers and scatters, TopK and Einsum, composed from the
existing kernels.

CumSum is a log-step scan (each step adds a shifted view: exact on integers);
GatherElements computes each output's flat position in the data (constant
parts folded) and gathers from the flattened data; ScatterElements with
constant indices gathers the updates into place and selects them where they
land (one pass per duplicate for the reductions); TopK takes the extreme and
its index k times, masking each out; Einsum of matrix forms is a transposed
batched GEMM.
"""

from __future__ import annotations

import numpy as np

from wasmq.toolchain.model import program as pg
from wasmq.toolchain.model.errors import ModelError
from wasmq.toolchain.model.ops import (
    E,
    R,
    axis_of,
    contiguous,
    copy_view,
    elt,
    emit_arg,
    emit_gemm,
    handler,
    need_const,
    need_dtype,
)
from wasmq.toolchain.model.program import Tensor

MAX_TOPK = 256  # k passes of a few instructions each
SENTINEL = {pg.F32: (np.float32(-np.inf), np.float32(np.inf)),
            pg.I64: (np.int64(np.iinfo(np.int64).min), np.int64(np.iinfo(np.int64).max))}


def _const(name: str, array: object, dtype: int) -> Tensor:
    array = np.ascontiguousarray(np.asarray(array, pg.NUMPY[dtype]))
    return Tensor(name, array.shape, dtype, const=array)


def _three(shape: tuple, axis: int) -> tuple[int, int, int]:
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
    return outer, shape[axis], inner


def _scalar_int(node: object, t: Tensor | None, what: str) -> int:
    return int(need_const(node, t, what).reshape(-1)[0])


# ---------------------------------------------------------------- CumSum
@handler("CumSum")
def cumsum(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    x = ins[0]
    need_dtype(b, x, pg.F32, pg.I64)
    axis = axis_of(node, _scalar_int(node, ins[1], "axis"), len(x.shape))
    outer, d, inner = _three(x.shape, axis)
    dims, strides = (outer, d, inner), [d * inner, inner, 1]
    reverse, exclusive = int(attrs.get("reverse", 0)), int(attrs.get("exclusive", 0))
    es = pg.ESIZE[x.dtype]
    cur = b.prog.new(f"{b.name}:scan", dims, x.dtype)
    if reverse:  # scan the axis backwards: a view with a negative stride
        copy_view(b, x, dims, [d * inner, -inner, 1], (d - 1) * inner * es, cur)
    else:
        copy_view(b, x, dims, strides, 0, cur)
    shift = 1
    while shift < d:
        nxt = b.prog.new(f"{b.name}:scan{shift}", dims, x.dtype)
        copy_view(b, cur, (outer, shift, inner), strides, 0, nxt, strides, 0)
        elt(b, E["ADD"], [(cur, strides, shift * inner * es), (cur, strides, 0)], nxt,
            (outer, d - shift, inner), strides, shift * inner * es)
        cur, shift = nxt, shift * 2
    out = b.out(0, x.shape, x.dtype)
    start, count = (1, d - 1) if exclusive else (0, d)
    if exclusive:  # the first of each scan is 0, the rest move one along
        from wasmq.toolchain.model.ops import fill

        fill(b, out, 0)
    if count:
        if reverse:
            copy_view(b, cur, (outer, count, inner), strides, 0, out,
                      [d * inner, -inner, 1], (d - 1 - start) * inner * es)
        else:
            copy_view(b, cur, (outer, count, inner), strides, 0, out, strides,
                      start * inner * es)
    return [out]


# ---------------------------------------------------------------- OneHot
@handler("OneHot")
def one_hot(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    idx, depth_t, values = ins[:3]
    depth = int(np.asarray(need_const(node, depth_t, "depth")).reshape(-1)[0])
    values = need_const(node, values, "values").reshape(-1)
    if depth <= 0 or values.size != 2:
        raise ModelError(f"{b.where}: depth {depth} and {values.size} values")
    dtype = pg.I64 if values.dtype.kind in "iu" else pg.BOOL if values.dtype.kind == "b" \
        else pg.F32
    if idx.dtype != pg.I64:
        from wasmq.toolchain.model.ops import elementwise_to

        idx = elementwise_to(b, E["CAST"], idx, pg.I64)
    rank = len(idx.shape) + 1
    axis = axis_of(node, int(attrs.get("axis", -1)), rank)
    shape = idx.shape[:axis] + (depth,) + idx.shape[axis:]
    # a negative index counts from the end
    negative = b.prog.new(f"{b.name}:negative", idx.shape, pg.BOOL)
    s = contiguous(idx.shape)
    zero = [0] * len(idx.shape)
    elt(b, E["LT"], [(idx, s, 0), (_const("zero", [0], pg.I64), zero, 0)], negative,
        idx.shape)
    wrapped = b.prog.new(f"{b.name}:wrapped", idx.shape, pg.I64)
    elt(b, E["ADD"], [(idx, s, 0), (_const("depth", [depth], pg.I64), zero, 0)], wrapped,
        idx.shape)
    elt(b, E["WHERE"], [(negative, s, 0), (wrapped, s, 0), (idx, s, 0)], wrapped, idx.shape)
    hits = b.prog.new(f"{b.name}:hits", shape, pg.BOOL)
    istr = s[:axis] + [0] + s[axis:]
    astr = [0] * axis + [1] + [0] * (rank - axis - 1)
    elt(b, E["EQ"], [(wrapped, istr, 0), (_const("range", np.arange(depth), pg.I64), astr, 0)],
        hits, shape)
    out = b.out(0, shape, dtype)
    nz = [0] * rank
    elt(b, E["WHERE"], [(hits, contiguous(shape), 0), (_const("on", values[1:], dtype), nz, 0),
                        (_const("off", values[:1], dtype), nz, 0)], out, shape)
    return [out]


# ---------------------------------------------------------------- element gathers
def _flat_positions(b: object, data: Tensor, idx: Tensor, axis: int) -> Tensor:
    """Each index's flat position in data: its own coordinates, idx along `axis`."""
    dstr = contiguous(data.shape)
    grid = np.indices(idx.shape).reshape(len(idx.shape), -1) if idx.shape else \
        np.zeros((0, 1), np.int64)
    base = sum(grid[j] * dstr[j] for j in range(len(idx.shape)) if j != axis)
    base = np.asarray(base, np.int64).reshape(idx.shape) if idx.shape else \
        np.zeros((), np.int64)
    dim = data.shape[axis]
    if idx.is_const:
        k = idx.const.astype(np.int64)
        if ((k < -dim) | (k >= dim)).any():
            raise ModelError(f"{b.where}: an index is out of range for an axis of {dim}")
        flat = base + np.where(k < 0, k + dim, k) * dstr[axis]
        return _const("positions", flat, pg.I64)
    need_dtype(b, idx, pg.I64)
    s, shape = contiguous(idx.shape), idx.shape
    zero = [0] * len(shape)
    # each index looked up in 0 .. dim-1: the Gather kernel wraps a negative one and fails
    # the call on one out of range, which would otherwise read another row's value
    fixed = b.prog.new(f"{b.name}:fixed", shape, pg.I64)
    b.prog.emit(pg.OP_GATHER, [1, dim, 1, idx.size, 8, b.ref(_const("axis", np.arange(dim),
                                                                    pg.I64)),
                               b.ref(idx), b.prog.ref(fixed)])
    elt(b, E["MUL"], [(fixed, s, 0), (_const("stride", [dstr[axis]], pg.I64), zero, 0)],
        fixed, shape)
    elt(b, E["ADD"], [(fixed, s, 0), (_const("base", base, pg.I64), s, 0)], fixed, shape)
    return fixed


def _gather_flat(b: object, data: Tensor, positions: Tensor, out: Tensor) -> None:
    b.prog.emit(pg.OP_GATHER, [1, data.size, 1, positions.size, pg.ESIZE[data.dtype],
                               b.ref(data), b.ref(positions), b.prog.ref(out)])


@handler("GatherElements")
def gather_elements(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    data, idx = ins[:2]
    if idx.is_const:
        idx = Tensor(idx.name, idx.shape, pg.I64, const=idx.const.astype(np.int64))
    axis = axis_of(node, int(attrs.get("axis", 0)), len(data.shape))
    out = b.out(0, idx.shape, data.dtype)
    _gather_flat(b, data, _flat_positions(b, data, idx, axis), out)
    return [out]


@handler("ScatterElements", "Scatter")
def scatter_elements(b: object, node: object, ins: list[Tensor], attrs: dict
                     ) -> list[Tensor]:
    data, idx, updates = ins[:3]
    need_const(node, idx, "indices")
    axis = axis_of(node, int(attrs.get("axis", 0)), len(data.shape))
    reduction = attrs.get("reduction", b"none")
    reduction = reduction.decode() if isinstance(reduction, bytes) else reduction
    op = {"add": E["ADD"], "mul": E["MUL"], "max": E["MAX"], "min": E["MIN"]}.get(reduction)
    if reduction != "none" and op is None:
        raise ModelError(f"{b.where}: reduction '{reduction}' is not supported")
    idx = Tensor(idx.name, idx.shape, pg.I64, const=idx.const.astype(np.int64))
    flat = _flat_positions(b, data, idx, axis).const.reshape(-1)
    passes: list[dict[int, int]] = [{}]
    for k, p in enumerate(flat.tolist()):
        if reduction == "none":
            passes[0][p] = k  # the last write wins
            continue
        for layer in passes:
            if p not in layer:
                layer[p] = k
                break
        else:
            passes.append({p: k})
    shape, s = data.shape, contiguous(data.shape)
    cur = data
    for i, layer in enumerate(passes):
        source = np.zeros(data.size, np.int64)
        hit = np.zeros(data.size, np.bool_)
        for p, k in layer.items():
            source[p], hit[p] = k, True
        moved = b.prog.new(f"{b.name}:moved{i}", shape, data.dtype)
        _gather_flat(b, updates, _const("source", source.reshape(shape), pg.I64), moved)
        if op is not None:
            elt(b, op, [(cur, s, 0), (moved, s, 0)], moved, shape)
        last = i == len(passes) - 1
        nxt = b.out(0, shape, data.dtype) if last else b.prog.new(f"{b.name}:pass{i}", shape,
                                                                    data.dtype)
        elt(b, E["WHERE"], [(_const("hit", hit.reshape(shape), pg.BOOL), s, 0), (moved, s, 0),
                            (cur, s, 0)], nxt, shape)
        cur = nxt
    return [cur]


# ---------------------------------------------------------------- TopK
@handler("TopK")
def topk(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    x = ins[0]
    need_dtype(b, x, pg.F32, pg.I64)
    k = _scalar_int(node, ins[1], "K") if b.opset >= 10 else int(attrs["k"])
    axis = axis_of(node, int(attrs.get("axis", -1)), len(x.shape))
    largest = int(attrs.get("largest", 1))
    outer, d, inner = _three(x.shape, axis)
    if not 0 <= k <= d or k > MAX_TOPK:
        raise ModelError(f"{b.where}: K={k} on an axis of {d} (at most {MAX_TOPK})")
    dims, strides = (outer, d, inner), [d * inner, inner, 1]
    shape = x.shape[:axis] + (k,) + x.shape[axis + 1:]
    values, indices = b.out(0, shape, x.dtype), b.out(1, shape, pg.I64)
    cur = b.prog.new(f"{b.name}:left", dims, x.dtype)
    copy_view(b, x, dims, strides, 0, cur)
    flat = b.prog.alias(cur, cur.name, (outer, d, inner))
    best = b.prog.new(f"{b.name}:best", (outer, 1, inner), x.dtype)
    where = b.prog.new(f"{b.name}:where", (outer, 1, inner), pg.I64)
    taken = b.prog.new(f"{b.name}:taken", dims, pg.BOOL)
    gone = _const("gone", [SENTINEL[x.dtype][0 if largest else 1]], x.dtype)
    positions = _const("range", np.arange(d), pg.I64)
    ostr = [k * inner, inner, 1]
    es = pg.ESIZE[x.dtype]
    for t in range(k):
        b.prog.emit(pg.OP_REDUCE, [outer, d, inner, R["ReduceMax" if largest else "ReduceMin"],
                                  x.dtype, b.prog.ref(flat), b.prog.ref(best)])
        emit_arg(b, flat, 1, where, is_min=not largest)
        copy_view(b, best, (outer, 1, inner), [inner, inner, 1], 0, values, ostr,
                  t * inner * es)
        copy_view(b, where, (outer, 1, inner), [inner, inner, 1], 0, indices, ostr,
                  t * inner * 8)
        if t < k - 1:
            elt(b, E["EQ"], [(positions, [0, 1, 0], 0), (where, [inner, 0, 1], 0)], taken, dims)
            elt(b, E["WHERE"], [(taken, strides, 0), (gone, [0, 0, 0], 0), (flat, strides, 0)],
                flat, dims)
    return [values, indices]


# ---------------------------------------------------------------- Einsum
def _permuted(b: object, t: Tensor, perm: list[int]) -> Tensor:
    if perm == list(range(len(perm))):
        return t
    shape = tuple(t.shape[p] for p in perm)
    if t.is_const:
        return Tensor(t.name, shape, t.dtype, const=np.ascontiguousarray(t.const.transpose(perm)))
    out = b.prog.new(f"{t.name}:T", shape, t.dtype)
    s = contiguous(t.shape)
    copy_view(b, t, shape, [s[p] for p in perm], 0, out)
    return out


@handler("Einsum")
def einsum(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    """Matrix forms: one operand's transpose or sum, two operands' batched product."""
    equation = attrs["equation"]
    equation = (equation.decode() if isinstance(equation, bytes) else equation).replace(" ", "")
    if "..." in equation:
        raise ModelError(f"{b.where}: Einsum with an ellipsis is not supported")
    lhs, _, out_letters = equation.partition("->")
    terms = lhs.split(",")
    if not _:
        letters = "".join(terms)
        out_letters = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    if len(terms) != len(ins) or len(terms) > 2 or any(len(set(t)) != len(t) for t in terms):
        raise ModelError(f"{b.where}: Einsum '{equation}' is not a matrix form (one or two "
                         f"operands, no repeated letter in one) and is not supported")
    for t, x in zip(terms, ins, strict=True):
        need_dtype(b, x, pg.F32)
        if len(t) != len(x.shape):
            raise ModelError(f"{b.where}: '{t}' for an input of shape {x.shape}")
    size = {c: x.shape[i] for t, x in zip(terms, ins, strict=True) for i, c in enumerate(t)}
    if len(terms) == 1:
        (t,), x = terms, ins[0]
        dropped = [c for c in t if c not in out_letters]
        kept = [c for c in t if c in out_letters]
        src = _permuted(b, x, [t.index(c) for c in kept + dropped])
        r = int(np.prod([size[c] for c in dropped], dtype=np.int64))
        mid_shape = tuple(size[c] for c in kept)
        mid = b.prog.new(f"{b.name}:sum", mid_shape, pg.F32)
        b.prog.emit(pg.OP_REDUCE, [src.size // max(r, 1), r, 1, R["ReduceSum"], pg.F32,
                                  b.ref(src), b.prog.ref(mid)])
        out = b.out(0, tuple(size[c] for c in out_letters), pg.F32)
        s = contiguous(mid_shape)
        copy_view(b, mid, out.shape, [s[kept.index(c)] for c in out_letters], 0, out)
        return [out]
    (ta, tb), (xa, xb) = terms, ins
    batch = [c for c in out_letters if c in ta and c in tb]
    contract = [c for c in ta if c in tb and c not in out_letters]
    m = [c for c in ta if c not in tb]
    n = [c for c in tb if c not in ta]
    if any(c not in out_letters for c in m + n) or set(out_letters) - set(batch + m + n):
        raise ModelError(f"{b.where}: Einsum '{equation}' sums a letter of one operand only; "
                         f"not supported")
    a2 = _permuted(b, xa, [ta.index(c) for c in batch + m + contract])
    b2 = _permuted(b, xb, [tb.index(c) for c in batch + contract + n])
    nb, mm, kk, nn = (int(np.prod([size[c] for c in g], dtype=np.int64))
                      for g in (batch, m, contract, n))
    prod_shape = tuple(size[c] for c in batch + m + n)
    order = batch + m + n
    direct = order == list(out_letters)
    prod = b.out(0, prod_shape, pg.F32) if direct else b.prog.new(f"{b.name}:prod",
                                                                   prod_shape, pg.F32)
    emit_gemm(b, a2, (kk, 1), b2, prod, mm, nn, kk, batch=nb,
              batch_strides=(mm * kk, kk * nn, mm * nn))
    if direct:
        return [prod]
    out = b.out(0, tuple(size[c] for c in out_letters), pg.F32)
    s = contiguous(prod_shape)
    copy_view(b, prod, out.shape, [s[order.index(c)] for c in out_letters], 0, out)
    return [out]


# ---------------------------------------------------------------- constants of constants
@handler("Range", "ConstantOfShape")
def constant_maker(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    """Reached only when an input is computed at run time (constant inputs are folded):
    the refusal names the input that must be constant."""
    if node.op_type == "Range":
        for t, what in zip(ins, ("start", "limit", "delta"), strict=False):
            need_const(node, t, what)
    else:
        need_const(node, ins[0], "the shape")
    raise ModelError(f"{b.where}: its constant result could not be computed")
