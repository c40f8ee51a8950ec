"""ai.onnx.ml operators: linear models and scalers lowered to the core kernels,
tree ensembles to the kernels' tree walker, ZipMap to the probability tensor.

Post-transforms and the binary special cases follow onnxruntime's
implementation (ml_common.h), which is what scikit-learn models converted by
skl2onnx are checked against.
"""

from __future__ import annotations

import numpy as np

from wasmq.toolchain.model import ops
from wasmq.toolchain.model import program as pg
from wasmq.toolchain.model.errors import ModelError
from wasmq.toolchain.model.ops import E, Handler, contiguous, elt, emit_arg, emit_gemm
from wasmq.toolchain.model.program import Tensor

HANDLERS: dict[str, Handler] = {}
MODES = {"LEAF": 0, "BRANCH_LEQ": 1, "BRANCH_LT": 2, "BRANCH_GTE": 3, "BRANCH_GT": 4,
         "BRANCH_EQ": 5, "BRANCH_NEQ": 6}
AGGREGATE = {"SUM": 0, "AVERAGE": 1, "MIN": 2, "MAX": 3}
handler = ops.registrar(HANDLERS)


def text(value: object, default: str = "") -> str:
    if value is None:
        return default
    return value.decode() if isinstance(value, bytes) else str(value)


def floats(attrs: dict, name: str, default: list | None = None) -> np.ndarray:
    if name in attrs:
        return np.asarray(attrs[name], np.float32).reshape(-1)
    tensor = attrs.get(name + "_as_tensor")
    if tensor is not None:
        from onnx import numpy_helper

        return numpy_helper.to_array(tensor).astype(np.float32).reshape(-1)
    return np.asarray(default if default is not None else [], np.float32)


def features(b: object, x: Tensor) -> tuple[Tensor, int, int]:
    """X as [N, F] float32 (ML operators take a 1-d X as one sample)."""
    if x.dtype == pg.I64:
        x = ops.elementwise_to(b, E["CAST"], x, pg.F32)
    ops.need_dtype(b, x, pg.F32)
    if len(x.shape) == 1:
        return b.prog.alias(x, x.name, (1, x.shape[0])), 1, x.shape[0]
    if len(x.shape) != 2:
        raise ModelError(f"{b.where}: X must be 2-d, it is {x.shape}")
    return x, x.shape[0], x.shape[1]


def post_transform(b: object, scores: Tensor, transform: str, out_index: int | None) -> Tensor:
    """Scores after NONE / LOGISTIC / SOFTMAX / PROBIT, into output out_index if given."""
    n, t = scores.shape

    def target() -> Tensor:
        if out_index is None:
            return b.prog.new(f"{b.name}:post", scores.shape, pg.F32)
        return b.out(out_index, scores.shape, pg.F32)

    if transform == "NONE":
        if out_index is None:
            return scores
        return b.alias(scores, out_index, scores.shape)
    out = target()
    if transform == "SOFTMAX":
        ops.emit_softmax(b, scores, out, n, t, 1)
    elif transform in ("LOGISTIC", "PROBIT"):
        elt(b, E["SIGMOID" if transform == "LOGISTIC" else "PROBIT"],
            [(scores, contiguous(scores.shape), 0)], out, scores.shape)
    else:
        raise ModelError(f"{b.where}: post_transform {transform} is not supported")
    return out


def labels_from(b: object, scores: Tensor, classes: np.ndarray, index: int) -> Tensor:
    """The label of the highest score: ArgMax, then Gather of the class labels."""
    n = scores.shape[0]
    arg = b.prog.new(f"{b.name}:argmax", (n,), pg.I64)
    emit_arg(b, scores, 1, arg)
    out = b.out(index, (n,), pg.I64)
    table = Tensor("classes", classes.shape, pg.I64, const=classes.astype(np.int64))
    b.prog.emit(pg.OP_GATHER, [1, classes.size, 1, n, 8, b.ref(table), b.prog.ref(arg),
                               b.prog.ref(out)])
    return out


def class_labels(b: object, attrs: dict) -> np.ndarray:
    """The class labels as int64; string labels become their indices, and the label
    output (the node's first) is written as those strings where it leaves the model."""
    if attrs.get("classlabels_strings"):
        labels = [text(v) for v in attrs["classlabels_strings"]]
        if any("\0" in label or len(label) > 256 for label in labels):
            raise ModelError(f"{b.where}: a class label holds a NUL or is over 256 "
                             f"characters")
        b.labelled[b.node.output[0]] = labels
        return np.arange(len(labels), dtype=np.int64)
    ints = attrs.get("classlabels_ints", attrs.get("classlabels_int64s"))
    if ints is None or len(ints) == 0:
        raise ModelError(f"{b.where}: the classifier has no class labels")
    return np.asarray(ints, np.int64)


