"""Compile bombs (issue 14, point 2), written as bytes: valid modules that are cheap
to upload and dear to compile. Each is a whole Scailable-ABI module whose `pred`
is the bomb, so only compiling, never the ABI check, can refuse it."""

from __future__ import annotations

from tests.modules import _leb128

I32, I64, VOID = 0x7F, 0x7E, 0x40


def _vec(items: list[bytes]) -> bytes:
    return _leb128(len(items)) + b"".join(items)


def _section(kind: int, payload: bytes) -> bytes:
    return bytes([kind]) + _leb128(len(payload)) + payload


def _name(text: str) -> bytes:
    return _leb128(len(text)) + text.encode()


def _sleb128(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        done = (n == 0 and not byte & 0x40) or (n == -1 and byte & 0x40)
        out.append(byte if done else byte | 0x80)
        if done:
            return bytes(out)


def abi_module(pred_locals: bytes, pred_code: bytes) -> bytes:
    """The ABI around a `pred` given as its encoded locals and instructions
    (without the final `end`, and leaving its i32 result on the stack)."""
    types = _vec([b"\x60\x00\x00",                  # 0: () -> ()
                  b"\x60\x01\x7f\x01\x7f",          # 1: (i32) -> i32
                  b"\x60\x01\x7f\x00",              # 2: (i32) -> ()
                  b"\x60\x00\x01\x7f"])             # 3: () -> i32
    funcs = _vec([b"\x00", b"\x01", b"\x02", b"\x03", b"\x03", b"\x03"])
    memory = _vec([b"\x00\x01"])                    # one page, no maximum
    exports = _vec([_name("memory") + b"\x02\x00"]
                   + [_name(n) + b"\x00" + bytes([i]) for i, n in enumerate(
                       ["_start", "malloc_buffer", "free_buffer", "pred", "get_out_len",
                        "get_out_loc"])])
    bodies = [b"\x00\x0b",                          # _start: nothing
              b"\x00\x41\x80\x08\x0b",              # malloc_buffer: i32.const 1024
              b"\x00\x0b",                          # free_buffer: nothing
              pred_locals + pred_code + b"\x0b",
              b"\x00\x41\x00\x0b",                  # get_out_len: 0
              b"\x00\x41\x00\x0b"]                  # get_out_loc: 0
    code = _vec([_leb128(len(b)) + b for b in bodies])
    return (b"\0asm\x01\0\0\0" + _section(1, types) + _section(3, funcs)
            + _section(5, memory) + _section(7, exports) + _section(10, code))


def many_locals(locals_: int = 20_000, sets: int = 50_000) -> bytes:
    """One function with `locals_` i64 locals and `sets` local.set in a loop: about
    500 KB that cost the issue's gateway 115 s of CPU to compile (register allocation)."""
    body = bytearray(b"\x03\x40")                   # loop
    for k in range(sets):
        # local[a] = local[b]; if local[a] == 0, back to the top: every local is live
        # around the loop, and each of the `sets` back edges carries all of them
        body += b"\x20" + _leb128((k * 7919 + 1) % locals_)  # local.get
        body += b"\x22" + _leb128(k * 7919 % locals_)  # local.tee
        body += b"\x50\x0d\x00"                      # i64.eqz; br_if 0
    body += b"\x0b\x41\x00"                         # end; i32.const 0
    return abi_module(_vec([_leb128(locals_) + bytes([I64])]), bytes(body))


def nested_blocks(depth: int = 2_500_000) -> bytes:
    """`depth` nested empty blocks: 3 bytes each (7.5 MB at the issue's 2.5 M), which
    took the issue's gateway to 2.2 GB of memory to compile."""
    return abi_module(b"\x00", b"\x02\x40" * depth + b"\x0b" * depth + b"\x41\x00")
