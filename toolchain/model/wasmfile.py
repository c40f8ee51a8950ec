"""Packing a model's plan into a copy of kernels.wasm, as one more data segment.

The kernel module's sections are copied unchanged except the memory section
(its initial size grows to hold the plan and the arena) and the data section
(one active segment more, at the plan's address). A few LEB128 fields is all
it takes, so no wasm toolkit is needed at upload time.
"""

from __future__ import annotations

from dataclasses import dataclass

MEMORY, GLOBAL, EXPORT, DATA, DATACOUNT = 5, 6, 7, 11, 12
PAGE = 65536


def uleb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def sleb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        done = (value == 0 and not byte & 0x40) or (value == -1 and byte & 0x40)
        out.append(byte if done else byte | 0x80)
        if done:
            return bytes(out)


def read_leb(data: bytes | memoryview, pos: int, signed: bool = False) -> tuple[int, int]:
    """A LEB128 number at pos (and the position after it); protobuf varints are the same."""
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated or overlong LEB128 number")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            if signed and byte & 0x40:
                value -= 1 << shift
            return value, pos


def read_uleb(data: bytes, pos: int) -> tuple[int, int]:
    return read_leb(data, pos)


def read_sleb(data: bytes, pos: int) -> tuple[int, int]:
    return read_leb(data, pos, signed=True)


@dataclass(frozen=True)
class Kernel:
    sections: list[tuple[int, bytes]]
    heap_base: int

    @classmethod
    def parse(cls, wasm: bytes) -> "Kernel":
        pos, sections = 8, []
        while pos < len(wasm):
            sid = wasm[pos]
            size, pos = read_uleb(wasm, pos + 1)
            sections.append((sid, wasm[pos:pos + size]))
            pos += size
        return cls(sections, _heap_base(dict(sections)))

    @property
    def plan_address(self) -> int:
        """Where the plan goes: the first 64-byte boundary at or after __heap_base."""
        return (self.heap_base + 63) & ~63

    def pack(self, blob: bytes | bytearray, memory_end: int, slack: int = 0) -> bytes:
        """A copy of the module with `blob` at plan_address and memory_end bytes of memory,
        plus `slack` for the request and the reply: growing memory during a call costs
        more than pages never touched. The blob (a model's weights: hundreds of MB for
        the largest) is copied once, by the final join."""
        pages = (memory_end + slack + PAGE - 1) // PAGE
        parts: list[bytes | bytearray] = [b"\0asm\x01\0\0\0"]
        for sid, body in self.sections:
            if sid == MEMORY:
                body = _memory(body, pages)
            elif sid == DATA:
                head = _data_head(body, self.plan_address, len(blob))
                parts += [bytes([sid]) + uleb(len(head) + len(blob)) + head, blob]
                continue
            elif sid == DATACOUNT:
                count, _ = read_uleb(body, 0)
                body = uleb(count + 1)
            parts.append(bytes([sid]) + uleb(len(body)) + body)
        return b"".join(parts)


def _memory(body: bytes, pages: int) -> bytes:
    count, pos = read_uleb(body, 0)
    if count != 1:
        raise ValueError("kernel module must declare one memory")
    flags = body[pos]
    minimum, pos = read_uleb(body, pos + 1)
    rest = body[pos:]  # the maximum, if any
    return uleb(1) + bytes([flags]) + uleb(max(minimum, pages)) + rest


def _data_head(body: bytes, address: int, blob_len: int) -> bytes:
    """The data section up to the blob: the kernel's segments, then the header of one
    more at `address` whose bytes (`blob_len` of them) follow."""
    count, pos = read_uleb(body, 0)
    return uleb(count + 1) + body[pos:] + b"\x00\x41" + sleb(address) + b"\x0b" + uleb(blob_len)


def _heap_base(sections: dict[int, bytes]) -> int:
    exports = sections[EXPORT]
    count, pos = read_uleb(exports, 0)
    index = None
    for _ in range(count):
        length, pos = read_uleb(exports, pos)
        name = exports[pos:pos + length].decode()
        kind = exports[pos + length]
        value, pos = read_uleb(exports, pos + length + 1)
        if name == "__heap_base" and kind == 3:
            index = value
    if index is None:
        raise ValueError("kernel module does not export __heap_base")
    globals_ = sections[GLOBAL]
    count, pos = read_uleb(globals_, 0)
    for i in range(count):
        pos += 2  # value type, mutability
        if globals_[pos] != 0x41:
            raise ValueError("unexpected global initialiser")
        value, pos = read_sleb(globals_, pos + 1)
        pos += 1  # end
        if i == index:
            return value
    raise ValueError("__heap_base global not found")
