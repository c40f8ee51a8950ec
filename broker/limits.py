"""Per-task limits as one object, applied in one place (the runtime).

The gateway reads it too: it caps the limits a function asks for at upload
and checks inputs against them, so both sides agree on the names and units.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from wasmq.broker.errors import BadRequest
from wasmq.broker.settings import MB, Settings

# Names a function record may override at upload (also the form field names),
# capped by the server's maximum.
OVERRIDABLE = ("timeout_s", "max_memory_mb", "max_input_mb", "max_output_mb")
# The WebAssembly page: the smallest unit a memory limit can express.
PAGE_MB = 64 / 1024


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 30.0
    max_memory_mb: float = 256
    max_input_mb: float = 16
    max_output_mb: float = 16

    @property
    def max_memory(self) -> int:
        return int(self.max_memory_mb * MB)

    @property
    def max_input(self) -> int:
        return int(self.max_input_mb * MB)

    @property
    def max_output(self) -> int:
        return int(self.max_output_mb * MB)

    @classmethod
    def from_settings(cls, settings: Settings) -> "Limits":
        return cls(timeout_s=settings.task_timeout, max_memory_mb=settings.max_memory_mb,
                   max_input_mb=settings.max_input_mb, max_output_mb=settings.max_output_mb)

    def narrowed(self, overrides: dict[str, float] | None) -> "Limits":
        """Apply a function's own limits, never above the server's."""
        if not overrides:
            return self
        changes = {k: min(float(v), getattr(self, k)) for k, v in overrides.items()
                   if k in OVERRIDABLE and v is not None and float(v) > 0}
        return replace(self, **changes)

    def requested(self, fields: Mapping[str, str]) -> dict[str, float]:
        """The limits an upload form asks for, capped at these (the server's).

        A value above the server's maximum is lowered to it, so one upload
        works on servers configured differently; the record shows what holds.
        """
        out: dict[str, float] = {}
        for name in OVERRIDABLE:
            raw = fields.get(name)
            if raw is None or str(raw).strip() == "":
                continue
            try:
                value = float(raw)
            except ValueError:
                raise BadRequest(f"{name}={raw!r} is not a number") from None
            if not math.isfinite(value) or value <= 0:
                raise BadRequest(f"{name} must be a positive number, got {raw!r}")
            if name == "max_memory_mb" and value < PAGE_MB:
                raise BadRequest(f"max_memory_mb must be at least one 64 KiB page "
                                 f"({PAGE_MB:g}), got {raw!r}")
            out[name] = min(value, getattr(self, name))
        return out
