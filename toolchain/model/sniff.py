"""Telling an ONNX model from other uploads by its bytes.

An ONNX file is a protobuf ModelProto: a sequence of top-level fields with
known numbers and wire types, one of them the graph. Walking the field
headers (never the contents) tells it apart from a .wasm, a zip, text or
noise without parsing a possibly huge model.
"""

from __future__ import annotations

from wasmq.toolchain.model.wasmfile import read_leb as _varint

VARINT, LEN = 0, 2
# ModelProto: ir_version, producer_name, producer_version, domain, model_version,
# doc_string, graph, opset_import, metadata_props, training_info, functions, configuration
FIELDS = {1: VARINT, 2: LEN, 3: LEN, 4: LEN, 5: VARINT, 6: LEN, 7: LEN, 8: LEN, 14: LEN,
          20: LEN, 25: LEN, 26: LEN}
GRAPH = 7
# Field headers walked at most: the sniff runs in the gateway's request thread, and
# 64 MB of empty fields are 32 M headers (25 s of CPU). A serializer writes fields
# in number order, so a model's ir_version and graph are among its first eight.
MAX_FIELDS = 4096


def is_onnx(data: bytes) -> bool:
    """Whether `data` is laid out as an ONNX ModelProto with a graph."""
    if len(data) < 4 or data[:4] == b"\0asm":
        return False
    view = memoryview(data)
    pos, seen = 0, set()
    try:
        for _ in range(MAX_FIELDS):
            if pos >= len(view):
                break
            key, pos = _varint(view, pos)
            number, wire = key >> 3, key & 7
            if FIELDS.get(number) != wire:
                return False
            seen.add(number)
            if wire == VARINT:
                _, pos = _varint(view, pos)
            else:
                length, pos = _varint(view, pos)
                pos += length
                if pos > len(view):
                    return False
    except ValueError:
        return False
    return GRAPH in seen and 1 in seen
