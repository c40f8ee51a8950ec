#!/bin/sh
# Build intsum.wasm (the Scailable integer-sum example) with Debian's clang and
# wasi-libc (packages: clang, lld, wasi-libc, libclang-rt-14-dev-wasm32).
# Debian's clang finds wasi-libc under /usr/{include,lib}/wasm32-wasi on its own;
# set WASI_SYSROOT to point it at another sysroot (e.g. a wasi-sdk install).
# The -Wl,--export flags mirror the tutorial; intsum.c also marks the functions
# with export_name, so either alone is enough.
set -eu
cd "$(dirname "$0")"
CC="${CC:-clang}"
SYSROOT_FLAG=""
if [ -n "${WASI_SYSROOT:-}" ]; then SYSROOT_FLAG="--sysroot=$WASI_SYSROOT"; fi

# shellcheck disable=SC2086
"$CC" --target=wasm32-wasi $SYSROOT_FLAG -O3 -Wall -Wextra \
    -Wl,--export=pred,--export=malloc_buffer,--export=free_buffer \
    -Wl,--export=get_out_len,--export=get_out_loc \
    -o intsum.wasm intsum.c

if command -v wasm-strip >/dev/null 2>&1; then
    wasm-strip intsum.wasm
fi
echo "built $(pwd)/intsum.wasm ($(wc -c < intsum.wasm) bytes)"
