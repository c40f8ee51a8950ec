"""Text pipelines: StringNormalizer, Tokenizer and TfIdfVectorizer as one kernel pass.

What skl2onnx writes for CountVectorizer and TfidfVectorizer: the strings lowered
(StringNormalizer), split into tokens by a character class (com.microsoft's
Tokenizer, `[a-zA-Z0-9_]+`), then n-grams counted against a vocabulary
(TfIdfVectorizer). The token tensor's width depends on the text, which a plan of
static shapes cannot hold, so the first two only describe what is to be done (a
`Flow`, moved by Reshape and Flatten like any view), and TfIdfVectorizer emits one
instruction (the kernels' op_text) that lowers, splits and counts each string as
onnxruntime's three operators would. A text input is read as each string's bytes
({address, length} into the request); anything else done to text is refused by name.
TfIdfVectorizer over an integer tensor runs the same kernel, each value a token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np

from wasmq.toolchain.model import ops
from wasmq.toolchain.model import program as pg
from wasmq.toolchain.model.errors import ModelError
from wasmq.toolchain.model.program import Tensor

MS_DOMAIN = "com.microsoft"
MS_HANDLERS: dict[str, ops.Handler] = {}
ms_handler = ops.registrar(MS_HANDLERS)
handler = ops.handler  # ai.onnx's table
CASES = {"NONE": 0, "LOWER": 1, "UPPER": 2}
MAX_GRAM, MAX_SKIP = 8, 64  # n-grams the kernel looks up: n a start and distance
MAX_PATTERN = 200
# operators a text tensor may pass through unchanged (views of the same strings)
MOVES = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze"}
OPERATORS = {"StringNormalizer", "Tokenizer", "TfIdfVectorizer"}


@dataclass(frozen=True)
class Flow:
    """What a text tensor stands for: its input's strings and the steps taken so far."""

    source: Tensor              # the text input ({address, length} a string)
    before: int = 0             # case change before tokenizing (CASES)
    after: int = 0              # case change of each token
    classes: bytes | None = None  # the tokenizer's character class, a byte a byte value
    mincharnum: int = 1


def _text(value: object, default: str = "") -> str:
    if value is None:
        return default
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def flow_of(b: object, name: str) -> Flow:
    flow = b.texts.get(name)
    if flow is None:
        raise ModelError(f"{b.where}: {b.node.op_type} needs text from a string input (strings "
                         f"read as categories cannot be tokenized)")
    return flow


