"""The wasmtime engine configuration, shared by upload validation and execution.

Serialized modules only load into an engine with the same settings, so the
configuration lives in one place.
"""

from __future__ import annotations

import wasmtime

EPOCH_TICK_S = 0.01


def make_engine() -> wasmtime.Engine:
    config = wasmtime.Config()
    config.epoch_interruption = True
    config.cranelift_opt_level = "speed"
    return wasmtime.Engine(config)