def binary_probabilities(b: object, score: Tensor, transform: str, mixed: bool,
                         out_index: int) -> Tensor:
    """One score column to the two columns onnxruntime answers."""
    n = score.shape[0]
    out = b.out(out_index, (n, 2), pg.F32)
    ostr = [2, 1]
    col = [(score, [1, 0], 0)]
    if transform == "LOGISTIC":
        neg = b.prog.new(f"{b.name}:neg", (n, 1), pg.F32)
        elt(b, E["NEG"], col, neg, (n, 1))
        elt(b, E["SIGMOID"], [(neg, [1, 0], 0)], out, (n, 1), ostr, 0)
        elt(b, E["SIGMOID"], col, out, (n, 1), ostr, 4)
    elif transform == "NONE":
        if mixed:
            elt(b, E["NEG"], col, out, (n, 1), ostr, 0)
        else:
            one = Tensor("one", (1,), pg.F32, const=np.ones(1, np.float32))
            elt(b, E["SUB"], [(one, [0, 0], 0)] + col, out, (n, 1), ostr, 0)
        elt(b, E["COPY"], col, out, (n, 1), ostr, 4)
    else:
        raise ModelError(f"{b.where}: post_transform {transform} on a binary classifier with "
                         f"one score is not supported")
    return out


# ---------------------------------------------------------------- linear models
def linear(b: object, x: Tensor, coef: np.ndarray, intercepts: np.ndarray,
           targets: int) -> Tensor:
    xs, n, f = features(b, x)
    if coef.size != targets * f:
        raise ModelError(f"{b.where}: {coef.size} coefficients do not fit {targets} targets "
                         f"of {f} features")
    w = Tensor("coef", (f, targets), pg.F32,
               const=np.ascontiguousarray(coef.reshape(targets, f).T))
    scores = b.prog.new(f"{b.name}:scores", (n, targets), pg.F32)
    bias = None
    if intercepts.size:
        bias = Tensor("intercepts", (targets,), pg.F32, const=intercepts.astype(np.float32))
    emit_gemm(b, xs, (f, 1), w, scores, n, targets, f, bias=bias, bias_strides=(0, 1))
    return scores


