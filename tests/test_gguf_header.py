"""The GGUF header reader is total: any bytes give facts, a malformed header (InvalidModel), or an unreadable one
(the declared size is used); never another exception, however deep, long or mistyped the header claims to be.

The fuzz follows tests/test_fuzz.py: deterministic, RECONCILER_FUZZ_EXAMPLES sizes it."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType
from hypothesis import event, given
from hypothesis import strategies as st

from reconciler.diff.footprint import CPU, GPU, Capacity, VariantOption, estimate, human, select_variant
from reconciler.observe.gguf_facts import GgufFacts, GgufMalformed, GgufTruncated, GgufUnreadable
from reconciler.observe.gguf_header import (FIRST_READ, MAX_ENTRIES, MAX_NESTING, MAX_TENSORS, parse_gguf_header,
                                            read_gguf_facts)
from tests import crafted_gguf as crafted
from tests.test_fuzz import FUZZ
from tests.tiny_gguf import write_tiny_llama

T = GGUFValueType
UNREADABLE_ONLY = "unreadable, not malformed"


def malformed(data: bytes, reason: str, **limits: int) -> GgufMalformed:
    with pytest.raises(GgufMalformed, match=reason) as caught:
        parse_gguf_header(data, **limits)
    return caught.value


# -- the crafted files the issue found ---------------------------------------------------------------------------

def test_arrays_nested_5000_deep_are_malformed_not_a_recursion_error(tmp_path: Path) -> None:
    crafted_file = tmp_path / "deep.gguf"
    crafted_file.write_bytes(crafted.header([*crafted.llama(), crafted.entry("x", T.ARRAY, crafted.nested(5000))]))
    assert 55_000 < crafted_file.stat().st_size < 65_000  # the 60 kB file of the report
    with pytest.raises(GgufMalformed, match=f"arrays are nested more than {MAX_NESTING} deep at byte"):
        read_gguf_facts(crafted_file)


def test_arrays_nested_within_the_bound_are_read() -> None:
    facts = parse_gguf_header(crafted.header([*crafted.llama(), crafted.entry("x", T.ARRAY, crafted.nested(MAX_NESTING))]))
    assert facts.n_layer == 2
    malformed(crafted.header([crafted.entry("x", T.ARRAY, crafted.nested(MAX_NESTING + 1))]), "nested more than")


@pytest.mark.parametrize(("kind", "payload"), [
    (T.STRING, crafted.string("32")), (T.UINT64, crafted.scalar(T.UINT64, 32)), (T.INT32, crafted.scalar(T.INT32, 32)),
    (T.FLOAT32, crafted.scalar(T.FLOAT32, 32.0)), (T.BOOL, crafted.scalar(T.BOOL, True)),
    (T.ARRAY, crafted.array(T.UINT32, [crafted.scalar(T.UINT32, 32)])),
])
def test_an_alignment_of_another_type_than_uint32_is_malformed(kind: T, payload: bytes) -> None:
    data = crafted.header([*crafted.llama(), crafted.entry("general.alignment", kind, payload)])
    malformed(data, f"general.alignment is a {kind.name}, not the UINT32")


@pytest.mark.parametrize("alignment", [0, 3, 48, 2 ** 32 - 1])
def test_an_alignment_that_is_not_a_power_of_two_is_malformed(alignment: int) -> None:
    malformed(crafted.header([crafted.number("general.alignment", alignment)]), f"alignment {alignment} is not a power of two")


def test_the_data_starts_at_the_stated_alignment() -> None:
    facts = parse_gguf_header(crafted.header([*crafted.llama(), crafted.number("general.alignment", 64)],
                                             [crafted.tensor("w", (64, 2))]))
    assert facts.data_offset % 64 == 0 and facts.tensor_bytes == 64 * 2 * 4


# -- counts and lengths beyond any header ------------------------------------------------------------------------

@pytest.mark.parametrize(("data", "reason"), [
    (crafted.header([], kv_count=2 ** 64 - 1), "the metadata count at byte 16 is 18446744073709551615; at most 65536"),
    (crafted.header([], tensor_count=2 ** 63), "the tensor count at byte 8 is 9223372036854775808; at most 1048576"),
    (crafted.header([], kv_count=MAX_ENTRIES), "the metadata count at byte 16 is 65536: at 13 bytes or more each"),
    (crafted.header([], tensor_count=MAX_TENSORS), "the tensor count at byte 8 is 1048576: at 24 bytes or more each"),
    (crafted.header([crafted.entry("v", T.ARRAY, crafted.array(T.UINT64, [], count=2 ** 40))]), "an array's length"),
    (crafted.header([crafted.entry("v", T.ARRAY, crafted.array(T.STRING, [], count=2 ** 40))]), "an array's length"),
    (crafted.header([crafted.entry("v", T.ARRAY, crafted.array(T.ARRAY, [], count=2 ** 40))]), "an array's length"),
    (crafted.header([crafted.entry("v", T.STRING, crafted.string("x", length=2 ** 64 - 1))]), "the GGUF header goes on past the"),
])
def test_a_count_or_length_no_header_can_hold_is_malformed_at_once(data: bytes, reason: str) -> None:
    """Judged from the declared number, before a loop or a read trusts it: nothing more of the file is asked for."""
    malformed(data, re.escape(reason), max_bytes=MAX_ENTRIES * 13 - 1)


def test_a_vocabulary_with_one_huge_string_length_is_malformed() -> None:
    strings = [crafted.string("a"), crafted.string("b", length=2 ** 62), crafted.string("c")]
    malformed(crafted.header([crafted.entry("tokens", T.ARRAY, crafted.array(T.STRING, strings))]), "past the 67108864")


@pytest.mark.parametrize(("entries", "reason"), [
    ([crafted.entry("k" * 2 ** 16, T.UINT8, b"\0")], "a metadata key at byte 24 is 65536 bytes long; at most 65535 may be"),
    ([crafted.number("general.architecture", 1)] * 2, "metadata key 'general.architecture' at byte 60 is given twice"),
    ([crafted.entry("k", 13, b"\0")], "unknown GGUF metadata value type 13 at byte 33"),
    ([crafted.entry("k", T.ARRAY, struct.pack("<I", 99))], "unknown GGUF metadata value type 99 at byte 37"),
])
def test_metadata_breaking_the_format_is_malformed(entries: list[bytes], reason: str) -> None:
    malformed(crafted.header(entries), re.escape(reason))


@pytest.mark.parametrize(("tensors", "reason"), [
    ([crafted.tensor("x" * 64, (4,))], "a tensor name at byte 24 is 64 bytes long; at most 63 may be"),
    ([crafted.tensor("w", (4,)), crafted.tensor("w", (4,))], "tensor 'w' at byte 57 is named twice"),
    ([crafted.tensor("w", (1, 1, 1, 1, 1))], "tensor 'w' has 5 dimensions; at most 4 may be"),
    ([crafted.tensor("w", (2 ** 32, 2 ** 32))], "more elements than llama.cpp can count"),
    ([crafted.tensor("w", (0, 2 ** 63))], "more elements than llama.cpp can count"),
    ([crafted.tensor("w", (33,), GGMLQuantizationType.Q4_0)], "has rows of 33 elements, not whole blocks of 32"),
    ([crafted.tensor("w", (4,), n_dims=2 ** 32 - 1)], "has 4294967295 dimensions"),
])
def test_tensor_infos_breaking_the_format_are_malformed(tensors: list[bytes], reason: str) -> None:
    malformed(crafted.header([], tensors), re.escape(reason))


def test_names_from_the_file_are_quoted_short_and_escaped() -> None:
    evil = "\x1b[2J\x1b]0;pwned\x07" + "x" * 100
    error = malformed(crafted.header([crafted.text(evil, "a"), crafted.text(evil, "b")]), "given twice")
    assert "\x1b" not in error.reason and "\\x1b[2J" in error.reason and "x" * 41 not in error.reason
    facts = parse_gguf_header(crafted.header([crafted.text("general.architecture", evil)]))
    assert facts.architecture == "unknown"  # it appears in status lines: only a name llama.cpp could know


def test_long_strings_such_as_a_chat_template_are_read_past_not_kept() -> None:
    template = crafted.text("tokenizer.chat_template", "{% for m in messages %}" * 40_000)  # ~1 MB, as real ones grow
    assert parse_gguf_header(crafted.header([template, *crafted.llama()])).n_layer == 2


@pytest.mark.parametrize("value", [-1, -(2 ** 31)])
def test_negative_shape_numbers_are_not_facts(value: int) -> None:
    facts = parse_gguf_header(crafted.header([*crafted.llama(), crafted.number("llama.attention.head_count_kv", value,
                                                                                 T.INT32)]))
    assert facts.n_head_kv == 4  # as if absent: the head count


# -- truncated files, unknown formats ----------------------------------------------------------------------------

def test_every_truncation_of_a_real_header_is_asked_for_more(tmp_path: Path) -> None:
    whole = write_tiny_llama(tmp_path / "tiny.gguf").read_bytes()
    end = parse_gguf_header(whole).data_offset
    for cut in range(0, end, 97):
        with pytest.raises(GgufTruncated):
            parse_gguf_header(whole[:cut])
        (tmp_path / "cut.gguf").write_bytes(whole[:cut])
        with pytest.raises(GgufMalformed, match="it is empty" if cut == 0 else f"ends inside its GGUF header, after {cut}"):
            read_gguf_facts(tmp_path / "cut.gguf")


def test_a_header_longer_than_the_limit_is_malformed_and_read_no_further(tmp_path: Path) -> None:
    entries = [crafted.text(f"k{index}", "x" * 1000) for index in range(FIRST_READ // 1000 + 10)]
    (tmp_path / "long.gguf").write_bytes(crafted.header(entries) + b"\0" * FIRST_READ)
    with pytest.raises(GgufMalformed, match=f"past the {FIRST_READ} bytes read"):
        read_gguf_facts(tmp_path / "long.gguf", max_bytes=FIRST_READ)
    assert read_gguf_facts(tmp_path / "long.gguf").architecture == "unknown"  # within the default limit it parses


@pytest.mark.parametrize(("data", "reason"), [
    (crafted.header([], version=4), "GGUF version 4 is newer than this reader"),
    (crafted.header(crafted.llama(), [crafted.tensor("w", (4,), 200)]), "tensor 'w' has ggml type 200"),
])
def test_a_format_newer_than_this_reader_is_unreadable_not_malformed(data: bytes, reason: str) -> None:
    """A newer llama.cpp may read it: the declared size is used, the variant stays a candidate."""
    with pytest.raises(GgufUnreadable, match=reason) as caught:
        parse_gguf_header(data)
    assert not isinstance(caught.value, GgufMalformed), UNREADABLE_ONLY


@pytest.mark.parametrize("version", [0, 1])
def test_a_version_llama_cpp_refuses_is_malformed(version: int) -> None:
    malformed(crafted.header([], version=version), f"GGUF version {version} is not read by llama.cpp")


# -- the choice among variants -----------------------------------------------------------------------------------

def test_a_variant_whose_file_is_not_a_model_is_never_chosen() -> None:
    room = Capacity(ram_budget=2 ** 40)
    options = [VariantOption("f16", 1024, invalid="f16.gguf is not a GGUF model: arrays are nested"),
               VariantOption("q4", 1024)]
    selection = select_variant(options, room, None, False)
    assert selection.chosen_name == "q4" and "rejected f16: f16.gguf is not a GGUF model" in selection.message
    nothing = select_variant(options[:1], room, None, False)
    assert nothing.chosen is None and nothing.rejected[0].invalid


# -- the fuzz ------------------------------------------------------------------------------------------------------

SCALARS = {
    T.UINT8: st.integers(0, 255), T.INT8: st.integers(-128, 127), T.UINT16: st.integers(0, 2 ** 16 - 1),
    T.INT16: st.integers(-(2 ** 15), 2 ** 15 - 1), T.INT32: st.integers(-(2 ** 31), 2 ** 31 - 1),
    T.UINT64: st.one_of(st.integers(0, 64), st.just(2 ** 64 - 1)), T.INT64: st.integers(-(2 ** 63), 2 ** 63 - 1),
    T.FLOAT32: st.floats(width=32), T.FLOAT64: st.floats(), T.BOOL: st.booleans(),
    T.UINT32: st.one_of(st.integers(0, 64), st.sampled_from([1, 8, 32, 4096, 2 ** 31, 2 ** 32 - 1])),
}
KINDS = [*SCALARS, T.STRING, T.ARRAY]
# the keys the facts come from, so wrong types and odd values reach them; and any other key
KEYS = st.one_of(st.sampled_from([
    "general.architecture", "general.alignment", "general.file_type", "split.count", "llama.block_count",
    "llama.context_length", "llama.embedding_length", "llama.attention.head_count", "llama.attention.head_count_kv",
    "llama.attention.key_length", "llama.attention.value_length"]), st.text(max_size=12))
GGML_TYPES = st.one_of(st.sampled_from(sorted(GGML_QUANT_SIZES)), st.integers(0, 2 ** 32 - 1))
DIMS = st.one_of(st.integers(0, 4096), st.sampled_from([32, 256, 2 ** 31, 2 ** 32, 2 ** 63 - 1, 2 ** 63, 2 ** 64 - 1]))


def payloads(kind: T, depth: int) -> st.SearchStrategy[bytes]:
    if kind in SCALARS:
        return SCALARS[kind].map(lambda value: crafted.scalar(kind, value))
    if kind is T.STRING:
        return st.one_of(st.sampled_from(["llama", "qwen2", ""]), st.text(max_size=8)).map(crafted.string)
    items = st.sampled_from(KINDS if depth < MAX_NESTING + 1 else KINDS[:-1])
    return items.flatmap(lambda item: st.lists(payloads(item, depth + 1), max_size=3 if depth < 3 else 1).map(
        lambda values: crafted.array(item, values)))



def entries(keys: st.SearchStrategy[str]) -> st.SearchStrategy[bytes]:
    return st.tuples(keys, st.sampled_from(KINDS)).flatmap(
        lambda pair: payloads(pair[1], 1).map(lambda payload: crafted.entry(pair[0], pair[1], payload)))


# mostly any key; the alignment (of any type) and arrays nested up to thousands deep often enough to be found
ENTRIES = st.one_of(entries(KEYS), entries(KEYS), entries(KEYS), entries(st.just("general.alignment")),
                    st.integers(1, 3000).map(lambda depth: crafted.entry("x", T.ARRAY, crafted.nested(depth))))
TENSORS = st.builds(lambda name, dims, kind, offset: crafted.tensor(name, tuple(dims), kind, offset),
                    st.one_of(st.sampled_from(["w", "blk.0.attn_q.weight", "x" * 64]), st.text(max_size=6)),
                    st.lists(DIMS, max_size=5), GGML_TYPES, st.integers(0, 2 ** 64 - 1))
COUNTS = st.sampled_from([None] * 6 + [0, 1, 7, 2 ** 32, 2 ** 63, 2 ** 64 - 1])  # None: the true count


@st.composite
def headers(draw: st.DrawFn) -> bytes:
    """A generated header, then perhaps cut short, or with eight bytes overwritten (a count, a length, a type)."""
    data = crafted.header(draw(st.lists(ENTRIES, max_size=6)), draw(st.lists(TENSORS, max_size=3)),
                          version=draw(st.sampled_from([3, 3, 3, 2, 1, 4])),
                          kv_count=draw(COUNTS), tensor_count=draw(COUNTS))
    mutation = draw(st.sampled_from(["none", "none", "cut", "overwrite"]))
    at = draw(st.integers(0, len(data)))
    if mutation == "cut":
        return data[:at]
    if mutation == "overwrite":
        return data[:at] + draw(st.sampled_from([b"\xff" * 8, b"\0" * 8, struct.pack("<Q", 2 ** 40)])) + data[at + 8:]
    return data


@FUZZ
@given(headers(), st.sampled_from([None, 64, 4096]))
def test_the_header_reader_is_total(data: bytes, limit: int | None) -> None:
    """Facts, or GgufUnreadable (a subclass saying which); and facts the footprint and the choice can use."""
    try:
        facts = parse_gguf_header(data) if limit is None else parse_gguf_header(data, max_bytes=limit)
    except GgufUnreadable as error:
        event(type(error).__name__)  # --hypothesis-show-statistics: how often each answer is reached
        assert error.reason and len(error.reason) < 400, "a reason fit for a status line"
        return
    event("facts")
    assert isinstance(facts, GgufFacts) and facts.data_offset <= len(data) + 2 ** 32
    for device in (CPU, GPU):
        for context in (None, 4096):
            footprint = estimate(None, facts, context, device=device)
            assert footprint is None or human(footprint.total) and footprint.explanation
    select_variant([VariantOption("v", 1024, facts)], Capacity(2 ** 30, (2 ** 34,)), None, True)


@st.composite
def llama_headers(draw: st.DrawFn) -> tuple[bytes, dict[str, int]]:
    shape = {"n_layer": draw(st.integers(0, 2 ** 32 - 1)), "n_ctx": draw(st.integers(0, 2 ** 32 - 1)),
             "n_embd": draw(st.integers(0, 2 ** 32 - 1)), "n_head": draw(st.integers(0, 2 ** 32 - 1))}
    alignment = draw(st.sampled_from([1, 8, 32, 64, 4096]))
    rows = draw(st.lists(st.tuples(st.integers(1, 64), st.integers(0, 64)), max_size=4))
    tensors = [crafted.tensor(f"t{index}", (columns * 32, rows_), GGMLQuantizationType.Q8_0)
               for index, (columns, rows_) in enumerate(rows)]
    entries = [*crafted.llama(**shape), crafted.number("general.alignment", alignment)]
    data = crafted.header(draw(st.permutations(entries)), tensors)
    return data, shape | {"alignment": alignment, "tensor_bytes": sum(c * 32 * r // 32 * 34 for c, r in rows)}


@FUZZ
@given(llama_headers(), st.data())
def test_a_well_formed_header_reads_as_written_and_any_cut_asks_for_more(header: tuple[bytes, dict[str, int]],
                                                                       data: st.DataObject) -> None:
    written, stated = header
    facts = parse_gguf_header(written + b"\0" * 64)
    assert (facts.n_layer, facts.n_ctx_train, facts.n_embd, facts.n_head) == (
        stated["n_layer"], stated["n_ctx"], stated["n_embd"], stated["n_head"])
    assert facts.tensor_bytes == stated["tensor_bytes"] and facts.data_offset % stated["alignment"] == 0
    assert len(written) <= facts.data_offset < len(written) + stated["alignment"]
    with pytest.raises(GgufTruncated):
        parse_gguf_header(written[:data.draw(st.integers(0, len(written) - 1))])