@handler("StringNormalizer")
def string_normalizer(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    flow = flow_of(b, node.input[0])
    action = _text(attrs.get("case_change_action"), "NONE")
    if action not in CASES:
        raise ModelError(f"{b.where}: case_change_action {action[:40]} is not supported")
    if attrs.get("stopwords"):
        raise ModelError(f"{b.where}: stopwords are not supported (skl2onnx leaves stop words "
                         f"out of the vocabulary instead)")
    case = CASES[action]
    flow = replace(flow, after=case or flow.after) if flow.classes is not None else \
        replace(flow, before=case or flow.before)
    out = b.alias(ins[0], 0, ins[0].shape)
    b.texts[node.output[0]] = flow
    return [out]


def character_class(b: object, pattern: str) -> bytes:
    """A tokenexp of one character class repeated (`[a-zA-Z0-9_]+`, `\\w+`) as a table of
    the bytes in it; bytes past ASCII (UTF-8's) are in it when a non-ASCII letter is."""
    if len(pattern) > MAX_PATTERN or not pattern.endswith("+"):
        raise ModelError(f"{b.where}: the tokenexp {pattern[:80]!r} is not supported (one "
                         f"character class repeated, such as [a-zA-Z0-9_]+, is)")
    cls = pattern[:-1]
    if not (cls.startswith("[") and cls.endswith("]")) and cls not in ("\\w", "\\S", "\\d"):
        raise ModelError(f"{b.where}: the tokenexp {pattern[:80]!r} is not supported (one "
                         f"character class repeated, such as [a-zA-Z0-9_]+, is)")
    try:
        compiled = re.compile(cls, re.ASCII)
    except re.error:
        raise ModelError(f"{b.where}: the tokenexp {pattern[:80]!r} is not a valid "
                         f"expression") from None
    table = bytearray(256)
    for byte in range(1, 128):
        table[byte] = 1 if compiled.fullmatch(chr(byte)) else 0
    if cls.startswith("[^") or cls == "\\S":  # these hold every non-ASCII character too
        table[128:] = b"\x01" * 128
    return bytes(table)


@ms_handler("Tokenizer")
def tokenizer(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    flow = flow_of(b, node.input[0])
    if flow.classes is not None:
        raise ModelError(f"{b.where}: the text is tokenized already")
    if int(attrs.get("mark", 0)):
        raise ModelError(f"{b.where}: mark=1 (begin and end marks) is not supported")
    if "tokenexp" not in attrs:
        raise ModelError(f"{b.where}: a Tokenizer with separators is not supported (one with "
                         f"a tokenexp of one character class, as skl2onnx writes, is)")
    classes = character_class(b, _text(attrs["tokenexp"]))
    x = ins[0]
    out = b.alias(x, 0, x.shape + (1,))  # the tokens' width is the text's: not planned
    b.texts[node.output[0]] = replace(flow, classes=classes,
                                      mincharnum=max(1, int(attrs.get("mincharnum", 1))))
    return [out]


def fnv1a(key: bytes) -> int:
    h = 2166136261
    for byte in key:
        h = ((h ^ byte) * 16777619) & 0xFFFFFFFF
    return h


def vocabulary(b: object, attrs: dict, counts: list[int]) -> tuple[np.ndarray, bytes, int, int]:
    """The pool's n-grams in the kernel's hash table: (table, key bytes, its size, V). A
    token is a string's bytes, or an integer's 8 little-endian bytes."""
    if attrs.get("pool_strings"):
        pool = [s if isinstance(s, bytes) else str(s).encode() for s in attrs["pool_strings"]]
    else:
        pool = [int(v).to_bytes(8, "little", signed=True) for v in attrs.get("pool_int64s", [])]
    indexes = [int(i) for i in attrs["ngram_indexes"]]
    keys: list[tuple[bytes, int]] = []
    bounds = list(counts) + [len(pool)]
    position = 0
    for n, (start, end) in enumerate(zip(bounds[:-1], bounds[1:], strict=True), start=1):
        if start > end or end > len(pool) or (end - start) % n:
            raise ModelError(f"{b.where}: ngram_counts {counts[:10]} do not fit "
                             f"{len(pool)} pool strings")
        for at in range(start, end, n):
            if position >= len(indexes):
                raise ModelError(f"{b.where}: {len(indexes)} ngram_indexes for more n-grams")
            keys.append((b"\0".join(pool[at:at + n]), indexes[position]))
            position += 1
    if position != len(indexes):
        raise ModelError(f"{b.where}: {len(indexes)} ngram_indexes for {position} n-grams")
    width = max(indexes) + 1 if indexes else 1
    if min(indexes, default=0) < 0 or width > 1 << 24:
        raise ModelError(f"{b.where}: an ngram index is out of range")
    size = 2
    while size < 2 * len(keys):
        size *= 2
    table = np.zeros((size, 4), np.int32)
    table[:, 1] = -1
    blob = bytearray()
    placed: set[bytes] = set()
    for key, index in keys:
        if key in placed:
            continue  # onnxruntime counts the first
        placed.add(key)
        at = fnv1a(key) & (size - 1)
        while table[at, 1] >= 0:
            at = (at + 1) & (size - 1)
        table[at] = [len(blob), len(key), index, 0]
        blob += key
    return table, bytes(blob) or b"\0", size, width


@handler("TfIdfVectorizer")
def tfidf_vectorizer(b: object, node: object, ins: list[Tensor], attrs: dict) -> list[Tensor]:
    """Over text (after a Tokenizer) or over integers (each value a token)."""
    flow = b.texts.get(node.input[0])
    if flow is not None and flow.classes is None:
        raise ModelError(f"{b.where}: TfIdfVectorizer over untokenized strings is not "
                         f"supported (after a Tokenizer, as skl2onnx writes, it is)")
    if flow is not None and not attrs.get("pool_strings"):
        raise ModelError(f"{b.where}: TfIdfVectorizer over text needs pool_strings")
    if flow is None and not attrs.get("pool_int64s"):
        raise ModelError(f"{b.where}: TfIdfVectorizer over numbers needs pool_int64s")
    lo, hi = int(attrs.get("min_gram_length", 1)), int(attrs.get("max_gram_length", 1))
    skips = int(attrs.get("max_skip_count", 0))
    if not 1 <= lo <= hi <= MAX_GRAM or not 0 <= skips <= MAX_SKIP:
        raise ModelError(f"{b.where}: n-grams of {lo} to {hi} tokens, skipping up to {skips} "
                         f"(1 to {MAX_GRAM} tokens, up to {MAX_SKIP} skipped, are supported)")
    mode = {"TF": 0, "IDF": 1, "TFIDF": 2}.get(_text(attrs.get("mode"), "TF"))
    if mode is None:
        raise ModelError(f"{b.where}: mode {_text(attrs.get('mode'))[:40]} is not supported")
    table, blob, size, width = vocabulary(b, attrs, [int(c) for c in attrs["ngram_counts"]])
    x = ins[0]
    rank = len(x.shape)
    if flow is not None:
        rows, per_row, source = flow.source.size, 0, flow.source
        if (rank == 1 and rows != 1) or rank > 2 or (rank == 2 and x.shape[0] != rows):
            raise ModelError(f"{b.where}: tokens of shape {x.shape} from {rows} strings "
                             f"(one string a row is supported, as skl2onnx reshapes them)")
    else:
        if rank not in (1, 2) or x.size == 0:
            raise ModelError(f"{b.where}: the input must be [C] or [N, C], it is {x.shape}")
        if x.dtype != pg.I64:
            raise ModelError(f"{b.where}: input {x.describe()} must be integers")
        (rows, per_row), source = ((1, x.shape[0]) if rank == 1 else x.shape), x
    shape = (width,) if rank == 1 else (rows, width)
    out = b.out(0, shape, pg.F32)
    weights = None
    if attrs.get("weights"):
        given = np.asarray(attrs["weights"], np.float32)
        indexes = np.asarray(attrs["ngram_indexes"], np.int64)
        if given.size != indexes.size:
            raise ModelError(f"{b.where}: {given.size} weights for {indexes.size} n-grams")
        weights = np.ones(width, np.float32)
        weights[indexes[::-1]] = given[::-1]  # the first n-gram naming an index gives its own
    classes = flow.classes if flow is not None else bytes(256)
    b.prog.emit(pg.OP_TEXT, [
        rows, b.ref(source), b.prog.ref(out), width, flow.before if flow else 0,
        flow.after if flow else 0, b.prog.cref(np.frombuffer(classes, np.uint8)),
        flow.mincharnum if flow else 1, lo, hi, mode, b.prog.cref(table), size,
        b.prog.cref(np.frombuffer(blob, np.uint8)),
        b.prog.cref(weights) if weights is not None else 0, skips, per_row])
    return [out]
