"""The plan a model becomes: tensors, instructions, memory and the packed blob.

Operator handlers (ops.py, ml.py) add instructions that name tensors; only
when the whole graph is planned are buffers given addresses (tensors whose
lifetimes do not overlap share bytes) and constants a place in the blob. So
an instruction holds `Ref`s, turned into absolute addresses at the end, and
fusion can still rewrite an instruction after it was added.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from wasmq.toolchain.model.errors import ModelError

MAGIC = 0x314D5157
F32, I64, BOOL = 0, 1, 2
F64 = 3  # inputs and outputs only: cast to and from float32 at the plan's edges
STR = 4  # inputs only: each string read as its int64 index in the model's categories
DTYPES = {np.dtype(np.float32): F32, np.dtype(np.int64): I64, np.dtype(np.bool_): BOOL}
NAMES = {F32: "float32", I64: "int64", BOOL: "bool", F64: "float64", STR: "string"}
NUMPY = {F32: np.float32, I64: np.int64, BOOL: np.bool_, F64: np.float64, STR: np.int64}
ESIZE = {F32: 4, I64: 8, BOOL: 1, F64: 8, STR: 8}
MAX_DIMS = 6
IO_WORDS = 16
OP_CONV, OP_GEMM, OP_POOL, OP_ELT, OP_SOFTMAX, OP_REDUCE = 1, 2, 3, 4, 5, 6
OP_ARG, OP_GATHER, OP_TREES, OP_FILL = 7, 8, 9, 10


class Storage:
    """Bytes in the arena; several tensors (a Reshape and its input) may share one."""

    def __init__(self, nbytes: int, first: int) -> None:
        self.nbytes = max(int(nbytes), 1)
        self.first = first
        self.last = first
        self.offset = -1


@dataclass
class Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: int
    const: np.ndarray | None = None
    storage: Storage | None = None
    offset: int = 0  # bytes into the storage

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def is_const(self) -> bool:
        return self.const is not None

    def describe(self) -> str:
        dims = "x".join(map(str, self.shape)) or "scalar"
        return f"'{self.name}' ({dims}, {NAMES[self.dtype]})"


@dataclass(frozen=True)
class Ref:
    """An address to fill in: a tensor's bytes (arena or blob), or a packed constant."""

    tensor: Tensor | None = None
    const: int = -1  # index into Program.consts
    extra: int = 0   # bytes past the start


def f32_bits(value: float) -> int:
    return struct.unpack("<i", struct.pack("<f", float(value)))[0]


@dataclass
class Instr:
    op: int
    words: list  # ints and Refs
    node: int    # the node's index: when it runs
    kind: str = ""
    fields: dict = field(default_factory=dict)  # what fusion may change


