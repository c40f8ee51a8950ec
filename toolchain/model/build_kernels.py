"""Build kernels.wasm from kernels.c with ziglang: `python -m wasmq.toolchain.model.build_kernels`.

The built module is committed, so an upload never needs a compiler; a test
rebuilds it and compares bytes, so the committed binary is the source's. The
bytes depend on the compiler's version: pyproject pins ziglang exactly.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "kernels.c"
TARGET = HERE / "kernels.wasm"

FLAGS = [
    "--target=wasm32-freestanding", "-O3", "-msimd128", "-mrelaxed-simd", "-mbulk-memory",
    "-mnontrapping-fptoint",
    "-nostdlib", "-ffreestanding", "-Wall", "-Werror",
    "-Wl,--no-entry", "-Wl,-z,stack-size=1048576", "-Wl,--strip-all", "-Wl,--export=__heap_base",
    "-Wl,--initial-memory=2162688",
    # reproducible: no paths or build ids end up in the binary
    "-fdebug-prefix-map=" + str(HERE) + "=.", "-Wl,--no-gc-sections",
]


# The profiling variant (bench/model_profile.py): function names kept for perf, and
# each instruction timed through WASI's clock. Never committed.
PROFILE_FLAGS = [f for f in FLAGS if f != "-Wl,--strip-all"] + ["-DWQ_PROFILE"]


def build(out: Path = TARGET, *, profile: bool = False) -> bytes:
    """Compile kernels.c to `out` and return the bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        flags = PROFILE_FLAGS if profile else FLAGS
        cmd = [sys.executable, "-m", "ziglang", "cc", *flags, "-o", str(out), str(SOURCE)]
        env_cache = {"ZIG_GLOBAL_CACHE_DIR": tmp, "ZIG_LOCAL_CACHE_DIR": tmp}
        import os

        subprocess.run(cmd, check=True, cwd=HERE, env={**os.environ, **env_cache})
    return out.read_bytes()


if __name__ == "__main__":
    data = build()
    print(f"{TARGET.name}: {len(data)} bytes")
