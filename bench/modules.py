"""The modules the benchmark runs: the intsum example and a large one it makes itself."""

from __future__ import annotations

import os

import wasmtime

from tests.modules import variant, wat  # noqa: F401 - variant: a cold copy of a module
from tests.support import INTSUM, TUTORIAL_INPUT

BIG_DATA_BYTES = 1536 * 1024  # a module "of at least 1 MB with a large data segment"
PAGE = 65536
INPUT = TUTORIAL_INPUT.encode()


def intsum() -> bytes:
    return INTSUM.read_bytes()


def big() -> bytes:
    """An echo module carrying 1.5 MB of incompressible data, like model weights.

    The data sits above the input buffer's start, so it is copied into every
    fresh instance's memory, as a real model's weights would be.
    """
    weights = os.urandom(BIG_DATA_BYTES)
    escaped = "".join(f"\\{b:02x}" for b in weights)
    offset = 16 * PAGE
    pages = (offset + BIG_DATA_BYTES) // PAGE + 2
    segment = f'(data (i32.const {offset}) "{escaped}")'
    return bytes(wasmtime.wat2wasm(wat(pages=pages, data=segment)))


def echo() -> bytes:
    """The Scailable ABI around an echo, the module wasmq and the peer both run."""
    return bytes(wasmtime.wat2wasm(wat()))
