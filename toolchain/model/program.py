"""The plan a model becomes: tensors, instructions, memory and the packed blob.

Operator handlers (ops.py, ml.py) add instructions that name tensors; only
when the whole graph is planned are buffers given addresses (tensors whose
lifetimes do not overlap share bytes) and constants a place in the blob. So
an instruction holds `Ref`s, turned into absolute addresses at the end, and
fusion can still rewrite an instruction after it was added.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from wasmq.toolchain.model.errors import ModelError, ModelTooLarge

MAGIC = 0x314D5157
F32, I64, BOOL = 0, 1, 2
F64 = 3  # inputs and outputs only: cast to and from float32 at the plan's edges
STR = 4  # an input: each string read as its int64 index in the model's categories; an
# output: class labels' int64 indices, each written as its label (Program.labels)
# Edge types too: integers computed as int64, float16 as float32, cast at the plan's edges
# (and a Cast to one of them goes there and back, so values wrap or round as in the type).
I8, U8, I16, U16, I32, U32, F16 = 5, 6, 7, 8, 9, 10, 11
TXT = 12  # inputs only: each string as {address, length} of its bytes, for the text kernel
NARROW_INTS = (I8, U8, I16, U16, I32, U32)
DTYPES = {np.dtype(np.float32): F32, np.dtype(np.int64): I64, np.dtype(np.bool_): BOOL}
NAMES = {F32: "float32", I64: "int64", BOOL: "bool", F64: "float64", STR: "string",
         I8: "int8", U8: "uint8", I16: "int16", U16: "uint16", I32: "int32", U32: "uint32",
         F16: "float16", TXT: "string"}
NUMPY = {F32: np.float32, I64: np.int64, BOOL: np.bool_, F64: np.float64, STR: np.int64,
         I8: np.int8, U8: np.uint8, I16: np.int16, U16: np.uint16, I32: np.int32,
         U32: np.uint32, F16: np.float16, TXT: np.int64}
ESIZE = {F32: 4, I64: 8, BOOL: 1, F64: 8, STR: 8, I8: 1, U8: 1, I16: 2, U16: 2, I32: 4,
         U32: 4, F16: 2, TXT: 8}
# what an edge type is computed as inside the plan
COMPUTED = {F64: F32, F16: F32, **{t: I64 for t in NARROW_INTS}}
MAX_DIMS = 6
IO_WORDS = 16
OP_CONV, OP_GEMM, OP_POOL, OP_ELT, OP_SOFTMAX, OP_REDUCE = 1, 2, 3, 4, 5, 6
OP_ARG, OP_GATHER, OP_TREES, OP_FILL, OP_TEXT, OP_COUPLE = 7, 8, 9, 10, 11, 12


# A dimension the kernels can address (they take 32-bit words).
MAX_DIM = (1 << 31) - 1


def volume(dims: Iterable[object]) -> int:
    """The product of `dims` as a Python integer: numpy's int64 product wraps (a Tile
    by [2**62, 4] made a 0-element tensor, a product wrapping negative passed the
    size check). Negative dims count as their value; callers refuse them."""
    return math.prod(int(d) for d in dims)


class Storage:
    """Bytes in the arena; several tensors (a Reshape and its input) may share one.

    A storage may also lie inside another (`parent`, `at` bytes in): a Concat's
    inputs are written in place in its output (see Program.place_inside). Only
    storages without a parent are given offsets, live while anything inside them is.
    """

    def __init__(self, nbytes: int, first: int) -> None:
        self.nbytes = max(int(nbytes), 1)
        self.first = first
        self.last = first
        self.offset = -1
        self.parent: Storage | None = None
        self.at = 0

    def root(self) -> tuple[Storage, int]:
        """The outermost storage holding this one, and where in it this one starts."""
        s, at = self, 0
        while s.parent is not None:
            s, at = s.parent, at + s.at
        return s, at


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
        return volume(self.shape)

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
    node: int    # the step it runs at (Program.step)
    kind: str = ""
    fields: dict = field(default_factory=dict)  # what fusion may change


class Program:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.instrs: list[Instr] = []
        self.consts: list[bytes] = []
        self.storages: list[Storage] = []
        self.step = 0  # when what is added now runs: one step a node planned, in order
        self.categories: list[str] = []  # what string inputs are read against, in order
        self.labels: dict[str, list[str]] = {}  # a string output's class labels, by name

    # ---------------------------------------------------------------- tensors
    def checked(self, name: str, shape: tuple[int, ...], dtype: int) -> tuple[int, ...]:
        """`shape` as ints, refused naming the tensor when a dim is negative or the
        tensor would be over the model limit (with Python integers: no product wraps).
        A zero dim beside huge ones still makes kernels multiply the huge ones."""
        shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise ModelError(f"tensor '{name}' would have a negative dimension {shape}")
        span = volume(max(d, 1) for d in shape) * ESIZE.get(dtype, 8)
        if span > self.max_bytes or any(d > MAX_DIM for d in shape):
            raise ModelTooLarge(f"tensor '{name}' of shape {shape} needs {span} bytes, over "
                                f"the model limit of {self.max_bytes} bytes", span)
        return shape

    def new(self, name: str, shape: tuple[int, ...], dtype: int) -> Tensor:
        shape = self.checked(name, shape, dtype)
        nbytes = volume(shape) * ESIZE[dtype]
        storage = Storage(nbytes, self.step)
        self.storages.append(storage)
        return Tensor(name, shape, dtype, storage=storage)

    def alias(self, src: Tensor, name: str, shape: tuple[int, ...]) -> Tensor:
        """The same bytes under a new shape (Reshape, Flatten, Squeeze, Identity)."""
        shape = self.checked(name, shape, src.dtype)
        if src.is_const:
            return Tensor(name, shape, src.dtype, const=src.const.reshape(shape))
        return Tensor(name, shape, src.dtype, storage=src.storage, offset=src.offset)

    def scratch(self, nbytes: int) -> Tensor:
        return self.new(f"scratch{len(self.storages)}", (max(1, nbytes // 4),), F32)

    def place_inside(self, child: Storage, parent: Storage, at: int) -> bool:
        """Lay `child` out inside `parent` from byte `at` on, when it is in no other
        storage yet (a tensor two Concats take can be in place in one of them)."""
        if child.parent is not None or parent.root()[0] is child or \
                at < 0 or at + child.nbytes > parent.nbytes:
            return False
        child.parent, child.at = parent, at
        return True

    def use(self, t: Tensor) -> None:
        if t.storage is not None:
            t.storage.last = max(t.storage.last, self.step)

    def ref(self, t: Tensor, extra: int = 0) -> Ref:
        if t.is_const:
            return Ref(const=self.constant(t.const), extra=extra)
        self.use(t)
        return Ref(tensor=t, extra=extra)

    def weights_bytes(self) -> int:
        """Bytes of constants as packed: each distinct one once."""
        return sum(len(c) for c in set(self.consts))

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
        for s in self.storages:  # a storage inside another keeps the outermost one live
            root, _ = s.root()
            root.first, root.last = min(root.first, s.first), max(root.last, s.last)
        order = sorted((s for s in self.storages if s.parent is None),
                       key=lambda s: (-s.nbytes, s.first))
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

    def pack(self, base: int, inputs: list[Tensor], outputs: list[Tensor]
             ) -> tuple[bytearray, int]:
        """The blob at `base` and the end of the arena that follows it (a bytearray: the
        module copies it once, so no second copy of the weights is made here)."""
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
        # a string output's labels: [vocabulary, count, longest in bytes]
        labelled = {t.name: (self.constant(np.frombuffer(b"".join(
            s.encode() + b"\0" for s in self.labels[t.name]) or b"\0", np.uint8)),
            len(self.labels[t.name]), max((len(s.encode()) for s in self.labels[t.name]),
                                          default=0))
            for t in outputs if t.dtype == STR}
        # Equal constants are packed once: a folded constant used by twenty nodes (or
        # twenty equal folds) is one copy in the module, not twenty (issue 22).
        placed: dict[bytes, int] = {}
        const_at = []
        pos = consts_off
        for c in self.consts:
            at = placed.setdefault(c, pos)
            if at == pos:
                pos = (pos + len(c) + 63) & ~63
            const_at.append(at)
        blob_size = pos
        arena = (base + blob_size + 63) & ~63
        end = arena + arena_size
        if end - base > self.max_bytes:
            raise ModelTooLarge(f"the model needs {end - base} bytes (weights {blob_size}, "
                                f"activations {arena_size}), over the limit of "
                                f"{self.max_bytes}", end - base)

        def address(r: Ref) -> int:
            if r.tensor is not None:
                if r.tensor.is_const:
                    raise AssertionError("constant tensor without a packed copy")
                root, at = r.tensor.storage.root()
                return arena + root.offset + at + r.tensor.offset + r.extra
            return base + const_at[r.const] + r.extra

        blob = bytearray(blob_size)
        struct.pack_into("<8I", blob, 0, MAGIC, blob_size, end, len(inputs), len(outputs),
                         io_off, code_off, code_words)
        for i, t in enumerate(inputs + outputs):
            addr = address(Ref(tensor=t))
            dims = list(t.shape)[:8] + [0] * (8 - min(8, len(t.shape)))
            if t.dtype == STR and i >= len(inputs):
                at, count, longest = labelled[t.name]
                vocab_words = [address(Ref(const=at)), count, longest]
            elif t.dtype == STR:
                vocab_words = [address(Ref(const=vocab)), len(self.categories), 0]
            else:
                vocab_words = [0, 0, 0]
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
        for c, at in placed.items():
            blob[at:at + len(c)] = c
        return blob, end