@handler("LinearRegressor")
def linear_regressor(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    targets = int(attrs.get("targets", 1))
    scores = linear(b, ins[0], floats(attrs, "coefficients"), floats(attrs, "intercepts"),
                    targets)
    return [post_transform(b, scores, text(attrs.get("post_transform"), "NONE"), 0)]


@handler("LinearClassifier")
def linear_classifier(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    classes = class_labels(b, attrs)
    intercepts = floats(attrs, "intercepts")
    count = intercepts.size or floats(attrs, "coefficients").size // max(1, ins[0].shape[-1])
    scores = linear(b, ins[0], floats(attrs, "coefficients"), intercepts, count)
    transform = text(attrs.get("post_transform"), "NONE")
    n = scores.shape[0]
    if count == 1:  # binary: the label is the sign of the one score
        if classes.size != 2:
            raise ModelError(f"{b.where}: one score column with {classes.size} classes")
        positive = b.prog.new(f"{b.name}:positive", (n, 1), pg.BOOL)
        zero = Tensor("zero", (1,), pg.F32, const=np.zeros(1, np.float32))
        elt(b, E["GT"], [(scores, [1, 0], 0), (zero, [0, 0], 0)], positive, (n, 1))
        label = b.out(0, (n,), pg.I64)
        lo = Tensor("lo", (1,), pg.I64, const=classes[:1])
        hi = Tensor("hi", (1,), pg.I64, const=classes[1:])
        elt(b, E["WHERE"], [(positive, [1], 0), (hi, [0], 0), (lo, [0], 0)], label, (n,))
        if transform == "NONE":
            probs = binary_probabilities(b, scores, "NONE", False, 1)
        else:
            post = post_transform(b, scores, transform, None)
            probs = binary_probabilities(b, post, "NONE", False, 1)
        return [label, probs]
    label = labels_from(b, scores, classes, 0)
    return [label, post_transform(b, scores, transform, 1)]


@handler("Scaler")
def scaler(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    x = ins[0]
    if x.dtype == pg.I64:
        x = ops.elementwise_to(b, E["CAST"], x, pg.F32)
    f = x.shape[-1]
    offset, scale = floats(attrs, "offset", [0.0]), floats(attrs, "scale", [1.0])
    shape = x.shape
    mid = b.prog.new(f"{b.name}:centred", shape, pg.F32)
    off = Tensor("offset", (offset.size,), pg.F32, const=offset)
    sc = Tensor("scale", (scale.size,), pg.F32, const=scale)
    if offset.size not in (1, f) or scale.size not in (1, f):
        raise ModelError(f"{b.where}: offset and scale must have 1 or {f} values")
    elt(b, E["SUB"], [(x, contiguous(shape), 0),
                      (off, ops.broadcast_strides(off.shape, shape), 0)], mid, shape)
    out = b.out(0, shape, pg.F32)
    elt(b, E["MUL"], [(mid, contiguous(shape), 0),
                      (sc, ops.broadcast_strides(sc.shape, shape), 0)], out, shape)
    return [out]


@handler("Normalizer")
def normalizer(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    x, n, f = features(b, ins[0])
    norm = text(attrs.get("norm"), "MAX")
    mode = {"MAX": ops.R["ReduceMax"], "L1": ops.R["ReduceL1"], "L2": ops.R["ReduceL2"]}.get(norm)
    if mode is None:
        raise ModelError(f"{b.where}: norm {norm} is not supported")
    total = b.prog.new(f"{b.name}:norm", (n, 1), pg.F32)
    b.prog.emit(pg.OP_REDUCE, [n, f, 1, mode, pg.F32, b.ref(x), b.prog.ref(total)])
    # a row of zeros (an empty text's counts) stays zeros, as onnxruntime answers
    zero = Tensor("zero", (1,), pg.F32, const=np.zeros(1, np.float32))
    one = Tensor("one", (1,), pg.F32, const=np.ones(1, np.float32))
    empty = b.prog.new(f"{b.name}:empty", (n, 1), pg.BOOL)
    elt(b, E["EQ"], [(total, [1, 0], 0), (zero, [0, 0], 0)], empty, (n, 1))
    elt(b, E["WHERE"], [(empty, [1, 0], 0), (one, [0, 0], 0), (total, [1, 0], 0)], total,
        (n, 1))
    out = b.out(0, ins[0].shape, pg.F32)
    elt(b, E["DIV"], [(x, [f, 1], 0), (total, [1, 0], 0)], out, (n, f))
    return [out]


@handler("ZipMap")
def zipmap(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    """The probabilities stay a tensor: one row a sample, one column a class."""
    return [b.alias(ins[0], 0, ins[0].shape)]


@handler("ArrayFeatureExtractor")
def array_feature_extractor(b: object, node: object, ins: list[Tensor], attrs: dict
                            ) -> list[Tensor]:
    x, idx = ins
    if idx.is_const:
        idx = Tensor(idx.name, idx.shape, pg.I64, const=idx.const.astype(np.int64))
    ops.need_dtype(b, idx, pg.I64)
    last = x.shape[-1]
    outer = x.size // max(last, 1)
    out = b.out(0, x.shape[:-1] + (idx.size,), x.dtype)
    b.prog.emit(pg.OP_GATHER, [outer, last, 1, idx.size, pg.ESIZE[x.dtype], b.ref(x),
                               b.ref(idx), b.prog.ref(out)])
    return [out]


# ---------------------------------------------------------------- tree ensembles
def pack_trees(b: object, attrs: dict, prefix: str, n_features: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int, list[int]]:
    """(roots, nodes, leaves, number of trees, targets, target ids seen) for the kernel."""
    tree_ids = list(attrs["nodes_treeids"])
    node_ids = list(attrs["nodes_nodeids"])
    feats = list(attrs["nodes_featureids"])
    values = floats(attrs, "nodes_values")
    modes = [text(m) for m in attrs["nodes_modes"]]
    trues = list(attrs["nodes_truenodeids"])
    falses = list(attrs["nodes_falsenodeids"])
    missing = list(attrs.get("nodes_missing_value_tracks_true", [0] * len(tree_ids)))
    index = {(t, n): i for i, (t, n) in enumerate(zip(tree_ids, node_ids, strict=True))}
    nodes = np.zeros((len(tree_ids), 6), np.int32)
    leaf_of: dict[int, list[tuple[int, float]]] = {}
    w_trees = list(attrs[f"{prefix}_treeids"])
    w_nodes = list(attrs[f"{prefix}_nodeids"])
    w_ids = list(attrs[f"{prefix}_ids"])
    w_vals = floats(attrs, f"{prefix}_weights")
    for t, n, k, w in zip(w_trees, w_nodes, w_ids, w_vals, strict=True):
        if (t, n) not in index:
            raise ModelError(f"{b.where}: a weight names tree {t} node {n}, which does not "
                             f"exist")
        leaf_of.setdefault(index[(t, n)], []).append((int(k), float(w)))
    leaves: list[int] = [0]  # an empty leaf at 0
    for i, (t, mode) in enumerate(zip(tree_ids, modes, strict=True)):
        if mode not in MODES:
            raise ModelError(f"{b.where}: node mode {mode} is not supported")
        code = MODES[mode] | (256 if missing[i] else 0)
        leaf_at = 0
        if mode == "LEAF":
            if i in leaf_of:
                leaf_at = len(leaves)
                leaves.append(len(leaf_of[i]))
                for k, w in leaf_of[i]:
                    leaves += [k, int(pg.f32_bits(w))]
            nodes[i] = [0, 0, 0, i, i, leaf_at]
            continue
        f = int(feats[i])
        if not 0 <= f < n_features:
            raise ModelError(f"{b.where}: a node reads feature {f} of {n_features}")
        try:
            ti, fi = index[(t, trues[i])], index[(t, falses[i])]
        except KeyError:
            raise ModelError(f"{b.where}: tree {t} has a branch to a missing node") from None
        nodes[i] = [f, pg.f32_bits(values[i]), code, ti, fi, 0]
    children = {(t, c) for t, m, a, z in zip(tree_ids, modes, trues, falses, strict=True)
                if m != "LEAF" for c in (a, z)}
    roots: dict[int, int] = {}
    for i, (t, n) in enumerate(zip(tree_ids, node_ids, strict=True)):
        if (t, n) not in children and t not in roots:
            roots[t] = i
    if len(roots) != len(set(tree_ids)):
        raise ModelError(f"{b.where}: a tree has no root")
    _check_acyclic(b, nodes, list(roots.values()))
    targets = (max(w_ids) + 1) if w_ids else 1
    return (np.array(list(roots.values()), np.int32), nodes, np.array(leaves, np.int32),
            len(roots), int(targets), sorted(set(int(k) for k in w_ids)))


def _check_acyclic(b: object, nodes: np.ndarray, roots: list[int]) -> None:
    """A tree that loops would never finish a prediction: refuse it at build time."""
    state = np.zeros(len(nodes), np.int8)  # 0 new, 1 on the path, 2 done
    for root in roots:
        stack = [(root, False)]
        while stack:
            i, leaving = stack.pop()
            if leaving:
                state[i] = 2
                continue
            if state[i] == 1:
                raise ModelError(f"{b.where}: a tree's branches form a cycle")
            if state[i] == 2:
                continue
            state[i] = 1
            stack.append((i, True))
            if nodes[i][2] != 0:
                for child in (nodes[i][3], nodes[i][4]):
                    if state[child] == 1:
                        raise ModelError(f"{b.where}: a tree's branches form a cycle")
                    stack.append((int(child), False))


def run_trees(b: object, x: Tensor, attrs: dict, prefix: str, targets: int | None,
              aggregate: str) -> tuple[Tensor, list[int]]:
    xs, n, f = features(b, x)
    roots, nodes, leaves, ntrees, seen, ids = pack_trees(b, attrs, prefix, f)
    t = targets or seen
    base = floats(attrs, "base_values")
    if base.size not in (0, t):
        raise ModelError(f"{b.where}: {base.size} base values for {t} targets")
    base = base if base.size else np.zeros(t, np.float32)
    scores = b.prog.new(f"{b.name}:scores", (n, t), pg.F32)
    scratch = b.prog.scratch(8 * t + 8)
    if aggregate not in AGGREGATE:
        raise ModelError(f"{b.where}: aggregate_function {aggregate} is not supported")
    b.prog.emit(pg.OP_TREES, [n, f, t, ntrees, AGGREGATE[aggregate], b.ref(xs),
                              b.prog.ref(scores), b.prog.cref(roots), b.prog.cref(nodes),
                              b.prog.cref(leaves), b.prog.cref(base.astype(np.float32)),
                              b.prog.ref(scratch)])
    return scores, ids


@handler("TreeEnsembleRegressor")
def tree_regressor(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    scores, _ = run_trees(b, ins[0], attrs, "target", int(attrs.get("n_targets", 1)),
                          text(attrs.get("aggregate_function"), "SUM"))
    return [post_transform(b, scores, text(attrs.get("post_transform"), "NONE"), 0)]


@handler("TreeEnsembleClassifier")
def tree_classifier(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    classes = class_labels(b, attrs)
    transform = text(attrs.get("post_transform"), "NONE")
    ids = set(int(k) for k in attrs["class_ids"])
    binary = classes.size == 2 and len(ids) == 1
    targets = 1 if binary else classes.size
    if binary:  # every weight on one class: that score decides between the two
        attrs = dict(attrs, class_ids=[0] * len(attrs["class_ids"]))
    scores, _ = run_trees(b, ins[0], attrs, "class", targets, "SUM")
    n = scores.shape[0]
    if not binary:
        label = labels_from(b, scores, classes, 0)
        return [label, post_transform(b, scores, transform, 1)]
    weights = floats(attrs, "class_weights")
    mixed = bool((weights < 0).any())
    threshold = 0.0 if (mixed or transform == "LOGISTIC") else 0.5
    positive = b.prog.new(f"{b.name}:positive", (n, 1), pg.BOOL)
    cut = Tensor("cut", (1,), pg.F32, const=np.array([threshold], np.float32))
    elt(b, E["GT"], [(scores, [1, 0], 0), (cut, [0, 0], 0)], positive, (n, 1))
    label = b.out(0, (n,), pg.I64)
    lo = Tensor("lo", (1,), pg.I64, const=classes[:1])
    hi = Tensor("hi", (1,), pg.I64, const=classes[1:])
    elt(b, E["WHERE"], [(positive, [1], 0), (hi, [0], 0), (lo, [0], 0)], label, (n,))
    return [label, binary_probabilities(b, scores, transform, mixed, 1)]


# ---------------------------------------------------------------- ai.onnx.ml opset 5
UNIFIED_MODES = {0: MODES["BRANCH_LEQ"], 1: MODES["BRANCH_LT"], 2: MODES["BRANCH_GTE"],
                 3: MODES["BRANCH_GT"], 4: MODES["BRANCH_EQ"], 5: MODES["BRANCH_NEQ"]}
MEMBER = 6
UNIFIED_AGGREGATE = {0: "AVERAGE", 1: "SUM", 2: "MIN", 3: "MAX"}
UNIFIED_TRANSFORM = {0: "NONE", 1: "SOFTMAX", 2: "LOGISTIC", 3: "SOFTMAX_ZERO", 4: "PROBIT"}


def _tensor_values(attrs: dict, name: str) -> np.ndarray:
    from onnx import numpy_helper

    value = attrs.get(name)
    return numpy_helper.to_array(value).reshape(-1) if value is not None else np.zeros(0)


def pack_unified(b: object, attrs: dict, n_features: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """TreeEnsemble's arrays (interior nodes, leaves apart, roots by index) in the tree
    kernel's layout: interior nodes first, then one node a leaf; a set-membership node
    becomes a chain of BRANCH_EQ nodes, one a member (NaN separates the sets)."""
    feats = [int(f) for f in attrs.get("nodes_featureids", [])]
    count = len(feats)
    modes = _tensor_values(attrs, "nodes_modes").astype(np.int64)
    splits = _tensor_values(attrs, "nodes_splits").astype(np.float32)
    trues, falses = list(attrs.get("nodes_truenodeids", [])), list(attrs.get(
        "nodes_falsenodeids", []))
    true_leaf, false_leaf = list(attrs.get("nodes_trueleafs", [])), list(attrs.get(
        "nodes_falseleafs", []))
    missing = list(attrs.get("nodes_missing_value_tracks_true", [0] * count))
    targets = [int(t) for t in attrs.get("leaf_targetids", [])]
    weights = _tensor_values(attrs, "leaf_weights").astype(np.float32)
    roots = [int(r) for r in attrs.get("tree_roots", [])]
    lengths = {len(modes), len(trues), len(falses), len(true_leaf), len(false_leaf),
               len(missing)}
    if lengths != {count} or len(targets) != len(weights) or not roots:
        raise ModelError(f"{b.where}: the tree arrays disagree in length")
    members = _tensor_values(attrs, "membership_values").astype(np.float32)
    sets: list[list[float]] = []
    current: list[float] = []
    for v in members.tolist():
        if np.isnan(v):
            sets.append(current)
            current = []
        else:
            current.append(v)
    if current:
        sets.append(current)
    leaf_base = count
    rows: list[list[int]] = [[0, 0, 0, 0, 0, 0] for _ in range(count)]
    leaves: list[int] = [0]

    def child(i: int, is_leaf: int, target: int) -> int:
        limit = len(targets) if is_leaf else count
        if not 0 <= target < limit:
            raise ModelError(f"{b.where}: node {i} branches to {target}, outside the "
                             f"{'leaves' if is_leaf else 'nodes'}")
        return leaf_base + target if is_leaf else target

    member_at = 0
    extra: list[list[int]] = []  # chain nodes of set memberships, placed after the leaves
    for i in range(count):
        f = feats[i]
        if not 0 <= f < n_features:
            raise ModelError(f"{b.where}: a node reads feature {f} of {n_features}")
        t, e = child(i, true_leaf[i], trues[i]), child(i, false_leaf[i], falses[i])
        flag = 256 if missing[i] else 0
        mode = int(modes[i])
        if mode in UNIFIED_MODES:
            if i >= len(splits):
                raise ModelError(f"{b.where}: node {i} has no split value")
            rows[i] = [f, pg.f32_bits(float(splits[i])), UNIFIED_MODES[mode] | flag, t, e, 0]
            continue
        if mode != MEMBER or member_at >= len(sets) or not sets[member_at]:
            raise ModelError(f"{b.where}: node {i} has mode {mode}, or a membership set that "
                             f"is missing")
        values = sets[member_at]
        member_at += 1
        chain = [i] + [-1] * (len(values) - 1)
        for k in range(1, len(values)):
            chain[k] = leaf_base + len(targets) + len(extra)
            extra.append([0] * 6)
        for k, v in enumerate(values):
            nxt = chain[k + 1] if k + 1 < len(values) else e
            row = [f, pg.f32_bits(v), MODES["BRANCH_EQ"] | flag, t, nxt, 0]
            if k == 0:
                rows[i] = row
            else:
                extra[chain[k] - leaf_base - len(targets)] = row
    for j, (target, weight) in enumerate(zip(targets, weights.tolist(), strict=True)):
        rows.append([0, 0, 0, leaf_base + j, leaf_base + j, len(leaves)])
        leaves += [1, target, pg.f32_bits(weight)]
    rows += extra
    nodes = np.array(rows, np.int32).reshape(-1, 6)
    if any(not 0 <= r < count for r in roots):
        raise ModelError(f"{b.where}: a tree root is outside the nodes")
    _check_acyclic(b, nodes, roots)
    return np.array(roots, np.int32), nodes, np.array(leaves, np.int32), len(roots)


@handler("TreeEnsemble")
def tree_ensemble(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    """ai.onnx.ml opset 5's one tree operator, run by the same tree walker."""
    xs, n, f = features(b, ins[0])
    roots, nodes, leaves, ntrees = pack_unified(b, attrs, f)
    t = int(attrs.get("n_targets", 1))
    if t < 1 or any(not 0 <= int(k) < t for k in attrs.get("leaf_targetids", [])):
        raise ModelError(f"{b.where}: a leaf's target is outside n_targets {t}")
    aggregate = UNIFIED_AGGREGATE.get(int(attrs.get("aggregate_function", 1)))
    transform = UNIFIED_TRANSFORM.get(int(attrs.get("post_transform", 0)))
    if aggregate is None or transform is None:
        raise ModelError(f"{b.where}: aggregate_function or post_transform out of range")
    scores = b.prog.new(f"{b.name}:scores", (n, t), pg.F32)
    scratch = b.prog.scratch(8 * t + 8)
    b.prog.emit(pg.OP_TREES, [n, f, t, ntrees, AGGREGATE[aggregate], b.ref(xs),
                              b.prog.ref(scores), b.prog.cref(roots), b.prog.cref(nodes),
                              b.prog.cref(leaves), b.prog.cref(np.zeros(t, np.float32)),
                              b.prog.ref(scratch)])
    return [post_transform(b, scores, transform, 0)]
