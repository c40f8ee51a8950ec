"""ai.onnx.ml operators, lowered to the core kernels where they are linear algebra."""

from __future__ import annotations

from wasmq.toolchain.model.ops import Handler

HANDLERS: dict[str, Handler] = {}
