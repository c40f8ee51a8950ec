"""ai.onnx.ml preprocessing and kernel machines, composed from the core kernels.

What skl2onnx writes for tabular pipelines: Binarizer, Imputer (SimpleImputer),
OneHotEncoder, LabelEncoder and CategoryMapper (over numbers, or strings read as
category indices), SVMRegressor (SVR) and SVMClassifier (SVC). A lookup
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
    elif text(attrs.get("kernel_type"), "LINEAR") == "LINEAR" and vectors.size == count * f:
        # folded in double into one weight vector (see svm_classifier)
        vectors = (vectors.reshape(count, f).astype(np.float64).T @ coef).reshape(1, f)
        vectors, count, coef = vectors.astype(np.float32), 1, np.ones(1, np.float32)
    if vectors.size != count * f or coef.size != count:
        raise ModelError(f"{b.where}: {vectors.size} support vector values for {count} "
                         f"vectors of {f} features")
    k = _kernel_matrix(b, x, n, f, vectors.reshape(count, f), attrs)
    scores = b.prog.new(f"{b.name}:scores", (n, 1), pg.F32)
    emit_gemm(b, k, (count, 1), _const("coef", coef.reshape(count, 1), pg.F32), scores, n, 1,
              count, bias=_const("rho", rho[:1], pg.F32), bias_strides=(0, 0))
    return [post_transform(b, scores, text(attrs.get("post_transform"), "NONE"), 0)]


@handler("SVMClassifier")
def svm_classifier(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    """One-vs-one as onnxruntime: the pairwise decisions are one GEMM against the kernel
    matrix, the votes a second (a win for i is a row of +1 at i, -1 at j, plus the -1s
    back as a bias), the label the first class with most votes. Probabilities (SVC with
    probability=True): each pair's Platt sigmoid, coupled as libsvm does (`_coupled`)."""
    from wasmq.toolchain.model.ml import class_labels

    x, n, f = features(b, ins[0])
    classes = class_labels(b, attrs)
    per_class = [int(v) for v in attrs.get("vectors_per_class", [])]
    count = sum(per_class)
    if count == 0:
        raise ModelError(f"{b.where}: a linear SVMClassifier (no support vectors) is not "
                         f"supported")
    c = len(per_class)
    if c != classes.size:
        raise ModelError(f"{b.where}: {c} classes of support vectors, {classes.size} labels")
    coef = floats(attrs, "coefficients").reshape(-1, count)
    rho = floats(attrs, "rho")
    prob_a, prob_b = floats(attrs, "prob_a"), floats(attrs, "prob_b")
    if c == 2 and not prob_a.size and (floats(attrs, "coefficients") >= 0).all():
        raise ModelError(f"{b.where}: a binary SVMClassifier with only positive "
                         f"coefficients is not supported")
    vectors = floats(attrs, "support_vectors").reshape(count, f)
    starts = np.cumsum([0] + per_class)
    pairs = [(i, j) for i in range(c) for j in range(i + 1, c)]
    weights = np.zeros((count, len(pairs)), np.float32)
    wins = np.zeros((len(pairs), c), np.float32)
    for p, (i, j) in enumerate(pairs):
        weights[starts[i]:starts[i + 1], p] = coef[j - 1, starts[i]:starts[i + 1]]
        weights[starts[j]:starts[j + 1], p] = coef[i, starts[j]:starts[j + 1]]
        wins[p, i], wins[p, j] = 1.0, -1.0
    if rho.size != len(pairs):
        raise ModelError(f"{b.where}: {rho.size} rho values for {len(pairs)} class pairs")
    decisions = b.prog.new(f"{b.name}:decisions", (n, len(pairs)), pg.F32)
    if text(attrs.get("kernel_type"), "LINEAR") == "LINEAR":
        # the support vectors folded into one weight a pair, in double: summing
        # coefficient times kernel values at run time cancels away float32's digits
        folded = vectors.astype(np.float64).T @ weights.astype(np.float64)
        emit_gemm(b, x, (f, 1), _const("pairs", folded, pg.F32), decisions, n, len(pairs), f,
                  bias=_const("rho", rho, pg.F32), bias_strides=(0, 1))
    else:
        k = _kernel_matrix(b, x, n, f, vectors, attrs)
        emit_gemm(b, k, (count, 1), _const("pairs", weights, pg.F32), decisions, n,
                  len(pairs), count, bias=_const("rho", rho, pg.F32), bias_strides=(0, 1))
    won = b.prog.new(f"{b.name}:won", (n, len(pairs)), pg.BOOL)
    elt(b, E["GT"], [(decisions, [len(pairs), 1], 0), (_const("zero", [0.0], pg.F32),
                                                       [0, 0], 0)], won, (n, len(pairs)))
    won_f = ops.elementwise_to(b, E["CAST"], won, pg.F32)
    votes = b.prog.new(f"{b.name}:votes", (n, c), pg.F32)
    losses = np.zeros(c, np.float32)
    for _, j in pairs:
        losses[j] += 1.0  # a pair its first class did not win is won by j
    emit_gemm(b, won_f, (len(pairs), 1), _const("wins", wins, pg.F32), votes, n, c,
              len(pairs), bias=_const("losses", losses, pg.F32), bias_strides=(0, 1))
    from wasmq.toolchain.model.ml import binary_probabilities, labels_from

    label = labels_from(b, votes, classes, 0)
    transform = text(attrs.get("post_transform"), "NONE")
    if prob_a.size:
        if prob_a.size != len(pairs) or prob_b.size != len(pairs):
            raise ModelError(f"{b.where}: {prob_a.size} prob_a and {prob_b.size} prob_b "
                             f"values for {len(pairs)} class pairs")
        if transform != "NONE":
            raise ModelError(f"{b.where}: post_transform {transform} over probabilities is "
                             f"not supported")
        return [label, _coupled(b, decisions, prob_a, prob_b, n, c)]
    if len(pairs) == 1:  # one decision: answered as [-s, s]
        return [label, binary_probabilities(b, decisions, transform, True, 1)]
    return [label, post_transform(b, decisions, transform, 1)]


def _coupled(b: object, decisions: Tensor, prob_a: np.ndarray, prob_b: np.ndarray, n: int,
             c: int) -> Tensor:
    """Class probabilities as onnxruntime's SVMClassifier answers them: each pair's
    decision through its Platt sigmoid, 1 - logistic(A s + B) clamped to [1e-7, 1 - 1e-7],
    then libsvm's pairwise coupling (the kernels' op_couple, iterating as it does)."""
    pairs = len(prob_a)
    shape = (n, pairs)
    arg = b.prog.new(f"{b.name}:platt", shape, pg.F32)
    row = [0, 1]
    elt(b, E["MUL"], [(decisions, [pairs, 1], 0), (_const("a", prob_a, pg.F32), row, 0)],
        arg, shape)
    elt(b, E["ADD"], [(arg, [pairs, 1], 0), (_const("b", prob_b, pg.F32), row, 0)], arg,
        shape)
    elt(b, E["NEG"], [(arg, [pairs, 1], 0)], arg, shape)
    elt(b, E["SIGMOID"], [(arg, [pairs, 1], 0)], arg, shape)
    elt(b, E["CLIP"], [(arg, [pairs, 1], 0)], arg, shape, a=1e-7, c=1 - 1e-7)
    probs = b.out(1, (n, c), pg.F32)
    scratch = b.prog.scratch(4 * (c * c + c))
    b.prog.emit(pg.OP_COUPLE, [n, c, b.prog.ref(arg), b.prog.ref(probs), b.prog.ref(scratch)])
    return probs
