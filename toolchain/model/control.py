"""If and Loop, planned by unrolling their subgraphs at build time, as Scan is (scan.py).

A plan is a fixed list of instructions, so control flow is resolved while planning:
`run_body` plans a subgraph's nodes in place, its inputs bound to tensors of the
enclosing graph (names it reads from there resolve as in the enclosing graph, so
nested subgraphs work). If with a condition known at build time plans the branch it
takes; with a condition known only at run time it plans both branches, which must
give outputs of the same shapes and types, and selects between them elementwise
(both run: a branch not taken can still fail the call, for example on an index out
of range). Loop runs a trip count known at build time (at most MAX_ITERATIONS) whose
condition stays known at build time in every iteration, as exporters write a `for`
loop; a condition computed at run time (a `while`) is refused by name.
"""

from __future__ import annotations

import numpy as np
import onnx

from wasmq.toolchain.model import program as pg
from wasmq.toolchain.model import tensors as checked
from wasmq.toolchain.model.errors import ModelError
from wasmq.toolchain.model.ops import E, broadcast_strides, contiguous, copy_view, elt, handler
from wasmq.toolchain.model.program import Tensor

MAX_ITERATIONS = 4096  # each one plans the body again
# nodes planned by unrolling, over the whole model (nested loops multiply): planning is
# the build's time, and a small model must not ask for millions of node plans
MAX_UNROLLED = 100_000


def run_body(b: object, body: onnx.GraphProto, inputs: list[Tensor]) -> list[Tensor | None]:
    """Plan `body` with its inputs bound to `inputs`: its outputs (None where a node of it
    is unsupported: the refusal is collected already). Each node takes a step of its own,
    so what an iteration leaves behind shares bytes with the next one's."""
    outer, where = b.node, b.where
    if len(inputs) != len(body.input):
        raise ModelError(f"{where}: its body takes {len(body.input)} inputs, "
                         f"{len(inputs)} given")
    b.unrolled += len(body.node)
    if b.unrolled > MAX_UNROLLED:
        raise ModelError(f"{where}: unrolling its body plans more than {MAX_UNROLLED} nodes "
                         f"in all (If, Loop and Scan bodies, once an iteration)")
    for vi, t in zip(body.input, inputs, strict=True):
        b.values[vi.name] = t
    for init in body.initializer:
        b.values[init.name] = b.const_tensor(init.name, checked.to_array(init))
    for inner in body.node:
        b.node = inner
        b.prog.step += 1
        b._node(inner)
    b.node = outer
    b.opset = b.opsets.get("", 1)
    return [b.values.get(o.name) for o in body.output]


def _const(name: str, value: object, dtype: type) -> Tensor:
    array = np.asarray(value, dtype)
    return Tensor(name, array.shape, pg.DTYPES[array.dtype], const=array)


@handler("If")
def if_(b: object, node: onnx.NodeProto, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    cond = ins[0]
    if cond.size != 1:
        raise ModelError(f"{b.where}: the condition has {cond.size} values, not one")
    if cond.is_const:  # known at build time: only the branch taken
        taken = attrs["then_branch"] if bool(cond.const.reshape(-1)[0]) else \
            attrs["else_branch"]
        results = run_body(b, taken, [])
        if any(r is None for r in results):
            return [None] * len(node.output)
        return [b.alias(r, i, r.shape) for i, r in enumerate(results)]
    then = run_body(b, attrs["then_branch"], [])
    other = run_body(b, attrs["else_branch"], [])
    if any(r is None for r in then + other):
        return [None] * len(node.output)
    if len(then) != len(other) or len(then) != len(node.output):
        raise ModelError(f"{b.where}: its branches give {len(then)} and {len(other)} outputs")
    outs = []
    for i, (t, e) in enumerate(zip(then, other, strict=True)):
        if t.shape != e.shape or t.dtype != e.dtype:
            raise ModelError(f"{b.where}: output {i} is {t.describe()} in one branch and "
                             f"{e.describe()} in the other; an If decided at run time needs "
                             f"branches of the same shapes and types")
        out = b.out(i, t.shape, t.dtype)
        elt(b, E["WHERE"], [(cond, [0] * len(t.shape), 0),
                            (t, broadcast_strides(t.shape, t.shape), 0),
                            (e, broadcast_strides(e.shape, e.shape), 0)], out, t.shape)
        outs.append(out)
    return outs


@handler("Loop")
def loop(b: object, node: onnx.NodeProto, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    body: onnx.GraphProto = attrs["body"]
    trips_t = ins[0] if ins else None
    cond_t = ins[1] if len(ins) > 1 else None
    states = list(ins[2:])
    if trips_t is None or not trips_t.is_const:
        raise ModelError(f"{b.where}: a Loop without a trip count known at build time is not "
                         f"supported (a Loop of a fixed count, as exporters write a for loop, "
                         f"is)")
    trips = int(trips_t.const.reshape(-1)[0])
    if trips > MAX_ITERATIONS:
        raise ModelError(f"{b.where}: {trips} iterations (at most {MAX_ITERATIONS} are "
                         f"unrolled)")
    if cond_t is not None and not cond_t.is_const:
        raise ModelError(f"{b.where}: a Loop whose condition is computed at run time is not "
                         f"supported (a fixed trip count is)")
    going = cond_t is None or bool(cond_t.const.reshape(-1)[0])
    k = len(body.output) - 1 - len(states)
    if k < 0:
        raise ModelError(f"{b.where}: its body gives {len(body.output)} outputs for "
                         f"{len(states)} loop-carried values")
    parts: list[list[Tensor]] = [[] for _ in range(k)]
    for it in range(max(trips, 0)):
        if not going:
            break
        results = run_body(b, body, [_const(f"{b.name}:i", it, np.int64),
                                     _const(f"{b.name}:cond", True, np.bool_), *states])
        if any(r is None for r in results):
            return [None] * len(node.output)
        if not results[0].is_const:
            raise ModelError(f"{b.where}: a Loop whose condition is computed at run time is "
                             f"not supported (a fixed trip count is)")
        going = bool(results[0].const.reshape(-1)[0])
        states = results[1:1 + len(states)]
        for j in range(k):
            parts[j].append(results[1 + len(states) + j])
    outs = [b.alias(t, i, t.shape) for i, t in enumerate(states)]
    for j, stack in enumerate(parts):
        if not stack:
            raise ModelError(f"{b.where}: the Loop runs no iteration, so its scan output "
                             f"'{node.output[len(states) + j]}' is empty")
        part = stack[0].shape
        if any(t.shape != part or t.dtype != stack[0].dtype for t in stack):
            raise ModelError(f"{b.where}: scan output {j} changes shape between iterations")
        shape = (len(stack),) + part
        out = b.out(len(states) + j, shape, stack[0].dtype)
        ostr = contiguous(shape)
        for it, t in enumerate(stack):
            copy_view(b, t, part, contiguous(part), 0, out, ostr[1:],
                      it * ostr[0] * pg.ESIZE[out.dtype])
        outs.append(out)
    return outs
