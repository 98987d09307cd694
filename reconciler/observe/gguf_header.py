"""What a GGUF model's header states (shape, tensor sizes), read from its first bytes: a local file's, or a remote
one's through HTTP Range requests that grow until the header parses, so a model is sized before it is downloaded.

`gguf.GGUFReader` maps a whole file and fails on a prefix, so the header (GGUF v2/v3) is parsed here, with the
`gguf` package's constants.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import requests
from gguf.constants import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType, GGUFValueType, Keys

from reconciler.observe.gguf_facts import GgufFacts, GgufTruncated, GgufUnreadable

MIB = 1024 ** 2
FIRST_READ = 2 * MIB  # most headers fit; one with a 150k-token vocabulary takes a few MiB
MAX_HEADER = 64 * MIB
_MAGIC = b"GGUF"
_VERSIONS = (2, 3)  # v1 had 32-bit counts and lengths and is long gone
_SMALL_ARRAY = 1024  # numeric arrays up to this long are kept (per-layer head counts); vocabularies are skipped
_SCALAR = {
    GGUFValueType.UINT8: "B", GGUFValueType.INT8: "b", GGUFValueType.UINT16: "H", GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I", GGUFValueType.INT32: "i", GGUFValueType.FLOAT32: "f", GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "Q", GGUFValueType.INT64: "q", GGUFValueType.FLOAT64: "d",
}


def read_gguf_facts(path: Path, *, max_bytes: int = MAX_HEADER) -> GgufFacts:
    """The facts of a local GGUF file, reading no more of it than its header."""
    try:
        with open(path, "rb") as file:
            return _grow(lambda size: _file_start(file, size), FIRST_READ, max_bytes, str(path))
    except OSError as error:
        raise GgufUnreadable(f"cannot read {path}: {error.strerror or error}") from error


def fetch_gguf_facts(url: str, *, timeout: float = 10.0, session: requests.Session | None = None,
                     max_bytes: int = MAX_HEADER, first_read: int = FIRST_READ) -> GgufFacts:
    """The facts of a GGUF file at an http(s) URL, from Range requests for its start. `session` carries what the
    host needs (an Authorization header, a proxy); a fresh one is used and closed when none is given."""
    http = session or requests.Session()
    try:
        return _grow(lambda size: _url_start(http, url, size, timeout), first_read, max_bytes, url)
    finally:
        if session is None:
            http.close()


def parse_gguf_header(data: bytes) -> GgufFacts:
    """The facts in the header at the start of `data`; GgufTruncated when `data` ends inside it."""
    start = bytes(data[:len(_MAGIC)])
    if start != _MAGIC[:len(start)]:
        raise GgufUnreadable(f"not a GGUF file: it starts with {_show(data[:8])}")
    cursor = _Cursor(memoryview(data), "<")
    cursor.skip(len(_MAGIC))
    version = cursor.number("I")
    if version & 0xFFFF == 0:  # a big-endian file: its version reads byte-swapped
        cursor.order = ">"
        version = struct.unpack(">I", struct.pack("<I", version))[0]
    if version not in _VERSIONS:
        raise GgufUnreadable(f"GGUF version {version} is not supported (only {' and '.join(map(str, _VERSIONS))})")
    tensor_count, kv_count = cursor.number("Q"), cursor.number("Q")
    metadata = {}
    for _ in range(kv_count):
        key = cursor.string()
        metadata[key] = _value(cursor, cursor.number("I"))
    tensor_bytes = sum(_tensor_bytes(cursor) for _ in range(tensor_count))
    alignment = metadata.get(Keys.General.ALIGNMENT) or GGUF_DEFAULT_ALIGNMENT
    return _facts(metadata, tensor_bytes, (cursor.at + alignment - 1) // alignment * alignment)


class _Cursor:
    def __init__(self, data: memoryview, order: str) -> None:
        self.data, self.order, self.at = data, order, 0

    def skip(self, size: int) -> None:
        if self.at + size > len(self.data):
            raise _past(len(self.data))
        self.at += size

    def unpack(self, layout: str) -> tuple:
        layout = self.order + layout
        start = self.at
        self.skip(struct.calcsize(layout))
        return struct.unpack_from(layout, self.data, start)

    def number(self, layout: str) -> int:
        return self.unpack(layout)[0]

    def skip_strings(self, count: int) -> None:
        # A vocabulary is 100k+ strings: one tight loop, not a call per string.
        length, data, at, end = struct.Struct(self.order + "Q"), self.data, self.at, len(self.data)
        for _ in range(count):
            if at + 8 > end:
                raise _past(end)
            at += 8 + length.unpack_from(data, at)[0]
        if at > end:
            raise _past(end)
        self.at = at

    def string(self) -> str:
        size = self.number("Q")
        start = self.at
        self.skip(size)
        return bytes(self.data[start:self.at]).decode("utf-8", "replace")


def _past(end: int) -> GgufTruncated:
    return GgufTruncated(f"the header goes on past byte {end}")


def _value(cursor: _Cursor, kind_id: int) -> object:
    """A metadata value; None for an array that is skipped rather than decoded."""
    kind = _value_type(kind_id, cursor.at)
    if kind is GGUFValueType.STRING:
        return cursor.string()
    if kind is not GGUFValueType.ARRAY:
        return cursor.number(_SCALAR[kind])
    item, count = _value_type(cursor.number("I"), cursor.at), cursor.number("Q")
    if item in _SCALAR:
        if count <= _SMALL_ARRAY:
            return cursor.unpack(f"{count}{_SCALAR[item]}")
        cursor.skip(count * struct.calcsize(_SCALAR[item]))
        return None
    if item is GGUFValueType.STRING:
        cursor.skip_strings(count)
        return None
    for _ in range(count):  # nested arrays: each states its own length
        _value(cursor, item)
    return None


def _value_type(kind_id: int, at: int) -> GGUFValueType:
    try:
        return GGUFValueType(kind_id)
    except ValueError:
        raise GgufUnreadable(f"unknown GGUF metadata value type {kind_id} before byte {at}") from None


def _tensor_bytes(cursor: _Cursor) -> int:
    name = cursor.string()
    dims = cursor.unpack(f"{cursor.number('I')}Q")
    type_id = cursor.number("I")
    cursor.skip(8)  # its offset in the data: the sizes are what is counted
    try:
        block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(type_id)]
    except (ValueError, KeyError):
        raise GgufUnreadable(f"tensor {name} has ggml type {type_id}, which this gguf package does not know") from None
    return math.prod(dims) // block * block_bytes


def _facts(metadata: dict[str, object], tensor_bytes: int, data_offset: int) -> GgufFacts:
    named = metadata.get(Keys.General.ARCHITECTURE)
    architecture = named if isinstance(named, str) else "unknown"

    def number(template: str) -> int | None:
        value = metadata.get(template.format(arch=architecture))
        if isinstance(value, tuple):  # given per layer: the largest counts, so the estimate errs high
            value = max(value, default=None)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    n_embd, n_head = number(Keys.LLM.EMBEDDING_LENGTH), number(Keys.Attention.HEAD_COUNT)
    n_head_kv = number(Keys.Attention.HEAD_COUNT_KV)
    head_size = n_embd // n_head if n_embd and n_head else None
    key_length, value_length = number(Keys.Attention.KEY_LENGTH), number(Keys.Attention.VALUE_LENGTH)
    return GgufFacts(
        architecture=architecture, n_layer=number(Keys.LLM.BLOCK_COUNT), n_ctx_train=number(Keys.LLM.CONTEXT_LENGTH),
        n_embd=n_embd, n_head=n_head, n_head_kv=n_head if n_head_kv is None else n_head_kv,
        key_length=head_size if key_length is None else key_length,
        value_length=head_size if value_length is None else value_length,
        file_type=number(Keys.General.FILE_TYPE), tensor_bytes=tensor_bytes, data_offset=data_offset,
        split_count=number(Keys.Split.LLM_KV_SPLIT_COUNT) or 1,
    )


def _grow(read_start: Callable[[int], bytes], first: int, limit: int, what: str) -> GgufFacts:
    """Parse ever longer starts of the file (doubling) until the header is whole, the file ends, or `limit`."""
    size = min(first, limit)
    while True:
        try:
            start = read_start(size)
            return parse_gguf_header(start)
        except GgufTruncated:
            if not start:
                raise GgufUnreadable(f"{what}: not a GGUF file: it is empty") from None
            if len(start) < size:
                raise GgufUnreadable(f"{what}: the file ends inside its GGUF header, after {len(start)} bytes") from None
            if size >= limit:
                raise GgufUnreadable(f"{what}: the GGUF header goes on past the {limit} bytes read (max_bytes)") from None
            size = min(size * 2, limit)
        except GgufUnreadable as error:
            raise GgufUnreadable(f"{what}: {error.reason}") from None


def _file_start(file: BinaryIO, size: int) -> bytes:
    file.seek(0)
    return file.read(size)


def _url_start(http: requests.Session, url: str, size: int, timeout: float) -> bytes:
    # Ranges count the bytes as stored, so no content coding may come between.
    headers = {"Range": f"bytes=0-{size - 1}", "Accept-Encoding": "identity"}
    try:
        with http.get(url, headers=headers, stream=True, timeout=timeout) as response:
            if response.status_code == 416:  # not even byte 0 exists
                return b""
            if response.status_code not in (200, 206):
                raise GgufUnreadable(f"HTTP {response.status_code} {response.reason}")
            # A server that ignores Range sends the whole file (200): take its start and hang up.
            return _read_at_most(response, size)
    except requests.RequestException as error:
        raise GgufUnreadable(f"cannot fetch it: {error}") from error


def _read_at_most(response: requests.Response, size: int) -> bytes:
    chunks, have = [], 0
    for chunk in response.iter_content(chunk_size=min(size, MIB)):
        chunks.append(chunk)
        have += len(chunk)
        if have >= size:
            break
    return b"".join(chunks)[:size]


def _show(start: bytes) -> str:
    printable = "".join(chr(byte) if 32 <= byte < 127 else "." for byte in start)
    return f"{start.hex(' ')} ({printable!r})"
