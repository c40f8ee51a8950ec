"""ai.onnx.ml preprocessing and kernel machines, composed from the core kernels.

What skl2onnx writes for tabular pipelines: Binarizer, Imputer (SimpleImputer),
OneHotEncoder and LabelEncoder over numbers, SVMRegressor (SVR). A lookup
(LabelEncoder) is one comparison against every key at once, an ArgMax for the
first hit (a last, always-true column answers the default) and a Gather of the
values; a kernel machine is a GEMM against the support vectors, the kernel
function elementwise, and a GEMM against the coefficients.
"""

from __future__ import annotations

import numpy as np

from wasmq.toolchain.model import ops
from wasmq.toolchain.model import program as pg
from wasmq.toolchain.model.errors import ModelError
from wasmq.toolchain.model.ml import features, floats, handler, post_transform, text
from wasmq.toolchain.model.ops import E, broadcast_strides, contiguous, elt, emit_gemm
from wasmq.toolchain.model.program import Tensor


def _const(name: str, array: np.ndarray, dtype: int) -> Tensor:
    array = np.ascontiguousarray(np.asarray(array, pg.NUMPY[dtype]))
    return Tensor(name, array.shape, dtype, const=array)


def _as_float(b: object, x: Tensor) -> Tensor:
    if x.dtype == pg.F32:
        return x
    return ops.elementwise_to(b, E["CAST"], x, pg.F32)


