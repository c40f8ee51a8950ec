"""WAT fixtures: the Scailable ABI around a `pred` body each test writes.

The template's input buffer is a bump allocator that grows memory as needed;
`$in`/`$inlen` hold the input (without its trailing NUL), and `pred` sets
`$out`/`$outlen`, which default to the input itself (an echo).
"""

from __future__ import annotations

import os

import wasmtime

TEMPLATE = """
(module
  {imports}
  (memory (export "memory") {pages})
  (global $heap (mut i32) (i32.const 1024))
  (global $in (mut i32) (i32.const 0))
  (global $inlen (mut i32) (i32.const 0))
  (global $out (mut i32) (i32.const 0))
  (global $outlen (mut i32) (i32.const 0))
  {data}
  (func (export "{entry}") {start})
  (func $alloc (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (block $ok
      (loop $grow
        (br_if $ok (i32.le_u (i32.add (local.get $p) (local.get $n))
                             (i32.mul (memory.size) (i32.const 65536))))
        (if (i32.eq (memory.grow (i32.const 16)) (i32.const -1)) (then (unreachable)))
        (br $grow)))
    (global.set $heap (i32.add (local.get $p) (local.get $n)))
    (local.get $p))
  (func (export "malloc_buffer") (param $n i32) (result i32)
    (global.set $in (call $alloc (local.get $n)))
    (global.set $inlen (i32.sub (local.get $n) (i32.const 1)))
    (global.set $out (global.get $in))
    (global.set $outlen (global.get $inlen))
    (global.get $in))
  (func (export "free_buffer") (param i32))
  (func (export "pred") (result i32)
    {pred})
  (func (export "get_out_len") (result i32) (global.get $outlen))
  (func (export "get_out_loc") (result i32) (global.get $out))
  {extra}
)
"""

CLOCK = ('(import "wasi_snapshot_preview1" "clock_time_get" '
         '(func $clock (param i32 i64 i32) (result i32)))')
FD_WRITE = ('(import "wasi_snapshot_preview1" "fd_write" '
            '(func $fd_write (param i32 i32 i32 i32) (result i32)))')


def wat(pred: str = "(i32.const 0)", *, imports: str = "", data: str = "", extra: str = "",
        start: str = "", entry: str = "_start", pages: int = 1) -> str:
    return TEMPLATE.format(pred=pred, imports=imports, data=data, extra=extra, start=start,
                           entry=entry, pages=pages)


def wasm(pred: str = "(i32.const 0)", **kw: object) -> bytes:
    return wasmtime.wat2wasm(wat(pred, **kw))


def variant(module: bytes) -> bytes:
    """The same module with a fresh custom section: new sha256, so cold everywhere."""
    name = b"wasmq-variant"
    payload = bytes([len(name)]) + name + os.urandom(16)
    return bytes(module) + b"\x00" + _leb128(len(payload)) + payload


def _leb128(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


ECHO = wasm()

# Busy-waits for as many milliseconds as the input's leading decimal digits say.
SLOW = wasm(imports=CLOCK, extra="""
  (func $now (result i64)
    (drop (call $clock (i32.const 1) (i64.const 1) (i32.const 0)))
    (i64.load (i32.const 0)))
""", pred="""
    (local $i i32) (local $ms i64) (local $c i32) (local $t0 i64)
    (block $done
      (loop $digits
        (br_if $done (i32.ge_u (local.get $i) (global.get $inlen)))
        (local.set $c (i32.load8_u (i32.add (global.get $in) (local.get $i))))
        (br_if $done (i32.or (i32.lt_u (local.get $c) (i32.const 48))
                             (i32.gt_u (local.get $c) (i32.const 57))))
        (local.set $ms (i64.add (i64.mul (local.get $ms) (i64.const 10))
                                (i64.extend_i32_u (i32.sub (local.get $c) (i32.const 48)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $digits)))
    (local.set $t0 (call $now))
    (block $out
      (loop $spin
        (br_if $out (i64.ge_u (i64.sub (call $now) (local.get $t0))
                              (i64.mul (local.get $ms) (i64.const 1000000))))
        (br $spin)))
    (i32.const 0)""")

FAILING_PRED = wasm("(i32.const 1)")
TRAPPING = wasm("(unreachable)")
# Writes text that is not JSON as its output.
NOT_JSON_TEXT = "plain text, not {json"
NOT_JSON = wasm(data=f'(data (i32.const 16) "{NOT_JSON_TEXT}")', pred=f"""
    (global.set $out (i32.const 16))
    (global.set $outlen (i32.const {len(NOT_JSON_TEXT)}))
    (i32.const 0)""")
