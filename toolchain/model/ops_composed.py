"""Operators of real exports composed from the existing kernels, no new C.

Activations (PRelu, Softsign, Gelu, Shrink) are a few elementwise steps;
the normalizations (Instance, Layer, Group) are a mean and a sum of squares
over contiguous groups (the reduce kernel, accumulating in double) and
broadcast arithmetic; LRN sums squares over a window of shifted channel
views; Resize and Upsample are separable, so each resized axis is one matrix
product with a constant interpolation matrix, found by running onnx's
reference Resize on the unit impulses (so every coordinate mode, nearest
rounding, linear, cubic and antialias are ONNX's own); Pad's edge, reflect and
wrap modes copy the interior's borders outwards, axis by axis.
"""

from __future__ import annotations

import math

import numpy as np

from wasmq.toolchain.model import program as pg
from wasmq.toolchain.model.errors import ModelError
from wasmq.toolchain.model.ops import (
    E,
    R,
    axis_of,
    broadcast,
    broadcast_strides,
    contiguous,
    copy_view,
    elt,
    emit_gemm,
    fill,
    handler,
    need_const,
    need_dtype,
)
from wasmq.toolchain.model.program import Tensor


def _scalar(name: str, value: float) -> Tensor:
    return Tensor(name, (), pg.F32, const=np.array(value, np.float32))


def _step(b: object, op: int, views: list[tuple[Tensor, tuple[int, ...]]], shape: tuple,
          out: Tensor | None = None, a: float = 0.0, c: float = 0.0) -> Tensor:
    """One elementwise step over `shape`, each operand broadcast; a fresh tensor unless
    `out` is given."""
    dtype = pg.BOOL if E["LT"] <= op <= E["XOR"] else views[-1][0].dtype
    if out is None:
        out = b.prog.new(f"{b.name}:{op}:{len(b.prog.storages)}", shape, dtype)
    elt(b, op, [(t, broadcast_strides(s, shape), 0) for t, s in views], out, shape, a=a, c=c)
    return out


