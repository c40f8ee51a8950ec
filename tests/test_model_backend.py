"""ONNX's own test cases: every per-operator case (`onnx.backend.test.case`, each with
its expected outputs) and the backend test models shipped in the onnx wheel.

A case whose operators the toolchain lacks is skipped with their names, so the
coverage shows in the report (`pytest -rs`); a case of a supported operator that
the build refuses is skipped only for a refusal of a documented kind (a type, an
opset the converter cannot reach, a parameter that must be constant...), and fails
for any other. Every case that builds must answer as expected. Runs are in
process, in the worker's runtime (tests/model_runner.py), never through HTTP.
"""

from __future__ import annotations

import glob
import os
import re
import warnings

import numpy as np
import onnx
import onnx.compose
import pytest
from onnx import numpy_helper

from tests.model_runner import MAX_BYTES, outputs, request, run_wasm
from wasmq.toolchain.model import ModelError, build_model, ml, ops, support
from wasmq.toolchain.model.support import domain_of

DATA = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")
# What a refusal of a supported operator may be about: the model's types, an opset the
# converter cannot reach, a parameter the plan needs at build time, a mode not covered.
DOCUMENTED = re.compile(r"unsupported (operators|types)|opset|must be a constant|"
                        r"not supported|training|dynamic dimension|is empty|has type|"
                        r"must be (float32|int64|bool)")
FLOAT32_MAX, FLOAT32_TINY = 3.4028234663852886e38, 1.1754943508222875e-38
# Per-case slack over the case's own tolerance: the kernels compute in float32.
RTOL, ATOL = 1e-4, 1e-5
# float16 cases: a few float16 steps (one is 2^-10 relative), as intermediate values are
# kept in float32 where the case's expected values were rounded to float16 at each step
FLOAT16_RTOL, FLOAT16_ATOL = 5e-3, 1e-3


def _node_cases() -> list:
    """Each case once: an `_expanded` variant (the operator's function body, run as its
    parts) is left out where its case itself runs, to keep the suite's time."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from onnx.backend.test.case.node import collect_testcases

        cases = [c for c in collect_testcases() if c.kind == "node"]
    names = {c.name for c in cases}
    return [c for c in cases if not (c.name.endswith("_expanded") and c.name[:-9] in names
                                     and _known_case(c.name[:-9], cases))]


def _known_case(name: str, cases: list) -> bool:
    case = next(c for c in cases if c.name == name)
    return all(_known(n) for n in case.model.graph.node)



def _known(node: onnx.NodeProto) -> bool:
    domain = domain_of(node)
    return (domain == "" and node.op_type in ops.HANDLERS) or (
        domain == "ai.onnx.ml" and node.op_type in ml.HANDLERS)


def _array(value: object) -> np.ndarray:
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    return np.asarray(value)


def _runtime_inputs(model: onnx.ModelProto) -> list[str]:
    inits = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def _freeze(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The model with every input but each node's first made a constant: shapes, axes,
    pads, indices computed from static inputs (what exporters emit) rather than sent."""
    first = {n.input[0] for n in model.graph.node if n.input}
    frozen = onnx.ModelProto()
    frozen.CopyFrom(model)
    keep = []
    for vi in frozen.graph.input:
        if vi.name in feeds and vi.name not in first:
            frozen.graph.initializer.append(numpy_helper.from_array(feeds[vi.name], vi.name))
        else:
            keep.append(vi)
    del frozen.graph.input[:]
    frozen.graph.input.extend(keep)
    return frozen


def _build(model: onnx.ModelProto, feeds: dict[str, np.ndarray]
           ) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The model as it builds (its parameters frozen if the plan needs them at build
    time) and its runtime feeds; raises the build's ModelError."""
    try:
        build_model(model.SerializeToString(), max_bytes=MAX_BYTES,
                    input_shapes={k: v.shape for k, v in feeds.items()})
    except ModelError as exc:
        if "must be a constant" not in str(exc):
            raise
        model = _freeze(model, feeds)
        feeds = {k: v for k, v in feeds.items() if k in _runtime_inputs(model)}
        build_model(model.SerializeToString(), max_bytes=MAX_BYTES,
                    input_shapes={k: v.shape for k, v in feeds.items()})
    return model, feeds


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    built = build_model(model.SerializeToString(), max_bytes=MAX_BYTES,
                        input_shapes={k: v.shape for k, v in feeds.items()})
    return outputs(built, run_wasm(built.wasm, request(built, feeds, raw=True)).output)