class Program:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.instrs: list[Instr] = []
        self.consts: list[bytes] = []
        self.storages: list[Storage] = []
        self.step = 0
        self.categories: list[str] = []  # what string inputs are read against, in order

    # ---------------------------------------------------------------- tensors
    def new(self, name: str, shape: tuple[int, ...], dtype: int) -> Tensor:
        shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise ModelError(f"tensor '{name}' would have a negative dimension {shape}")
        count = int(np.prod(shape, dtype=np.int64))
        nbytes = count * ESIZE[dtype]
        if nbytes > self.max_bytes:
            raise ModelError(f"tensor '{name}' of shape {shape} needs {nbytes} bytes, over the "
                             f"model limit of {self.max_bytes} bytes")
        storage = Storage(nbytes, self.step)
        self.storages.append(storage)
        return Tensor(name, shape, dtype, storage=storage)

    def alias(self, src: Tensor, name: str, shape: tuple[int, ...]) -> Tensor:
        """The same bytes under a new shape (Reshape, Flatten, Squeeze, Identity)."""
        shape = tuple(int(d) for d in shape)
        if src.is_const:
            return Tensor(name, shape, src.dtype, const=src.const.reshape(shape))
        return Tensor(name, shape, src.dtype, storage=src.storage, offset=src.offset)

    def scratch(self, nbytes: int) -> Tensor:
        return self.new(f"scratch{len(self.storages)}", (max(1, nbytes // 4),), F32)

    def use(self, t: Tensor) -> None:
        if t.storage is not None:
            t.storage.last = max(t.storage.last, self.step)

    def ref(self, t: Tensor, extra: int = 0) -> Ref:
        if t.is_const:
            return Ref(const=self.constant(t.const), extra=extra)
        self.use(t)
        return Ref(tensor=t, extra=extra)

    def constant(self, array: np.ndarray) -> int:
        data = np.ascontiguousarray(array).tobytes()
        self.consts.append(data)
        return len(self.consts) - 1

    def cref(self, array: np.ndarray) -> Ref:
        return Ref(const=self.constant(array))

    def emit(self, op: int, words: list, kind: str = "", **fields: object) -> Instr:
        for w in words:
            if isinstance(w, Ref) and w.tensor is not None:
                self.use(w.tensor)
        instr = Instr(op, words, self.step, kind, dict(fields))
        self.instrs.append(instr)
        return instr

    # ---------------------------------------------------------------- layout
    def plan_memory(self, live_to_end: list[Tensor]) -> int:
        """Offsets for every storage: greedy, largest first, reusing bytes of the dead."""
        for t in live_to_end:
            if t.storage is not None:
                t.storage.last = 1 << 30
        order = sorted(self.storages, key=lambda s: (-s.nbytes, s.first))
        count = len(order)
        # what is placed so far, as arrays: the overlap test is one vectorised pass
        firsts = np.zeros(count, np.int64)
        lasts = np.zeros(count, np.int64)
        starts = np.zeros(count, np.int64)
        ends = np.zeros(count, np.int64)
        total = 0
        for i, s in enumerate(order):
            size = (s.nbytes + 63) & ~63
            live = (lasts[:i] >= s.first) & (firsts[:i] <= s.last)
            busy = sorted(zip(starts[:i][live].tolist(), ends[:i][live].tolist(), strict=True))
            offset = 0
            for lo, hi in busy:
                if offset + size <= lo:
                    break
                offset = max(offset, hi)
            s.offset = offset
            firsts[i], lasts[i], starts[i], ends[i] = s.first, s.last, offset, offset + size
            total = max(total, offset + size)
        return total

    def pack(self, base: int, inputs: list[Tensor], outputs: list[Tensor]) -> tuple[bytes, int]:
        """The blob at `base` and the end of the arena that follows it."""
        arena_size = self.plan_memory(outputs)
        names = bytearray()
        name_at: list[int] = []
        for t in inputs + outputs:
            name_at.append(len(names))
            names += t.name.encode() + b"\0"
        header_words = 8
        io_off = header_words * 4
        names_off = io_off + IO_WORDS * 4 * (len(inputs) + len(outputs))
        code_off = (names_off + len(names) + 15) & ~15
        code_words = sum(2 + len(i.words) for i in self.instrs)
        consts_off = (code_off + code_words * 4 + 63) & ~63
        vocab = self.constant(np.frombuffer(b"".join(
            c.encode() + b"\0" for c in self.categories) or b"\0", np.uint8)) \
            if any(t.dtype == STR for t in inputs) else None
        const_at = []
        pos = consts_off
        for c in self.consts:
            const_at.append(pos)
            pos = (pos + len(c) + 63) & ~63
        blob_size = pos
        arena = (base + blob_size + 63) & ~63
        end = arena + arena_size
        if end - base > self.max_bytes:
            raise ModelError(f"the model needs {end - base} bytes (weights {blob_size}, "
                             f"activations {arena_size}), over the limit of {self.max_bytes}")

        def address(r: Ref) -> int:
            if r.tensor is not None:
                if r.tensor.is_const:
                    raise AssertionError("constant tensor without a packed copy")
                return arena + r.tensor.storage.offset + r.tensor.offset + r.extra
            return base + const_at[r.const] + r.extra

        blob = bytearray(blob_size)
        struct.pack_into("<8I", blob, 0, MAGIC, blob_size, end, len(inputs), len(outputs),
                         io_off, code_off, code_words)
        for i, t in enumerate(inputs + outputs):
            addr = address(Ref(tensor=t))
            dims = list(t.shape)[:8] + [0] * (8 - min(8, len(t.shape)))
            vocab_words = [address(Ref(const=vocab)), len(self.categories), 0] \
                if t.dtype == STR else [0, 0, 0]
            words = [base + names_off + name_at[i], t.dtype, len(t.shape), t.size, addr,
                     *dims, *vocab_words]
            struct.pack_into(f"<{IO_WORDS}i", blob, io_off + IO_WORDS * 4 * i,
                             *[w if w < 1 << 31 else w - (1 << 32) for w in words])
        blob[names_off:names_off + len(names)] = names
        words: list[int] = []
        for ins in self.instrs:
            words += [ins.op, 2 + len(ins.words)]
            words += [address(w) if isinstance(w, Ref) else int(w) for w in ins.words]
        code = np.array([w & 0xFFFFFFFF for w in words], dtype=np.uint32).astype("<u4")
        blob[code_off:code_off + 4 * len(words)] = code.tobytes()
        for at, c in zip(const_at, self.consts, strict=False):
            blob[at:at + len(c)] = c
        return bytes(blob), end
