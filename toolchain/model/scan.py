"""Scan with a length known at build time, unrolled: its body planned once an iteration.

skl2onnx's nearest neighbours compute the distances to every training row with a
Scan over the training set (a constant): unrolled, each iteration is a few
elementwise and reduce instructions on that row (the body planned by
control.run_body, as If's and Loop's are).
"""

from __future__ import annotations

import numpy as np
import onnx

from wasmq.toolchain.model import program as pg
from wasmq.toolchain.model.control import run_body
from wasmq.toolchain.model.errors import ModelError
from wasmq.toolchain.model.ops import axis_of, contiguous, copy_view, handler
from wasmq.toolchain.model.program import Tensor

MAX_ITERATIONS = 4096  # each one plans the body again


def _slice(b: object, t: Tensor, axis: int, index: int, name: str) -> Tensor:
    """t at `index` along `axis`, that axis dropped."""
    shape = t.shape[:axis] + t.shape[axis + 1:]
    if t.is_const:
        return Tensor(name, shape, t.dtype, const=np.ascontiguousarray(t.const.take(index, axis)))
    strides = contiguous(t.shape)
    out = b.prog.new(name, shape, t.dtype)
    copy_view(b, t, shape, strides[:axis] + strides[axis + 1:],
              index * strides[axis] * pg.ESIZE[t.dtype], out)
    return out


@handler("Scan")
def scan(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    if b.opset < 9:
        raise ModelError(f"{b.where}: Scan before opset 9 (with sequence_lens) is not supported")
    body: onnx.GraphProto = attrs["body"]
    m = int(attrs["num_scan_inputs"])
    n_state = len(ins) - m
    k = len(body.output) - n_state
    in_axes = [int(a) for a in attrs.get("scan_input_axes", [0] * m)]
    in_dirs = [int(d) for d in attrs.get("scan_input_directions", [0] * m)]
    out_axes = [int(a) for a in attrs.get("scan_output_axes", [0] * k)]
    out_dirs = [int(d) for d in attrs.get("scan_output_directions", [0] * k)]
    scans = ins[n_state:]
    axes = [axis_of(node, a, len(t.shape)) for a, t in zip(in_axes, scans, strict=True)]
    lengths = {t.shape[a] for t, a in zip(scans, axes, strict=True)}
    if len(lengths) != 1:
        raise ModelError(f"{b.where}: scan inputs of different lengths {sorted(lengths)}")
    length = lengths.pop()
    if not 0 < length <= MAX_ITERATIONS:
        raise ModelError(f"{b.where}: {length} iterations (at most {MAX_ITERATIONS} are "
                         f"unrolled)")
    scan_node, states = b.node, list(ins[:n_state])
    stacked: list[tuple[Tensor, int, tuple[int, ...]] | None] = [None] * k
    for it in range(length):
        bound = list(states)
        for s, vi in enumerate(body.input[n_state:]):
            index = it if not in_dirs[s] else length - 1 - it
            bound.append(_slice(b, scans[s], axes[s], index, f"{scan_node.output[0]}/{it}/"
                                                             f"{vi.name}"))
        results = run_body(b, body, bound)
        if any(r is None for r in results):
            return [None] * len(node.output)  # the body's refusal is collected already
        states = results[:n_state]
        for j in range(k):  # each scan output copied into place now, not kept to the end
            part = results[n_state + j]
            if stacked[j] is None:
                axis = axis_of(node, out_axes[j], len(part.shape) + 1)
                shape = part.shape[:axis] + (length,) + part.shape[axis:]
                stacked[j] = (b.out(n_state + j, shape, part.dtype), axis, part.shape)
            out, axis, first = stacked[j]
            if part.shape != first:
                raise ModelError(f"{b.where}: scan output {j} changes shape between "
                                 f"iterations")
            at = length - 1 - it if out_dirs[j] else it
            ostr = contiguous(out.shape)
            copy_view(b, part, first, contiguous(first), 0, out, ostr[:axis] + ostr[axis + 1:],
                      at * ostr[axis] * pg.ESIZE[out.dtype])
    return [b.alias(t, i, t.shape) for i, t in enumerate(states)] + \
        [out for out, _, _ in stacked]