# ---------------------------------------------------------------- activations
@handler("PRelu")
def prelu(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    x, slope = ins[0], ins[1]
    need_dtype(b, x, pg.F32)
    if slope.is_const and len(slope.shape) == 1 and len(x.shape) > 2 and \
            slope.shape[0] == x.shape[1] and slope.shape[0] != x.shape[-1]:
        # a per-channel slope as PyTorch exports it (ONNX broadcasts from the right)
        slope = Tensor(slope.name, (x.shape[1],) + (1,) * (len(x.shape) - 2), pg.F32,
                       const=slope.const.reshape(-1, *([1] * (len(x.shape) - 2))))
    shape = broadcast(node, x.shape, slope.shape)
    negative = _step(b, E["LT"], [(x, x.shape), (_scalar("zero", 0.0), ())], shape)
    scaled = _step(b, E["MUL"], [(x, x.shape), (slope, slope.shape)], shape)
    out = b.out(0, shape, pg.F32)
    _step(b, E["WHERE"], [(negative, shape), (scaled, shape), (x, x.shape)], shape, out)
    return [out]


@handler("Softsign")
def softsign(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    x = ins[0]
    need_dtype(b, x, pg.F32)
    size = _step(b, E["ABS"], [(x, x.shape)], x.shape)
    _step(b, E["ADD"], [(size, x.shape), (_scalar("one", 1.0), ())], x.shape, size)
    out = b.out(0, x.shape, pg.F32)
    return [_step(b, E["DIV"], [(x, x.shape), (size, x.shape)], x.shape, out)]


@handler("Gelu")
def gelu(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    """0.5 x (1 + erf(x / sqrt 2)), or with tanh of sqrt(2/pi) (x + 0.044715 x^3)."""
    x = ins[0]
    need_dtype(b, x, pg.F32)
    approx = attrs.get("approximate", b"none")
    approx = approx.decode() if isinstance(approx, bytes) else approx
    s = x.shape
    if approx == "tanh":
        cube = _step(b, E["MUL"], [(x, s), (x, s)], s)
        _step(b, E["MUL"], [(cube, s), (x, s)], s, cube)
        _step(b, E["MUL"], [(cube, s), (_scalar("k", 0.044715), ())], s, cube)
        _step(b, E["ADD"], [(cube, s), (x, s)], s, cube)
        _step(b, E["MUL"], [(cube, s), (_scalar("c", math.sqrt(2 / math.pi)), ())], s, cube)
        inner = _step(b, E["TANH"], [(cube, s)], s)
    else:
        scaled = _step(b, E["MUL"], [(x, s), (_scalar("r", 1 / math.sqrt(2)), ())], s)
        inner = _step(b, E["ERF"], [(scaled, s)], s)
    _step(b, E["ADD"], [(inner, s), (_scalar("one", 1.0), ())], s, inner)
    _step(b, E["MUL"], [(inner, s), (_scalar("half", 0.5), ())], s, inner)
    return [_step(b, E["MUL"], [(inner, s), (x, s)], s, b.out(0, s, pg.F32))]


@handler("Shrink")
def shrink(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    x = ins[0]
    need_dtype(b, x, pg.F32)
    lambd, bias = float(attrs.get("lambd", 0.5)), float(attrs.get("bias", 0.0))
    s = x.shape
    low = _step(b, E["LT"], [(x, s), (_scalar("lo", -lambd), ())], s)
    high = _step(b, E["GT"], [(x, s), (_scalar("hi", lambd), ())], s)
    up = _step(b, E["ADD"], [(x, s), (_scalar("bias", bias), ())], s)
    down = _step(b, E["SUB"], [(x, s), (_scalar("bias", bias), ())], s)
    zero = _scalar("zero", 0.0)
    _step(b, E["WHERE"], [(high, s), (down, s), (zero, ())], s, down)
    return [_step(b, E["WHERE"], [(low, s), (up, s), (down, s)], s, b.out(0, s, pg.F32))]


# ---------------------------------------------------------------- normalizations
def normalize(b: object, x: Tensor, outer: int, r: int, eps: float) -> Tensor:
    """(x - mean) / sqrt(var + eps) over each of `outer` contiguous groups of r values."""
    return normalize_with_stats(b, x, outer, r, eps)[0]


def normalize_with_stats(b: object, x: Tensor, outer: int, r: int, eps: float
                         ) -> tuple[Tensor, Tensor, Tensor]:
    """The normalized groups, each group's mean and its standard deviation."""
    groups = (outer, r)
    mean = b.prog.new(f"{b.name}:mean", (outer, 1), pg.F32)
    b.prog.emit(pg.OP_REDUCE, [outer, r, 1, R["ReduceMean"], pg.F32, b.ref(x),
                              b.prog.ref(mean)])
    flat = b.prog.alias(x, x.name, groups)
    centred = _step(b, E["SUB"], [(flat, groups), (mean, (outer, 1))], groups)
    var = b.prog.new(f"{b.name}:var", (outer, 1), pg.F32)
    b.prog.emit(pg.OP_REDUCE, [outer, r, 1, R["ReduceSumSquare"], pg.F32, b.prog.ref(centred),
                              b.prog.ref(var)])
    _step(b, E["MUL"], [(var, (outer, 1)), (_scalar("n", 1.0 / r), ())], (outer, 1), var)
    _step(b, E["ADD"], [(var, (outer, 1)), (_scalar("eps", eps), ())], (outer, 1), var)
    _step(b, E["SQRT"], [(var, (outer, 1))], (outer, 1), var)
    return _step(b, E["DIV"], [(centred, groups), (var, (outer, 1))], groups, centred), \
        mean, var


def _affine(b: object, y: Tensor, shape: tuple, scale: Tensor | None, scale_shape: tuple,
            bias: Tensor | None, bias_shape: tuple) -> Tensor:
    view = b.prog.alias(y, y.name, shape)
    out = b.out(0, shape, pg.F32)
    if scale is None and bias is None:
        copy_view(b, view, shape, contiguous(shape), 0, out)
        return out
    if scale is not None and bias is not None:
        _step(b, E["MUL"], [(view, shape), (scale, scale_shape)], shape, view)
        return _step(b, E["ADD"], [(view, shape), (bias, bias_shape)], shape, out)
    op, t, s = (E["MUL"], scale, scale_shape) if scale is not None else (E["ADD"], bias,
                                                                         bias_shape)
    return _step(b, op, [(view, shape), (t, s)], shape, out)


def _channel(t: Tensor, rank: int) -> tuple:
    return (t.shape[0],) + (1,) * (rank - 2)


@handler("InstanceNormalization")
def instance_norm(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    x, scale, bias = ins[:3]
    need_dtype(b, x, pg.F32)
    n, c = x.shape[:2]
    y = normalize(b, x, n * c, x.size // max(n * c, 1), float(attrs.get("epsilon", 1e-5)))
    rank = len(x.shape)
    return [_affine(b, y, x.shape, scale, _channel(scale, rank), bias, _channel(bias, rank))]


@handler("LayerNormalization")
def layer_norm(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    x = ins[0]
    need_dtype(b, x, pg.F32)
    axis = axis_of(node, int(attrs.get("axis", -1)), len(x.shape))
    outer = int(np.prod(x.shape[:axis], dtype=np.int64))
    y, mean, std = normalize_with_stats(b, x, outer, x.size // max(outer, 1),
                                        float(attrs.get("epsilon", 1e-5)))
    scale = ins[1] if len(ins) > 1 else None
    bias = ins[2] if len(ins) > 2 else None
    outs = [_affine(b, y, x.shape, scale, scale.shape if scale else (), bias,
                    bias.shape if bias else ())]
    stats = x.shape[:axis] + (1,) * (len(x.shape) - axis)
    if len(node.output) > 1 and node.output[1]:
        outs.append(b.alias(mean, 1, stats))
    if len(node.output) > 2 and node.output[2]:
        inv = b.out(2, stats, pg.F32)
        _step(b, E["RECIP"], [(std, (outer, 1))], (outer, 1), b.prog.alias(inv, inv.name,
                                                                             (outer, 1)))
        outs.append(inv)
    return outs


@handler("GroupNormalization")
def group_norm(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    x, scale, bias = ins[:3]
    need_dtype(b, x, pg.F32)
    groups = int(attrs["num_groups"])
    n, c = x.shape[:2]
    if groups <= 0 or c % groups:
        raise ModelError(f"{b.where}: {c} channels do not split into {groups} groups")
    y = normalize(b, x, n * groups, x.size // (n * groups), float(attrs.get("epsilon", 1e-5)))
    rank = len(x.shape)
    if scale.size == groups and groups != c:  # opset 18: a scale per group
        if not (scale.is_const and bias.is_const):
            raise ModelError(f"{b.where}: a per-group scale must be a constant")
        per = c // groups
        scale = Tensor("scale", (c,), pg.F32, const=np.repeat(scale.const, per))
        bias = Tensor("bias", (c,), pg.F32, const=np.repeat(bias.const, per))
    return [_affine(b, y, x.shape, scale, _channel(scale, rank), bias, _channel(bias, rank))]


@handler("LRN")
def lrn(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    """x / (bias + alpha / size * sum of squares over `size` channels) ** beta."""
    x = ins[0]
    need_dtype(b, x, pg.F32)
    size = int(attrs["size"])
    alpha, beta = float(attrs.get("alpha", 1e-4)), float(attrs.get("beta", 0.75))
    bias = float(attrs.get("bias", 1.0))
    n, c = x.shape[:2]
    inner = x.size // max(n * c, 1)
    before = (size - 1) // 2
    s = (n, c, inner)
    flat = b.prog.alias(x, x.name, s)
    square = _step(b, E["MUL"], [(flat, s), (flat, s)], s)
    total = b.prog.new(f"{b.name}:sum", s, pg.F32)
    fill(b, total, 0.0)
    for shift in range(-before, size - before):
        lo, hi = max(0, -shift), min(c, c - shift)  # out channel k reads k + shift
        if hi <= lo:
            continue
        part = (n, hi - lo, inner)
        strides = [c * inner, inner, 1]
        elt(b, E["ADD"], [(total, strides, lo * inner * 4),
                          (square, strides, (lo + shift) * inner * 4)], total, part,
            strides, lo * inner * 4)
    _step(b, E["MUL"], [(total, s), (_scalar("a", alpha / size), ())], s, total)
    _step(b, E["ADD"], [(total, s), (_scalar("k", bias), ())], s, total)
    _step(b, E["POW"], [(total, s), (_scalar("beta", beta), ())], s, total)
    out = b.out(0, x.shape, pg.F32)
    out_flat = b.prog.alias(out, out.name, s)
    _step(b, E["DIV"], [(flat, s), (total, s)], s, out_flat)
    return [out]


# ---------------------------------------------------------------- Resize and Upsample
def _interpolation(node: object, attrs: dict, d_in: int, d_out: int, scale: float,
                   roi: tuple[float, float] | None) -> np.ndarray:
    """[d_in, d_out]: the reference Resize of each unit impulse along one axis."""
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    keep = {k: v for k, v in attrs.items() if k in (
        "mode", "coordinate_transformation_mode", "nearest_mode", "cubic_coeff_a",
        "exclude_outside", "antialias", "extrapolation_value")}
    inputs = ["x", "roi", "", "sizes"]
    one = helper.make_node("Resize", inputs, ["y"], **keep)
    feeds = {"x": np.eye(d_in, dtype=np.float32).reshape(d_in, 1, d_in),
             "roi": np.array([0, 0, roi[0] if roi else 0, 1, 1, roi[1] if roi else 1],
                             np.float32),
             "sizes": np.array([d_in, 1, d_out], np.int64)}
    if scale:
        one = helper.make_node("Resize", ["x", "roi", "scales"], ["y"], **keep)
        feeds["scales"] = np.array([1, 1, scale], np.float32)
        del feeds["sizes"]
    ref = ReferenceEvaluator(one, opsets={"": 19})
    return np.asarray(ref.run(None, feeds)[0], np.float32).reshape(d_in, d_out)


def resize_axes(b: object, node: object, x: Tensor, out_shape: tuple, scales: list[float],
                attrs: dict, roi: list[float] | None) -> Tensor:
    """x resized to out_shape, one matrix product per resized axis."""
    need_dtype(b, x, pg.F32)
    mode = attrs.get("coordinate_transformation_mode", b"half_pixel")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode == "tf_crop_and_resize" and float(attrs.get("extrapolation_value", 0.0)) != 0.0:
        raise ModelError(f"{b.where}: tf_crop_and_resize with a non-zero extrapolation_value "
                         f"is not supported")
    rank = len(x.shape)
    axes = [a for a in range(rank) if out_shape[a] != x.shape[a] or (
        roi is not None and (roi[a], roi[a + rank]) != (0.0, 1.0))]
    cur = x
    if not axes:
        out = b.out(0, x.shape, pg.F32)
        copy_view(b, x, x.shape, contiguous(x.shape), 0, out)
        return out
    for i, a in enumerate(axes):
        d_in, d_out = cur.shape[a], out_shape[a]
        box = (roi[a], roi[a + rank]) if roi is not None else None
        m = _interpolation(node, attrs, d_in, d_out, scales[a] if scales else 0.0, box)
        shape = cur.shape[:a] + (d_out,) + cur.shape[a + 1:]
        last = i == len(axes) - 1
        nxt = b.out(0, shape, pg.F32) if last else b.prog.new(f"{b.name}:axis{a}", shape,
                                                                pg.F32)
        along_axis(b, cur, a, m, nxt)
        cur = nxt
    return cur


def along_axis(b: object, x: Tensor, a: int, m: np.ndarray, out: Tensor) -> None:
    """out = x with axis a multiplied by the constant matrix m [d_in, d_out]."""
    d_in, d_out = m.shape
    outer = int(np.prod(x.shape[:a], dtype=np.int64))
    inner = int(np.prod(x.shape[a + 1:], dtype=np.int64))
    if inner == 1:  # the last axis: rows of x times M
        emit_gemm(b, x, (d_in, 1), Tensor("matrix", m.shape, pg.F32,
                                          const=np.ascontiguousarray(m, np.float32)),
                  out, outer, d_out, d_in)
    else:  # M^T times each [d_in, inner] block
        mt = Tensor("matrix", (d_out, d_in), pg.F32,
                    const=np.ascontiguousarray(m.T, np.float32))
        emit_gemm(b, mt, (d_in, 1), x, out, d_out, inner, d_in, batch=outer,
                  batch_strides=(0, d_in * inner, d_out * inner))


@handler("Resize")
def resize(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    x = ins[0]
    rank = len(x.shape)
    if b.opset < 11:
        scales = [float(v) for v in need_const(node, ins[1], "scales").reshape(-1)]
        roi, sizes = None, None
        attrs = {**attrs, "coordinate_transformation_mode": "asymmetric"}
    else:
        roi = [float(v) for v in need_const(node, ins[1], "roi").reshape(-1)] \
            if len(ins) > 1 and ins[1] is not None and ins[1].size else None
        scales = [float(v) for v in need_const(node, ins[2], "scales").reshape(-1)] \
            if len(ins) > 2 and ins[2] is not None and ins[2].size else None
        sizes = [int(v) for v in need_const(node, ins[3], "sizes").reshape(-1)] \
            if len(ins) > 3 and ins[3] is not None else None
    if "axes" in attrs:  # scales or sizes of the axes named, the others unchanged
        axes = [axis_of(node, int(a), rank) for a in attrs["axes"]]
        full_scales, full_sizes = [1.0] * rank, list(x.shape)
        full_roi = [0.0] * rank + [1.0] * rank
        for i, a in enumerate(axes):
            if scales is not None:
                full_scales[a] = scales[i]
            if sizes is not None:
                full_sizes[a] = sizes[i]
            if roi is not None:
                full_roi[a], full_roi[a + rank] = roi[i], roi[i + len(axes)]
        scales = full_scales if scales is not None else None
        sizes = full_sizes if sizes is not None else None
        roi = full_roi if roi is not None else None
        attrs = {k: v for k, v in attrs.items() if k != "axes"}
    policy = attrs.get("keep_aspect_ratio_policy", b"stretch")
    policy = policy.decode() if isinstance(policy, bytes) else policy
    if sizes is not None and policy != "stretch":
        changed = [a for a in range(rank) if sizes[a] != x.shape[a]] or list(range(rank))
        ratios = [sizes[a] / x.shape[a] for a in changed]
        scale = min(ratios) if policy == "not_larger" else max(ratios)
        sizes = [int(round(x.shape[a] * scale)) if a in changed else x.shape[a]
                 for a in range(rank)]
    if sizes is not None:
        out_shape = tuple(sizes)
        scales = None
    elif scales is not None and len(scales) == rank:
        out_shape = tuple(int(math.floor(d * s)) for d, s in zip(x.shape, scales, strict=True))
    else:
        raise ModelError(f"{b.where}: neither scales nor sizes give {rank} dimensions")
    if len(out_shape) != rank or any(d <= 0 for d in out_shape):
        raise ModelError(f"{b.where}: cannot resize {x.shape} to {out_shape}")
    if b.opset < 11:
        attrs = {**attrs, "nearest_mode": "floor"}
    return [resize_axes(b, node, x, out_shape, scales, attrs, roi)]


@handler("Upsample")
def upsample(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    x = ins[0]
    scales = [float(v) for v in attrs["scales"]] if "scales" in attrs else \
        [float(v) for v in need_const(node, ins[1], "scales").reshape(-1)]
    if len(scales) != len(x.shape):
        raise ModelError(f"{b.where}: {len(scales)} scales for rank {len(x.shape)}")
    out_shape = tuple(int(math.floor(d * s)) for d, s in zip(x.shape, scales, strict=True))
    mode = attrs.get("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    attrs = {"mode": "linear" if mode in ("linear", "bilinear") else "nearest",
             "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
    return [resize_axes(b, node, x, out_shape, scales, attrs, None)]


# ---------------------------------------------------------------- Pad's other modes
def pad_borders(b: object, out: Tensor, src_shape: tuple, before: list[int],
                after: list[int], mode: str) -> None:
    """Fill the pads of `out` (its interior already holds the input) by copying the
    interior's borders outwards: edge repeats, reflect mirrors, wrap continues."""
    shape = out.shape
    rank = len(shape)
    ostr = contiguous(shape)
    es = pg.ESIZE[out.dtype]
    for a in range(rank):
        p, q, d = before[a], after[a], src_shape[a]
        if not p and not q:
            continue
        if mode == "reflect" and (p >= d or q >= d):
            raise ModelError(f"{b.where}: reflect pads of {max(p, q)} on an axis of {d}")
        # the slab: axes before a already padded in full, axes after a interior only
        dims = [shape[j] if j < a else src_shape[j] for j in range(rank)]
        start = [0 if j < a else before[j] for j in range(rank)]
        for side, count in (("before", p), ("after", q)):
            if not count:
                continue
            dst = list(start)
            dst[a] = 0 if side == "before" else before[a] + d
            src, step = list(start), 1
            if mode == "edge":
                src[a], step = (before[a] if side == "before" else before[a] + d - 1), 0
            elif mode == "reflect":
                src[a], step = ((before[a] + count) if side == "before" else
                                (before[a] + d - 2)), -1
            else:  # wrap
                if count > d:
                    raise ModelError(f"{b.where}: wrap pads of {count} on an axis of {d}")
                src[a] = before[a] + d - count if side == "before" else before[a]
            view_dims = list(dims)
            view_dims[a] = count
            strides = list(ostr)
            strides[a] = ostr[a] * step
            src_at = sum(i * s for i, s in zip(src, ostr, strict=True)) * es
            dst_at = sum(i * s for i, s in zip(dst, ostr, strict=True)) * es
            copy_view(b, out, tuple(view_dims), strides, src_at, out, list(ostr), dst_at)


# ---------------------------------------------------------------- ConvTranspose
@handler("ConvTranspose")
def conv_transpose(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    """A convolution of the input spread out by the stride (zeros between) and padded by
    the kernel's reach, with each group's weights transposed and flipped."""
    from wasmq.toolchain.model.ops import conv, fill, ints

    x = ins[0]
    need_dtype(b, x, pg.F32)
    w = need_const(node, ins[1], "the weight W").astype(np.float32)
    groups = int(attrs.get("group", 1))
    c, mg = w.shape[:2]
    m = mg * groups
    bias = need_const(node, ins[2], "the bias B").astype(np.float32) \
        if len(ins) > 2 and ins[2] is not None else np.zeros(m, np.float32)
    rank = len(x.shape) - 2
    if x.shape[1] != c or c % groups:
        raise ModelError(f"{b.where}: input {x.shape} with group={groups} does not match "
                         f"weights {w.shape}")
    kernel = list(w.shape[2:])
    strides = ints(attrs.get("strides", [1] * rank))
    dil = ints(attrs.get("dilations", [1] * rank))
    out_pad = ints(attrs.get("output_padding", [0] * rank))
    spatial = list(x.shape[2:])
    reach = [d * (k - 1) + 1 for d, k in zip(dil, kernel, strict=True)]
    full = [s * (i - 1) + o + r for s, i, o, r in zip(strides, spatial, out_pad, reach,
                                                        strict=True)]
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if "output_shape" in attrs or auto in ("SAME_UPPER", "SAME_LOWER"):
        wanted = ints(attrs["output_shape"])[-rank:] if "output_shape" in attrs else \
            [i * s for i, s in zip(spatial, strides, strict=True)]
        total = [f - o for f, o in zip(full, wanted, strict=True)]
        lower = auto == "SAME_LOWER"
        # a negative total (an output_shape past the full size) pads the end with zeros
        begin = [0 if t < 0 else t - t // 2 if lower else t // 2 for t in total]
        end = [t - bg for t, bg in zip(total, begin, strict=True)]
    else:
        pads = ints(attrs.get("pads", [0] * (2 * rank)))
        begin, end = pads[:rank], pads[rank:]
    before = [r - 1 - p for r, p in zip(reach, begin, strict=True)]
    after = [r - 1 - p + o for r, p, o in zip(reach, end, out_pad, strict=True)]
    if min(before + after) < 0:
        raise ModelError(f"{b.where}: pads past the kernel's reach are not supported")
    spread = tuple((i - 1) * s + 1 + p + q for i, s, p, q in zip(spatial, strides, before,
                                                                 after, strict=True))
    shape = x.shape[:2] + spread
    padded = b.prog.new(f"{b.name}:spread", shape, pg.F32)
    fill(b, padded, 0.0)
    ostr = contiguous(shape)
    at = sum(p * s for p, s in zip(before, ostr[2:], strict=True)) * 4
    copy_view(b, x, x.shape, contiguous(x.shape), 0, padded,
              ostr[:2] + [o * s for o, s in zip(ostr[2:], strides, strict=True)], at)
    flipped = w[(slice(None), slice(None)) + (slice(None, None, -1),) * rank]
    cg = c // groups
    per_group = [flipped[g * cg:(g + 1) * cg].swapaxes(0, 1) for g in range(groups)]
    weights = np.ascontiguousarray(np.concatenate(per_group, axis=0))  # [M, C/g, k...]
    conv_attrs = {"group": groups, "dilations": dil, "strides": [1] * rank}
    return conv(b, node, [padded, Tensor("W", weights.shape, pg.F32, const=weights),
                          Tensor("B", bias.shape, pg.F32, const=bias)], conv_attrs)


# ---------------------------------------------------------------- 3-d convolution and pooling
class _Into:
    """The builder, with a handler's output 0 redirected into a given tensor: a 2-d
    convolution of every depth slice at once, reused by the 3-d one."""

    def __init__(self, b: object, target: Tensor) -> None:
        self._b, self._target = b, target

    def out(self, i: int, shape: tuple, dtype: int) -> Tensor:
        if tuple(shape) != self._target.shape:
            raise ModelError(f"{self._b.where}: a depth slice of shape {tuple(shape)} where "
                             f"{self._target.shape} was planned")
        return self._target

    def __getattr__(self, name: str) -> object:
        return getattr(self._b, name)


def _depth_first(b: object, x: Tensor) -> Tensor:
    """[N, C, D, H, W] as [D, N, C, H, W]: each depth slice contiguous."""
    n, c, d, h, w = x.shape
    shape = (d, n, c, h, w)
    xs = contiguous(x.shape)
    t = b.prog.new(f"{x.name}:depth-first", shape, x.dtype)
    copy_view(b, x, shape, [xs[2], xs[0], xs[1], xs[3], xs[4]], 0, t)
    return t


def _depth_window(b: object, node: object, attrs: dict, x: Tensor, k: int, ceil: bool = False
                  ) -> tuple[int, int, int, int, dict, int]:
    """(stride, dilation, pad before, output depth), the attributes of the 2-d part, and
    the pad after."""
    from wasmq.toolchain.model.ops import _pads, ints

    kernel = attrs.get("kernel_shape")
    strides = ints(attrs.get("strides", [1, 1, 1]))
    dil = ints(attrs.get("dilations", [1, 1, 1]))
    ks = ints(kernel) if kernel is not None else None
    begin, end = _pads(node, attrs, x.shape[2:], ks or [k, 1, 1], strides, dil)
    d = x.shape[2]
    span = d + begin[0] + end[0] - dil[0] * (k - 1) - 1
    out = (-(-span // strides[0]) if ceil else span // strides[0]) + 1
    if ceil and (out - 1) * strides[0] >= d + begin[0]:
        out -= 1
    if out <= 0:
        raise ModelError(f"{b.where}: the kernel does not fit the input {x.shape}")
    flat = {k2: v for k2, v in attrs.items() if k2 not in ("auto_pad", "pads")}
    flat.update(strides=strides[1:], dilations=dil[1:],
                pads=[begin[1], begin[2], end[1], end[2]])
    if ks is not None:
        flat["kernel_shape"] = ks[1:]
    return strides[0], dil[0], begin[0], out, flat, end[0]


def _accumulate(b: object, op: int, acc: Tensor, part: Tensor, k: int, step: int, dil: int,
                before: int, depth: int) -> list[int]:
    """acc[o] = op(acc[o], part[o * step - before + k * dil]) where that slice exists;
    returns the output depths it touched."""
    outs = acc.shape[0]
    plane = acc.size // outs
    valid = [o for o in range(outs) if 0 <= o * step - before + k * dil < depth]
    if valid:
        lo, count = valid[0], len(valid)
        z = lo * step - before + k * dil
        dims = (count, plane)
        elt(b, op, [(acc, [plane, 1], lo * plane * 4), (part, [step * plane, 1], z * plane * 4)],
            acc, dims, [plane, 1], lo * plane * 4)
    return valid


def conv_3d(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    """Per kernel depth kd, one 2-d convolution of every depth slice with W[:, :, kd],
    added into the output depths that read that slice."""
    from wasmq.toolchain.model.ops import conv

    x = ins[0]
    w = need_const(node, ins[1], "the weight W").astype(np.float32)
    m, kd = w.shape[0], w.shape[2]
    bias = need_const(node, ins[2], "the bias B").astype(np.float32) \
        if len(ins) > 2 and ins[2] is not None else np.zeros(m, np.float32)
    if len(w.shape) != 5:
        raise ModelError(f"{b.where}: weights {w.shape} for a 3-d input")
    step, dil, before, depth_out, flat, _ = _depth_window(b, node, attrs, x, kd)
    flat.pop("kernel_shape", None)
    n, _, d, _, _ = x.shape
    xt = _depth_first(b, x)
    slices = b.prog.alias(xt, xt.name, (d * n,) + x.shape[1:2] + x.shape[3:])
    zeros = Tensor("B0", (m,), pg.F32, const=np.zeros(m, np.float32))
    acc = None
    for k in range(kd):
        wk = np.ascontiguousarray(w[:, :, k])
        if acc is None:  # the first: its shape says the 2-d output's
            from wasmq.toolchain.model.ops import _spatial_attrs

            hw_out = _spatial_attrs(node, flat, slices, list(wk.shape[2:]))[7]
            acc = b.prog.new(f"{b.name}:acc", (depth_out, n, m, *hw_out), pg.F32)
            plane = (n, m, hw_out[0] * hw_out[1])
            bias_view = Tensor("B", (m,), pg.F32, const=bias)
            copy_view(b, bias_view, (depth_out,) + plane, [0, 0, 1, 0], 0, acc)
        part = b.prog.new(f"{b.name}:kd{k}", (d * n, m, *acc.shape[3:]), pg.F32)
        conv(_Into(b, part), node, [slices, Tensor("W", wk.shape, pg.F32, const=wk), zeros],
             flat)
        _accumulate(b, E["ADD"], acc, part, k, step, dil, before, d)
    out = b.out(0, (n, m, depth_out) + acc.shape[3:], pg.F32)
    a = contiguous(acc.shape)
    copy_view(b, acc, out.shape, [a[1], a[2], a[0], a[3], a[4]], 0, out)
    return [out]


def pool_3d(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    """Every depth slice pooled in 2-d by one instruction, then the depth windows combined
    (max, or a sum divided by the window's count)."""
    from wasmq.toolchain.model.ops import _spatial_attrs, emit_pool, ints

    x = ins[0]
    if len(node.output) > 1 and node.output[1] and b.used(node.output[1]):
        raise ModelError(f"{b.where}: MaxPool's Indices output is not supported")
    kernel = ints(attrs["kernel_shape"])
    ceil = bool(int(attrs.get("ceil_mode", 0)))
    is_max = node.op_type == "MaxPool"
    include_pad = int(attrs.get("count_include_pad", 0))
    step, dil, before, depth_out, flat, after = _depth_window(b, node, attrs, x, kernel[0],
                                                              ceil)
    n, c, d = x.shape[:3]
    xt = _depth_first(b, x)
    slices = b.prog.alias(xt, xt.name, (d * n, c) + x.shape[3:])
    (hw, kk, st, dl, begin, end, ohw, outs) = _spatial_attrs(node, flat, slices,
                                                             flat["kernel_shape"], ceil)
    pooled = b.prog.new(f"{b.name}:2d", (d * n, c, *outs), pg.F32)
    emit_pool(b, slices, pooled, hw, ohw, kk, st, begin, end, dl, is_max, include_pad)
    acc = b.prog.new(f"{b.name}:acc", (depth_out, n, c, *outs), pg.F32)
    fill(b, acc, -np.inf if is_max else 0.0)
    counts = np.zeros(depth_out)
    for k in range(kernel[0]):
        for o in _accumulate(b, E["MAX" if is_max else "ADD"], acc, pooled, k, step, dil,
                             before, d):
            counts[o] += 1
    if not is_max:
        if include_pad:  # the pads inside the window count, not what is past them
            for o in range(depth_out):
                counts[o] = sum(-before <= o * step - before + k * dil < d + after
                                for k in range(kernel[0]))
        scale = Tensor("counts", (depth_out, 1), pg.F32,
                       const=(1.0 / np.maximum(counts, 1)).astype(np.float32).reshape(-1, 1))
        plane = acc.size // depth_out
        elt(b, E["MUL"], [(acc, [plane, 1], 0), (scale, [1, 0], 0)], acc, (depth_out, plane))
    out = b.out(0, (n, c, depth_out, *outs), pg.F32)
    a = contiguous(acc.shape)
    copy_view(b, acc, out.shape, [a[1], a[2], a[0], a[3], a[4]], 0, out)
    return [out]
