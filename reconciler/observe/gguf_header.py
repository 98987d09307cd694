"""What a GGUF model's header states (shape, tensor sizes), read from its first bytes: a local file's, or a remote
one's through HTTP Range requests that grow until the header parses, so a model is sized before it is downloaded.

`gguf.GGUFReader` maps a whole file and fails on a prefix, so the header (GGUF v2/v3) is parsed here, with the
`gguf` package's constants.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import requests
from gguf.constants import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType, GGUFValueType, Keys

from reconciler.observe.gguf_facts import GgufFacts, GgufMalformed, GgufTruncated, GgufUnreadable

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
# The bounds a header is held to, from the GGUF spec and from what llama.cpp's own reader (ggml/src/gguf.cpp)
# refuses: a file past them is one no engine loads, and a parser that trusted them could be made to recurse or
# loop without end by a few crafted bytes.
MAX_KEY_BYTES = 2 ** 16 - 1  # the spec's bound on a metadata key
MAX_TENSOR_NAME_BYTES = 63  # llama.cpp refuses a name of GGML_MAX_NAME (64) bytes or more
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NESTING = 8  # arrays of arrays: llama.cpp reads none, gguf-py any depth; 5,000 deep exhausted Python's stack
# Ours: models have tens of metadata entries and thousands of tensors; millions would cost the daemon memory per entry.
MAX_ENTRIES = 2 ** 16
MAX_TENSORS = 2 ** 20
_SMALL_STRING = 1024  # string values up to this long are kept (names); chat templates and licences are skipped
_INT64_MAX = 2 ** 63 - 1  # llama.cpp counts elements in int64
# The fewest bytes each item can take, so a declared count is judged before any loop trusts it.
_MIN_KV_BYTES = 8 + 4 + 1  # key length, value type, a one-byte value
_MIN_TENSOR_BYTES = 8 + 4 + 4 + 8  # name length, dimension count, type, offset
_MIN_ARRAY_BYTES = 4 + 8  # item type, count
_ARCHITECTURE = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # llama.cpp's names (llama, gpt-neox, jina-bert-v2, ...)


def read_gguf_facts(path: Path, *, max_bytes: int = MAX_HEADER) -> GgufFacts:
    """The facts of a local GGUF file, reading no more of it than its header."""
    try:
        with open(path, "rb") as file:
            return _grow(lambda size: _file_start(file, size), FIRST_READ, max_bytes)
    except OSError as error:
        raise GgufUnreadable(f"cannot read {path}: {error.strerror or error}") from error


def fetch_gguf_facts(url: str, *, timeout: float = 10.0, session: requests.Session | None = None,
                     max_bytes: int = MAX_HEADER, first_read: int = FIRST_READ) -> GgufFacts:
    """The facts of a GGUF file at an http(s) URL, from Range requests for its start. `session` carries what the
    host needs (an Authorization header, a proxy); a fresh one is used and closed when none is given. Errors do
    not repeat the URL (it may hold a password): the caller names the source."""
    http = session or requests.Session()
    try:
        return _grow(lambda size: _url_start(http, url, size, timeout), first_read, max_bytes)
    finally:
        if session is None:
            http.close()


def parse_gguf_header(data: bytes, *, max_bytes: int = MAX_HEADER) -> GgufFacts:
    """The facts in the header at the start of `data`. Total: GgufTruncated when `data` ends inside it,
    GgufMalformed when it breaks the format or its bounds (a header longer than `max_bytes` included),
    GgufUnreadable when it is newer than this reader; never another exception."""
    start = bytes(data[:len(_MAGIC)])
    if start != _MAGIC[:len(start)]:
        # its bytes are never quoted: a status file is world-readable, and the file may be any file (/etc/shadow)
        raise GgufMalformed("not a GGUF file: no GGUF magic at its start")
    cursor = _Cursor(memoryview(data), "<", max_bytes)
    cursor.skip(len(_MAGIC))
    version = cursor.number("I")
    if version & 0xFFFF == 0:  # a big-endian file: its version reads byte-swapped
        cursor.order = ">"
        version = struct.unpack(">I", struct.pack("<I", version))[0]
    known = " and ".join(map(str, _VERSIONS))
    if version < min(_VERSIONS):
        raise GgufMalformed(f"GGUF version {version} is not read by llama.cpp (only {known})")
    if version not in _VERSIONS:
        raise GgufUnreadable(f"GGUF version {version} is newer than this reader (only {known})")
    tensor_count, kv_count = cursor.number("Q"), cursor.number("Q")
    if kv_count > MAX_ENTRIES:
        raise GgufMalformed(f"the metadata count at byte 16 is {kv_count}; at most {MAX_ENTRIES} are read")
    cursor.claim(kv_count, _MIN_KV_BYTES, "the metadata count", 16)
    metadata: dict[str, object] = {}
    for _ in range(kv_count):
        key = _key(cursor, metadata)
        kind = _value_type(cursor)
        if key == Keys.General.ALIGNMENT and kind is not GGUFValueType.UINT32:
            raise GgufMalformed(f"{key} is a {kind.name}, not the UINT32 (a power of two) llama.cpp reads")
        metadata[key] = _value(cursor, kind, 1)
    alignment = metadata.get(Keys.General.ALIGNMENT, GGUF_DEFAULT_ALIGNMENT)
    assert isinstance(alignment, int)  # a UINT32, checked above
    if alignment <= 0 or alignment & (alignment - 1):
        raise GgufMalformed(f"{Keys.General.ALIGNMENT} {alignment} is not a power of two")
    if tensor_count > MAX_TENSORS:
        raise GgufMalformed(f"the tensor count at byte 8 is {tensor_count}; at most {MAX_TENSORS} are read")
    cursor.claim(tensor_count, _MIN_TENSOR_BYTES, "the tensor count", 8)
    names: set[str] = set()
    tensor_bytes = sum(_tensor_bytes(cursor, names) for _ in range(tensor_count))
    return _facts(metadata, tensor_bytes, (cursor.at + alignment - 1) // alignment * alignment)


class _Cursor:
    def __init__(self, data: memoryview, order: str, limit: int) -> None:
        self.data, self.order, self.limit, self.at = data, order, limit, 0

    def skip(self, size: int) -> None:
        if self.at + size > len(self.data):
            raise self._beyond(self.at + size)
        self.at += size

    def claim(self, count: int, each: int, what: str, where: int) -> None:
        """Refuse a count (read at byte `where`) of items no header within the limit can hold from here, before a
        loop or a read trusts it."""
        if self.at + count * each > self.limit:
            raise GgufMalformed(f"{what} at byte {where} is {count}: at {each} bytes or more each, the header "
                                f"would go on past the {self.limit} bytes read (max_bytes)")

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
                raise self._beyond(at + 8)
            at += 8 + length.unpack_from(data, at)[0]
        if at > end:
            raise self._beyond(at)
        self.at = at

    def string(self, what: str, longest: int) -> str:
        at, size = self.at, self.number("Q")
        if size > longest:
            raise GgufMalformed(f"{what} at byte {at} is {size} bytes long; at most {longest} may be")
        self.skip(size)
        return bytes(self.data[at + 8:self.at]).decode("utf-8", "replace")

    def _beyond(self, at: int) -> GgufUnreadable:
        """Why the header cannot be read up to `at`: more bytes are needed, or no header may be that long."""
        if at > self.limit:
            return GgufMalformed(f"the GGUF header goes on past the {self.limit} bytes read (max_bytes)")
        return GgufTruncated(f"the header goes on past byte {len(self.data)}")


def _key(cursor: _Cursor, metadata: dict[str, object]) -> str:
    at = cursor.at
    key = cursor.string("a metadata key", MAX_KEY_BYTES)
    if key in metadata:
        raise GgufMalformed(f"metadata key {_quoted(key)} at byte {at} is given twice")
    return key


def _value(cursor: _Cursor, kind: GGUFValueType, depth: int) -> object:
    """A metadata value; None for an array that is skipped rather than decoded."""
    if kind is GGUFValueType.STRING:
        start = cursor.at + 8
        cursor.skip_strings(1)
        if cursor.at - start > _SMALL_STRING:
            return None
        return bytes(cursor.data[start:cursor.at]).decode("utf-8", "replace")
    if kind is not GGUFValueType.ARRAY:
        return cursor.number(_SCALAR[kind])
    item = _value_type(cursor)
    count = cursor.number("Q")
    if item in _SCALAR:
        if count <= _SMALL_ARRAY:
            return cursor.unpack(f"{count}{_SCALAR[item]}")
        cursor.claim(count, struct.calcsize(_SCALAR[item]), "an array's length", cursor.at - 8)
        cursor.skip(count * struct.calcsize(_SCALAR[item]))
        return None
    cursor.claim(count, 8 if item is GGUFValueType.STRING else _MIN_ARRAY_BYTES, "an array's length", cursor.at - 8)
    if item is GGUFValueType.STRING:
        cursor.skip_strings(count)
        return None
    if depth >= MAX_NESTING:
        raise GgufMalformed(f"arrays are nested more than {MAX_NESTING} deep at byte {cursor.at}")
    for _ in range(count):  # nested arrays: each states its own item type and length
        _value(cursor, item, depth + 1)
    return None


def _value_type(cursor: _Cursor) -> GGUFValueType:
    at, kind_id = cursor.at, cursor.number("I")
    try:
        return GGUFValueType(kind_id)
    except ValueError:
        raise GgufMalformed(f"unknown GGUF metadata value type {kind_id} at byte {at}") from None


def _tensor_bytes(cursor: _Cursor, names: set[str]) -> int:
    at = cursor.at
    name = cursor.string("a tensor name", MAX_TENSOR_NAME_BYTES)
    if name in names:
        raise GgufMalformed(f"tensor {_quoted(name)} at byte {at} is named twice")
    names.add(name)
    n_dims = cursor.number("I")
    if n_dims > MAX_DIMS:
        raise GgufMalformed(f"tensor {_quoted(name)} has {n_dims} dimensions; at most {MAX_DIMS} may be")
    dims = cursor.unpack(f"{n_dims}Q")
    if math.prod(dims) >= _INT64_MAX or any(dim > _INT64_MAX for dim in dims):
        raise GgufMalformed(f"tensor {_quoted(name)} has shape {dims}: more elements than llama.cpp can count")
    type_id = cursor.number("I")
    cursor.skip(8)  # its offset in the data: the sizes are what is counted
    try:
        block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(type_id)]
    except (ValueError, KeyError):
        raise GgufUnreadable(f"tensor {_quoted(name)} has ggml type {type_id}, which this gguf package does not "
                             "know") from None
    if dims and dims[0] % block:
        raise GgufMalformed(f"tensor {_quoted(name)} has rows of {dims[0]} elements, not whole blocks of {block}")
    return math.prod(dims) // block * block_bytes


def _facts(metadata: dict[str, object], tensor_bytes: int, data_offset: int) -> GgufFacts:
    named = metadata.get(Keys.General.ARCHITECTURE)
    architecture = named if isinstance(named, str) and _ARCHITECTURE.fullmatch(named) else "unknown"

    def number(template: str) -> int | None:
        value = metadata.get(template.format(arch=architecture))
        if isinstance(value, tuple):  # given per layer: the largest counts, so the estimate errs high
            value = max(value, default=None)
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None

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


def _grow(read_start: Callable[[int], bytes], first: int, limit: int) -> GgufFacts:
    """Parse ever longer starts of the file (doubling) until the header is whole or the file ends; the parser
    refuses a header longer than `limit`."""
    size = min(first, limit)
    while True:
        start = read_start(size)
        try:
            return parse_gguf_header(start, max_bytes=limit)
        except GgufTruncated:
            if not start:
                raise GgufMalformed("not a GGUF file: it is empty") from None
            if len(start) < size:
                raise GgufMalformed(f"the file ends inside its GGUF header, after {len(start)} bytes") from None
            size = min(size * 2, limit)


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


def _quoted(text: str) -> str:
    """A name from the file, fit for a status line: short, its control characters escaped."""
    return repr(text if len(text) <= 40 else text[:40] + "…")

