"""The model compiler: an ONNX model in, a Scailable-ABI module out.

`build_model` is what the bounded build step calls; it raises only ModelError,
whose message is written for the person who uploaded the model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from wasmq.toolchain.model.errors import ModelError, ModelTooLarge
from wasmq.toolchain.model.sniff import is_onnx

if TYPE_CHECKING:
    from wasmq.toolchain.model.planner import BuiltModel, TensorInfo

__all__ = ["BuiltModel", "ModelError", "ModelTooLarge", "TensorInfo", "build_model", "is_onnx"]


def __getattr__(name: str) -> Any:  # noqa: ANN401 - the planner's classes, imported late
    """The planner (onnx, numpy: a second to import) loads on first use, so that a
    gateway telling a model from a .wasm (`is_onnx`) does not load it."""
    if name in ("BuiltModel", "TensorInfo"):
        from wasmq.toolchain.model import planner

        return getattr(planner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_model(model: bytes, *, max_bytes: int,
                input_shapes: dict[str, tuple[int, ...]] | None = None) -> BuiltModel:
    """Plan and pack `model` (ONNX bytes) into a module of at most `max_bytes` of memory.

    `input_shapes` pins dynamic dimensions by input name; without it a dynamic
    first dimension (the batch) becomes 1 and any other dynamic one is refused.
    """
    from wasmq.toolchain.model import planner

    try:
        return planner.build(model, max_bytes, input_shapes)
    except ModelError:
        raise
    except RecursionError:
        raise ModelError("the model is nested too deeply to plan") from None
    except MemoryError:
        raise ModelError("the model needs more memory to plan than the build may use") from None
    except Exception as exc:  # noqa: BLE001 - a malformed model the checks did not foresee
        # Still a refusal naming the problem, never a build that "ended unexpectedly".
        raise ModelError(f"the model is malformed: planning it failed with "
                         f"{type(exc).__name__}: {str(exc)[:200]}") from None