@handler("Binarizer")
def binarizer(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    x = _as_float(b, ins[0])
    cut = _const("threshold", [float(attrs.get("threshold", 0.0))], pg.F32)
    above = b.prog.new(f"{b.name}:above", x.shape, pg.BOOL)
    elt(b, E["GT"], [(x, contiguous(x.shape), 0), (cut, [0] * len(x.shape), 0)], above,
        x.shape)
    out = b.out(0, x.shape, pg.F32)
    elt(b, E["CAST"], [(above, contiguous(x.shape), 0)], out, x.shape)
    return [out]


@handler("Imputer")
def imputer(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    x = ins[0]
    if x.dtype == pg.I64:
        values = np.asarray(attrs.get("imputed_value_int64s", []), np.int64)
        replaced = _const("replaced", [int(attrs.get("replaced_value_int64", 0))], pg.I64)
        op = E["EQ"]
    else:
        x = _as_float(b, x)
        values = floats(attrs, "imputed_value_floats")
        replaced_value = float(attrs.get("replaced_value_float", np.nan))
        replaced = _const("replaced", [replaced_value], pg.F32)
        op = E["ISNAN"] if np.isnan(replaced_value) else E["EQ"]
    f = x.shape[-1] if x.shape else 1
    if values.size not in (1, f):
        raise ModelError(f"{b.where}: {values.size} imputed values for {f} features")
    fill_with = _const("imputed", values, x.dtype)
    missing = b.prog.new(f"{b.name}:missing", x.shape, pg.BOOL)
    views = [(x, contiguous(x.shape), 0)]
    if op == E["EQ"]:
        views.append((replaced, [0] * len(x.shape), 0))
    elt(b, op, views, missing, x.shape)
    out = b.out(0, x.shape, x.dtype)
    elt(b, E["WHERE"], [(missing, contiguous(x.shape), 0),
                        (fill_with, broadcast_strides(fill_with.shape, x.shape), 0),
                        (x, contiguous(x.shape), 0)], out, x.shape)
    return [out]


@handler("OneHotEncoder")
def one_hot_encoder(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    """Each value to a row over the categories; an unknown value is a row of zeros, also
    with zeros=0 (where onnxruntime fails the call: scikit-learn's handle_unknown="error")."""
    x = ins[0]
    if attrs.get("cats_strings"):
        cats = category_ids(b, attrs["cats_strings"])
    else:
        cats = np.asarray(attrs.get("cats_int64s", []), np.int64)
    if cats.size == 0:
        raise ModelError(f"{b.where}: the encoder has no categories")
    table = _const("cats", cats, x.dtype) if x.dtype == pg.I64 else \
        _const("cats", cats.astype(np.float32), pg.F32)
    x = x if x.dtype == pg.I64 else _as_float(b, x)
    shape = x.shape + (cats.size,)
    hits = b.prog.new(f"{b.name}:hits", shape, pg.BOOL)
    elt(b, E["EQ"], [(x, contiguous(x.shape) + [0], 0), (table, [0] * len(x.shape) + [1], 0)],
        hits, shape)
    out = b.out(0, shape, pg.F32)
    elt(b, E["CAST"], [(hits, contiguous(shape), 0)], out, shape)
    return [out]


@handler("LabelEncoder")
def label_encoder(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    x = ins[0]
    if "keys_strings" in attrs:  # the input holds category indices: keys as indices too
        attrs = {**attrs, "keys_int64s": category_ids(b, attrs["keys_strings"])}
    key_kind = "int64s" if "keys_int64s" in attrs else "floats" if "keys_floats" in attrs \
        else None
    value_kind = "int64s" if "values_int64s" in attrs else "floats" if "values_floats" in \
        attrs else None
    if key_kind is None or value_kind is None or x.dtype == pg.BOOL:
        raise ModelError(f"{b.where}: string keys or values are not supported (numbers are)")
    keys = np.asarray(attrs[f"keys_{key_kind}"])
    values = np.asarray(attrs[f"values_{value_kind}"])
    if keys.size != values.size or keys.size == 0:
        raise ModelError(f"{b.where}: {keys.size} keys for {values.size} values")
    out_dtype = pg.I64 if value_kind == "int64s" else pg.F32
    default = int(attrs.get("default_int64", -1)) if out_dtype == pg.I64 else \
        float(attrs.get("default_float", -0.0))
    if "default_tensor" in attrs:
        from onnx import numpy_helper

        default = numpy_helper.to_array(attrs["default_tensor"]).reshape(-1)[0]
    key_dtype = pg.I64 if key_kind == "int64s" else pg.F32
    if x.dtype != key_dtype:
        x = ops.elementwise_to(b, E["CAST"], x, key_dtype)
    n, k = x.size, keys.size
    hits = b.prog.new(f"{b.name}:hits", (n, k + 1), pg.BOOL)
    ops.fill(b, hits, 1)  # the last column: no key matched, the default
    table = _const("keys", keys, key_dtype)
    elt(b, E["EQ"], [(x, [1, 0], 0), (table, [0, 1], 0)], hits, (n, k), [k + 1, 1])
    first = b.prog.new(f"{b.name}:index", (n,), pg.I64)
    ops.emit_arg(b, hits, 1, first)
    answers = _const("values", np.append(values, default), out_dtype)
    out = b.out(0, x.shape, out_dtype)
    b.prog.emit(pg.OP_GATHER, [1, k + 1, 1, n, pg.ESIZE[out_dtype], b.ref(answers),
                               b.prog.ref(first), b.prog.ref(out)])
    return [out]


def category_ids(b: object, strings: list) -> np.ndarray:
    """Categories (strings) as the indices string inputs are read as."""
    return np.array([b.categories[s.decode("utf-8", "replace") if isinstance(s, bytes) else s]
                     for s in strings], np.int64)


@handler("CategoryMapper")
def category_mapper(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    """Strings to integers (the other way would answer strings: not supported)."""
    if ins[0].name not in b.strings:
        raise ModelError(f"{b.where}: integers to strings are not supported")
    return label_encoder(b, node, ins, {"keys_strings": attrs.get("cats_strings", []),
                                        "values_int64s": attrs.get("cats_int64s", []),
                                        "default_int64": attrs.get("default_int64", -1)})


def _kernel_matrix(b: object, x: Tensor, n: int, f: int, vectors: np.ndarray,
                   attrs: dict) -> Tensor:
    """K(x, sv) for each row and support vector: [n, s]."""
    kind = text(attrs.get("kernel_type"), "LINEAR")
    params = floats(attrs, "kernel_params", [0.0, 0.0, 3.0])
    gamma, coef0, degree = (float(v) for v in (list(params) + [0.0, 0.0, 3.0])[:3])
    s = vectors.shape[0]
    sv = _const("support_vectors", np.ascontiguousarray(vectors.T), pg.F32)  # [f, s]
    dots = b.prog.new(f"{b.name}:dots", (n, s), pg.F32)
    if kind == "RBF":  # exp(-gamma |x - v|^2) = exp(2g x.v - g|x|^2 - g|v|^2)
        emit_gemm(b, x, (f, 1), sv, dots, n, s, f, alpha=2 * gamma,
                  bias=_const("norms", -gamma * (vectors.astype(np.float64) ** 2).sum(1),
                              pg.F32), bias_strides=(0, 1))
        norms = b.prog.new(f"{b.name}:xnorm", (n, 1), pg.F32)
        b.prog.emit(pg.OP_REDUCE, [n, f, 1, ops.R["ReduceSumSquare"], pg.F32, b.ref(x),
                                  b.prog.ref(norms)])
        scale = _const("gamma", [gamma], pg.F32)
        scaled = b.prog.new(f"{b.name}:gx", (n, 1), pg.F32)
        elt(b, E["MUL"], [(norms, [1, 0], 0), (scale, [0, 0], 0)], scaled, (n, 1))
        arg = b.prog.new(f"{b.name}:arg", (n, s), pg.F32)
        elt(b, E["SUB"], [(dots, [s, 1], 0), (scaled, [1, 0], 0)], arg, (n, s))
        elt(b, E["MIN"], [(arg, [s, 1], 0), (_const("zero", [0.0], pg.F32), [0, 0], 0)],
            arg, (n, s))  # rounding must not make a distance negative
        out = b.prog.new(f"{b.name}:k", (n, s), pg.F32)
        elt(b, E["EXP"], [(arg, [s, 1], 0)], out, (n, s))
        return out
    emit_gemm(b, x, (f, 1), sv, dots, n, s, f, alpha=gamma if kind != "LINEAR" else 1.0,
              bias=_const("coef0", [coef0 if kind != "LINEAR" else 0.0], pg.F32),
              bias_strides=(0, 0))
    if kind == "LINEAR":
        return dots
    out = b.prog.new(f"{b.name}:k", (n, s), pg.F32)
    if kind == "POLY":
        elt(b, E["POW"], [(dots, [s, 1], 0), (_const("degree", [degree], pg.F32), [0, 0], 0)],
            out, (n, s))
    elif kind == "SIGMOID":
        elt(b, E["TANH"], [(dots, [s, 1], 0)], out, (n, s))
    else:
        raise ModelError(f"{b.where}: kernel_type {kind} is not supported")
    return out


@handler("SVMRegressor")
def svm_regressor(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    x, n, f = features(b, ins[0])
    vectors = floats(attrs, "support_vectors")
    coef = floats(attrs, "coefficients")
    count = int(attrs.get("n_supports", 0))
    if int(attrs.get("one_class", 0)):
        raise ModelError(f"{b.where}: one-class SVMs are not supported")
    rho = floats(attrs, "rho", [0.0])
    if count == 0:  # a linear SVM: the coefficients are the weights
        vectors, count = coef.reshape(1, -1), 1
        coef = np.ones(1, np.float32)
    if vectors.size != count * f or coef.size != count:
        raise ModelError(f"{b.where}: {vectors.size} support vector values for {count} "
                         f"vectors of {f} features")
    k = _kernel_matrix(b, x, n, f, vectors.reshape(count, f), attrs)
    scores = b.prog.new(f"{b.name}:scores", (n, 1), pg.F32)
    emit_gemm(b, k, (count, 1), _const("coef", coef.reshape(count, 1), pg.F32), scores, n, 1,
              count, bias=_const("rho", rho[:1], pg.F32), bias_strides=(0, 0))
    return [post_transform(b, scores, text(attrs.get("post_transform"), "NONE"), 0)]
