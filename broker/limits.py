"""Per-task limits as one object, applied in one place (the runtime).

The gateway reads it too: it caps the limits a function asks for at upload
(api/upload_form.py reads them from the form) and checks inputs against them,
so both sides agree on the names and units.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from wasmq.broker.settings import MB, Settings

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
                   if k in NAMES and v is not None and float(v) > 0}
        return replace(self, **changes)


# Every limit a function may narrow for itself, by name.
NAMES = frozenset(f.name for f in fields(Limits))
