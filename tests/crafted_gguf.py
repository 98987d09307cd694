"""GGUF headers written byte by byte (little-endian, version 3), so a test can state what no writer would: wrong
types, huge counts and lengths, arrays nested thousands deep, names too long. `tiny_gguf` writes real models."""

from __future__ import annotations

import struct
from collections.abc import Sequence

from gguf.constants import GGMLQuantizationType, GGUFValueType

FORMATS = {
    GGUFValueType.UINT8: "B", GGUFValueType.INT8: "b", GGUFValueType.UINT16: "H", GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I", GGUFValueType.INT32: "i", GGUFValueType.FLOAT32: "f", GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "Q", GGUFValueType.INT64: "q", GGUFValueType.FLOAT64: "d",
}


def string(text: str | bytes, length: int | None = None) -> bytes:
    """A GGUF string; `length` states another length than the bytes that follow."""
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(data) if length is None else length) + data


def scalar(kind: GGUFValueType, value: object) -> bytes:
    return struct.pack("<" + FORMATS[kind], value)


def array(item: int, items: list[bytes], count: int | None = None) -> bytes:
    """An array value's payload: its item type, its count (or `count`), its items."""
    return struct.pack("<IQ", item, len(items) if count is None else count) + b"".join(items)


def nested(depth: int) -> bytes:
    """An array value's payload: arrays of arrays `depth` deep, the innermost empty (12 bytes a level)."""
    return struct.pack("<IQ", GGUFValueType.ARRAY, 1) * (depth - 1) + struct.pack("<IQ", GGUFValueType.UINT8, 0)


def entry(key: str | bytes, kind: int, payload: bytes) -> bytes:
    return string(key) + struct.pack("<I", kind) + payload


def text(key: str, value: str) -> bytes:
    return entry(key, GGUFValueType.STRING, string(value))


def number(key: str, value: int, kind: GGUFValueType = GGUFValueType.UINT32) -> bytes:
    return entry(key, kind, scalar(kind, value))


def tensor(name: str | bytes, dims: tuple[int, ...], kind: int = GGMLQuantizationType.F32, offset: int = 0,
           n_dims: int | None = None) -> bytes:
    return (string(name) + struct.pack("<I", len(dims) if n_dims is None else n_dims)
            + struct.pack(f"<{len(dims)}Q", *dims) + struct.pack("<IQ", kind, offset))


def header(entries: Sequence[bytes], tensors: Sequence[bytes] = (), *, version: int = 3, kv_count: int | None = None,
           tensor_count: int | None = None) -> bytes:
    counts = (len(tensors) if tensor_count is None else tensor_count, len(entries) if kv_count is None else kv_count)
    return b"GGUF" + struct.pack("<IQQ", version, *counts) + b"".join(entries) + b"".join(tensors)


def llama(n_layer: int = 2, n_ctx: int = 256, n_embd: int = 64, n_head: int = 4) -> list[bytes]:
    """The entries that size a llama model."""
    return [text("general.architecture", "llama"), number("llama.block_count", n_layer),
            number("llama.context_length", n_ctx), number("llama.embedding_length", n_embd),
            number("llama.attention.head_count", n_head)]