def _compare(model: onnx.ModelProto, got: dict[str, np.ndarray], expected: list,
             rtol: float, atol: float) -> None:
    for vi, want in zip(model.graph.output, expected, strict=False):
        want = _array(want)
        value = got[vi.name].reshape(want.shape)
        if want.dtype.kind == "f":
            if want.dtype == np.float16:  # computed in float32; the case rounded each step
                rtol, atol = max(rtol, FLOAT16_RTOL), max(atol, FLOAT16_ATOL)
            np.testing.assert_allclose(value.astype(np.float64), want.astype(np.float64),
                                       rtol=rtol, atol=atol, err_msg=vi.name)
        else:
            np.testing.assert_array_equal(value, want, err_msg=vi.name)


def _skip_reason(model: onnx.ModelProto, inputs: list, expected: list) -> str | None:
    if any(isinstance(v, (list, dict)) or v is None for v in inputs + expected):
        return "unsupported: sequence, map or optional values"
    for value in map(_array, inputs + expected):
        big = np.abs(value[np.isfinite(value)]) if value.dtype == np.float64 else np.zeros(0)
        if big.size and (big.max() > FLOAT32_MAX or ((big > 0) & (big < FLOAT32_TINY)).any()):
            return "float64 values out of float32's range (doubles are computed in float32)"
    return None


def _prepare(model: onnx.ModelProto, inputs: list, expected: list
             ) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """What the case runs, or pytest.skip with why it does not build."""
    why = _skip_reason(model, inputs, expected)
    if why:
        pytest.skip(why)
    missing = sorted({n.op_type for n in model.graph.node if not _known(n)})
    feeds = dict(zip(_runtime_inputs(model), (_array(v) for v in inputs), strict=False))
    try:
        model, _ = support.convert_opsets(model)
        return _build(model, feeds)
    except ModelError as exc:
        if missing:
            pytest.skip(f"unsupported: {', '.join(missing)}")
        if not DOCUMENTED.search(str(exc)):
            raise
        pytest.skip(f"refused: {exc}")


NODE_CASES = _node_cases()
# Compiling a module costs ~0.15 s (the plan is in its data segment), so the operator
# cases run in batches: the cases of a chunk that build are merged into one model (names
# prefixed), built and run once, and each case compares its own outputs.
CHUNK = 128
MAX_BATCH_INPUTS = 16
_BATCHES: dict[int, dict[str, dict | Exception]] = {}
_PREPARED: dict[str, tuple | BaseException] = {}


def _prepared_case(case: object) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """_prepare once per case (the opset conversion is ~10 ms): the batch and the test."""
    if case.name not in _PREPARED:
        inputs, expected = case.data_sets[0]
        try:
            _PREPARED[case.name] = _prepare(case.model, list(inputs), list(expected))
        except (pytest.skip.Exception, Exception) as exc:  # noqa: BLE001 - replayed below
            _PREPARED[case.name] = exc
    got = _PREPARED[case.name]
    if isinstance(got, BaseException):
        raise got
    return got


def _batch_outputs(index: int) -> dict[str, dict | Exception]:
    chunk = index // CHUNK
    if chunk in _BATCHES:
        return _BATCHES[chunk]
    ready: list[tuple[str, onnx.ModelProto, dict]] = []
    for case in NODE_CASES[chunk * CHUNK:(chunk + 1) * CHUNK]:
        try:
            model, feeds = _prepared_case(case)
        except (pytest.skip.Exception, Exception):  # noqa: BLE001 - the case's test says
            continue
        ready.append((case.name, model, feeds))
    results: dict[str, dict | Exception] = {}
    groups: dict[tuple, list] = {}
    for name, model, feeds in ready:
        key = tuple(sorted((support.domain_of(i), i.version) for i in model.opset_import))
        mergeable = not model.functions and not any(
            a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
            for n in model.graph.node for a in n.attribute)
        if not mergeable:
            results[name] = _run_alone(model, feeds)
            continue
        group = groups.setdefault(key, [[]])
        if sum(len(f) for _, _, f in group[-1]) + len(feeds) > MAX_BATCH_INPUTS:
            group.append([])
        group[-1].append((name, model, feeds))
    for batches in groups.values():
        for batch in batches:
            results.update(_run_merged(batch))
    _BATCHES[chunk] = results
    return results


def _run_alone(model: onnx.ModelProto, feeds: dict) -> dict | Exception:
    try:
        return _run(model, feeds)
    except Exception as exc:  # noqa: BLE001 - reported by the case's own test
        return exc


def _run_merged(batch: list) -> dict[str, dict | Exception]:
    if len(batch) == 1:
        name, model, feeds = batch[0]
        return {name: _run_alone(model, feeds)}
    merged = onnx.ModelProto()
    merged.CopyFrom(batch[0][1])
    del merged.graph.node[:], merged.graph.input[:], merged.graph.output[:]
    del merged.graph.initializer[:], merged.graph.value_info[:]
    feeds = {}
    for i, (_, model, case_feeds) in enumerate(batch):
        prefixed = onnx.compose.add_prefix(model, f"c{i}_")
        for part in ("node", "input", "output", "initializer", "value_info"):
            getattr(merged.graph, part).extend(getattr(prefixed.graph, part))
        feeds.update({f"c{i}_{k}": v for k, v in case_feeds.items()})
    try:
        got = _run(merged, feeds)
    except Exception:  # noqa: BLE001 - then one at a time, each with its own error
        return {name: _run_alone(model, f) for name, model, f in batch}
    return {name: {k[len(f"c{i}_"):]: v for k, v in got.items() if k.startswith(f"c{i}_")}
            for i, (name, _, _) in enumerate(batch)}


@pytest.mark.parametrize("index", range(len(NODE_CASES)), ids=[c.name for c in NODE_CASES])
def test_onnx_operator_case(index: int) -> None:
    case = NODE_CASES[index]
    _, expected = case.data_sets[0]
    model, _ = _prepared_case(case)
    got = _batch_outputs(index).get(case.name)
    if isinstance(got, Exception):
        raise got
    assert got is not None, "the case built alone but was not run"
    _compare(model, got, list(expected), max(case.rtol, RTOL), max(case.atol, ATOL))


def _data_models() -> list[str]:
    found = []
    for kind in ("simple", "pytorch-converted", "pytorch-operator"):
        found += sorted(glob.glob(os.path.join(DATA, kind, "*", "model.onnx")))
    return found


def _tensors(folder: str, prefix: str) -> list[np.ndarray]:
    paths = glob.glob(os.path.join(folder, f"{prefix}_*.pb"))
    paths.sort(key=lambda p: int(p.rsplit("_", 1)[1][:-3]))
    out = []
    for path in paths:
        t = onnx.TensorProto()
        with open(path, "rb") as f:
            t.ParseFromString(f.read())
        out.append(numpy_helper.to_array(t))
    return out


@pytest.mark.parametrize("path", _data_models(),
                         ids=lambda p: os.path.basename(os.path.dirname(p)))
def test_onnx_backend_model(path: str) -> None:
    """Whole models (PyTorch exports at opset 6 to 12): each built and run alone."""
    model = onnx.load(path)
    folder = sorted(glob.glob(os.path.join(os.path.dirname(path), "test_data_set_*")))[0]
    inputs, expected = _tensors(folder, "input"), _tensors(folder, "output")
    model, feeds = _prepare(model, inputs, expected)
    _compare(model, _run(model, feeds), expected, 1e-3, 1e-4)
