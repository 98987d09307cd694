"""Model footprints before download: the GGUF header read from a file's first bytes (locally and by HTTP Range),
the KV-cache formula, and the choice of the first variant that fits the host."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import gguf
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.api.host import HostProfile
from reconciler.api.policy import ResourcePolicy
from reconciler.diff.footprint import (
    CPU, GPU, OVERHEAD, Capacity, Needs, VariantOption, estimate, host_capacity, human, select_variant,
)
from reconciler.observe.gguf_header import (
    GgufFacts, GgufTruncated, GgufUnreadable, fetch_gguf_facts, parse_gguf_header, read_gguf_facts,
)
from tests import tiny_gguf
from tests.tiny_gguf import write_tiny_llama

GIB = 1024 ** 3
PROPERTIES = settings(derandomize=True, deadline=None, max_examples=200, database=None)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


# --- the header -------------------------------------------------------------------------------------------------


def test_local_header_states_the_shape_and_the_tensor_bytes(tiny: Path) -> None:
    facts = read_gguf_facts(tiny)
    assert (facts.architecture, facts.n_layer, facts.n_ctx_train) == ("llama", tiny_gguf.N_LAYER, tiny_gguf.N_CTX_TRAIN)
    assert (facts.n_embd, facts.n_head, facts.n_head_kv) == (tiny_gguf.N_EMBD, tiny_gguf.N_HEAD, tiny_gguf.N_HEAD_KV)
    head = tiny_gguf.N_EMBD // tiny_gguf.N_HEAD
    assert (facts.n_embd_k_gqa, facts.n_embd_v_gqa) == (tiny_gguf.N_HEAD_KV * head,) * 2
    assert facts.file_type == gguf.LlamaFileType.MOSTLY_F16
    # The whole-file reader agrees, and what is not tensor data is the header and its alignment padding.
    reader = gguf.GGUFReader(tiny)
    assert facts.tensor_bytes == sum(int(tensor.n_bytes) for tensor in reader.tensors)
    assert facts.data_offset == reader.data_offset
    size = tiny.stat().st_size
    assert facts.tensor_bytes <= size
    assert size - facts.tensor_bytes - facts.data_offset < 32 * len(reader.tensors)  # per-tensor padding only


@given(cut=st.integers(min_value=0, max_value=20_000))
@PROPERTIES
def test_a_prefix_parses_whole_or_asks_for_more(tiny: Path, cut: int) -> None:
    data = tiny.read_bytes()
    whole = parse_gguf_header(data)
    if cut >= whole.data_offset:
        assert parse_gguf_header(data[:cut]) == whole
    elif cut <= whole.data_offset - 32:  # the header ends within the last alignment step before the data
        with pytest.raises(GgufTruncated):
            parse_gguf_header(data[:cut])


def small_gguf(path: Path, endian: gguf.GGUFEndian = gguf.GGUFEndian.LITTLE, head_count_kv: object = 4) -> Path:
    writer = gguf.GGUFWriter(path, "llama", endianess=endian)
    writer.add_block_count(2)
    writer.add_embedding_length(64)
    writer.add_head_count(4)
    writer.add_key_value("llama.attention.head_count_kv", head_count_kv,
                         gguf.GGUFValueType.ARRAY if isinstance(head_count_kv, list) else gguf.GGUFValueType.UINT32,
                         sub_type=gguf.GGUFValueType.UINT32 if isinstance(head_count_kv, list) else None)
    weights = np.zeros((4, 64), dtype=np.float16)
    writer.add_tensor("x", weights.byteswap() if endian is gguf.GGUFEndian.BIG else weights)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_big_endian_file_reads_the_same(tmp_path: Path) -> None:
    little = read_gguf_facts(small_gguf(tmp_path / "le.gguf"))
    big = read_gguf_facts(small_gguf(tmp_path / "be.gguf", gguf.GGUFEndian.BIG))
    assert big == little and big.tensor_bytes == 4 * 64 * 2


def test_per_layer_head_counts_count_their_largest(tmp_path: Path) -> None:
    facts = read_gguf_facts(small_gguf(tmp_path / "hybrid.gguf", head_count_kv=[0, 2]))
    assert (facts.n_head_kv, facts.n_embd_k_gqa) == (2, 2 * 16)


def test_not_a_gguf_file_says_so_without_quoting_its_bytes(tmp_path: Path) -> None:
    page = tmp_path / "model.gguf"
    page.write_bytes(b"<!DOCTYPE html><html>sign in</html>")
    with pytest.raises(GgufUnreadable, match=re.escape("not a GGUF file: no GGUF magic at its start")) as raised:
        read_gguf_facts(page)
    assert "DOCTYPE" not in str(raised.value) and "3c 21" not in str(raised.value)


def test_an_empty_or_cut_file_says_so(tmp_path: Path, tiny: Path) -> None:
    empty, cut = tmp_path / "empty.gguf", tmp_path / "cut.gguf"
    empty.write_bytes(b"")
    cut.write_bytes(tiny.read_bytes()[:5000])
    with pytest.raises(GgufUnreadable, match="it is empty"):
        read_gguf_facts(empty)
    with pytest.raises(GgufUnreadable, match="ends inside its GGUF header, after 5000 bytes"):
        read_gguf_facts(cut)
    with pytest.raises(GgufUnreadable, match="No such file"):
        read_gguf_facts(tmp_path / "missing.gguf")


def test_a_header_past_the_limit_is_unreadable(tiny: Path) -> None:
    with pytest.raises(GgufUnreadable, match="past the 4096 bytes read"):
        read_gguf_facts(tiny, max_bytes=4096)


@dataclass
class Served:
    url: str
    ranges: list[str | None] = field(default_factory=list)
    honour_range: bool = True


@pytest.fixture
def served(tiny: Path) -> Iterator[Served]:
    """The tiny model on a loopback HTTP server that honours Range (or, when told, ignores it) and logs it."""
    body = tiny.read_bytes()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server spelling
            if self.path != "/tiny.gguf":
                self.send_error(404)
                return
            asked = self.headers.get("Range")
            state.ranges.append(asked)
            match = re.fullmatch(r"bytes=(\d+)-(\d+)", asked or "")
            status, start, end = 200, 0, len(body) - 1
            if match and state.honour_range:
                status, start, end = 206, int(match[1]), min(int(match[2]), len(body) - 1)
            self.send_response(status)
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(body)}")
            self.send_header("Content-Length", str(end - start + 1))
            self.end_headers()
            try:
                self.wfile.write(body[start:end + 1])
            except (BrokenPipeError, ConnectionResetError):  # the client hung up once it had the header
                pass

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state = Served(f"http://127.0.0.1:{server.server_address[1]}/tiny.gguf")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join()


def test_range_requests_grow_until_the_header_parses(served: Served, tiny: Path) -> None:
    facts = fetch_gguf_facts(served.url, first_read=4096)
    assert facts == read_gguf_facts(tiny)
    # 4 KiB and 8 KiB end inside the ~10.8 KB header; 16 KiB holds it. Never the whole ~280 KB file.
    assert served.ranges == ["bytes=0-4095", "bytes=0-8191", "bytes=0-16383"]
    assert tiny.stat().st_size > 16384


def test_a_server_without_range_support_is_read_only_as_far_as_needed(served: Served, tiny: Path) -> None:
    served.honour_range = False
    assert fetch_gguf_facts(served.url, first_read=4096) == read_gguf_facts(tiny)
    assert len(served.ranges) == 3


def test_http_errors_are_unreadable_with_the_status(served: Served) -> None:
    with pytest.raises(GgufUnreadable, match="HTTP 404"):
        fetch_gguf_facts(served.url.replace("tiny", "absent"))
    with pytest.raises(GgufUnreadable, match="past the 8192 bytes read"):
        fetch_gguf_facts(served.url, first_read=4096, max_bytes=8192)


# --- the footprint ----------------------------------------------------------------------------------------------


def llama(tensor_bytes: int, n_layer: int = 32, n_embd: int = 4096, n_head: int = 32, n_head_kv: int = 32,
          n_ctx_train: int | None = 4096) -> GgufFacts:
    head = n_embd // n_head
    return GgufFacts("llama", n_layer, n_ctx_train, n_embd, n_head, n_head_kv, head, head, None, tensor_bytes, 0)


def test_kv_cache_of_a_llama_2_7b_at_4k_is_2_gib() -> None:
    footprint = estimate(None, llama(int(3.8 * GIB)), 4096, device=CPU)
    assert footprint is not None
    assert footprint.kv_cache == 32 * 4096 * (4096 + 4096) * 2 == 2 * GIB
    assert footprint.total == int(3.8 * GIB) + 2 * GIB + OVERHEAD
    assert "KV cache 2.0 GiB (32 layers × 4096 ctx × (4096+4096) × 2 B)" in footprint.explanation
    assert footprint.explanation.startswith("weights 3.8 GiB (GGUF header)")


def test_grouped_query_attention_shrinks_the_kv_cache() -> None:
    footprint = estimate(None, llama(GIB, n_head_kv=8), 8192, device=GPU)  # llama-3-8B-like
    assert footprint is not None and footprint.kv_cache == 32 * 8192 * (1024 + 1024) * 2


def test_the_trained_context_is_the_default_and_says_so() -> None:
    footprint = estimate(None, llama(GIB, n_ctx_train=2048), None, device=CPU)
    assert footprint is not None and footprint.kv_cache == 32 * 2048 * 8192 * 2
    assert "2048 ctx (the model's trained context)" in footprint.explanation


def test_without_a_header_only_the_declared_size_is_known() -> None:
    footprint = estimate(4 * GIB, None, 4096, device=CPU)
    assert footprint is not None and footprint.kv_cache == 0
    assert "weights 4.0 GiB (declared size) + KV cache unknown: no GGUF header" in footprint.explanation
    assert footprint.explanation.endswith("without the KV cache")
    assert estimate(None, None, 4096, device=CPU) is None


def test_a_shard_header_defers_to_the_declared_size() -> None:
    shard = GgufFacts("llama", 80, 8192, 8192, 64, 8, 128, 128, None, 40 * GIB, 0, split_count=3)
    assert estimate(None, shard, 4096, device=CPU) is None
    footprint = estimate(120 * GIB, shard, 4096, device=CPU)
    assert footprint is not None and footprint.weights == 120 * GIB


@given(weights=st.integers(0, 2 ** 40), layers=st.integers(1, 128), context=st.integers(16, 2 ** 18),
       heads=st.sampled_from([(32, 32), (32, 8), (64, 8), (8, 1)]), per_element=st.sampled_from([1, 2, 4]),
       overhead=st.integers(0, 2 ** 32))
@PROPERTIES
def test_the_total_is_the_sum_of_its_parts(weights: int, layers: int, context: int, heads: tuple[int, int],
                                            per_element: int, overhead: int) -> None:
    facts = llama(weights, n_layer=layers, n_head=heads[0], n_head_kv=heads[1])
    footprint = estimate(None, facts, context, kv_bytes_per_element=per_element, overhead=overhead, device=CPU)
    assert footprint is not None
    assert footprint.kv_cache == layers * context * 2 * (4096 // heads[0]) * heads[1] * per_element
    assert footprint.total == weights + footprint.kv_cache + overhead
    assert footprint.explanation.endswith(f"= {human(footprint.total)}")


# --- the choice of variant --------------------------------------------------------------------------------------

F16 = VariantOption("f16", facts=llama(int(12.6 * GIB)), needs=Needs(engine="llama_cpp"))
Q8 = VariantOption("q8_0", facts=llama(int(6.7 * GIB)), needs=Needs(engine="llama_cpp"))
Q4 = VariantOption("q4_k_m", size=int(3.8 * GIB), facts=llama(int(3.8 * GIB)), needs=Needs(engine="llama_cpp"))
VARIANTS = [F16, Q8, Q4]
LLAMA = frozenset({"llama_cpp"})


def host(ram: int, gpus: tuple[int, ...] = (), flags: tuple[str, ...] = ("avx2",)) -> HostProfile:
    return HostProfile.model_validate({
        "cpu": {"architecture": "x86_64", "flags": list(flags)},
        "memory": {"total": ram, "available": ram},
        "disk": {"path": "/"},
        "os": {"system": "Linux", "kernel_release": "6.8"},
        "container_engine": {"reachable": False},
        "gpus": {"devices": [{"index": i, "name": "GPU", "uuid": f"GPU-{i}", "memory_total": m, "memory_free": m}
                             for i, m in enumerate(gpus)], "source": "fake"},
    })


def test_8_gib_of_ram_and_no_gpu_picks_q4() -> None:
    capacity = host_capacity(host(8 * GIB), ResourcePolicy(), (), LLAMA)
    assert capacity.ram_budget == int(8 * GIB * 0.9)
    selection = select_variant(VARIANTS, capacity, 4096, wants_gpu=False)
    assert (selection.chosen, selection.chosen_name) == (2, "q4_k_m")
    assert selection.estimate is not None and selection.estimate.total == int(3.8 * GIB) + 2 * GIB + OVERHEAD
    assert [r.name for r in selection.rejected] == ["f16", "q8_0"]
    assert selection.rejected[0].reason.startswith("needs 15.1 GiB on cpu, more than the 7.2 GiB of RAM")
    assert selection.rejected[1].reason.startswith("needs 9.2 GiB on cpu, more than the 7.2 GiB of RAM")
    assert selection.message.startswith("chose q4_k_m: 6.3 GiB on cpu fits the 7.2 GiB of RAM that may be committed; "
                                        "rejected f16: needs 15.1 GiB")


def test_a_24_gib_gpu_picks_f16_first_in_preference() -> None:
    capacity = host_capacity(host(8 * GIB, gpus=(24 * GIB,)), ResourcePolicy(), (0,), LLAMA)
    selection = select_variant(VARIANTS, capacity, 4096, wants_gpu=True)
    assert selection.chosen_name == "f16" and selection.rejected == ()
    assert selection.estimate is not None and selection.estimate.device == GPU
    assert selection.message == "chose f16: 15.1 GiB on gpu fits the 24.0 GiB of GPU memory assigned"


def test_gpus_not_assigned_to_the_workload_do_not_count() -> None:
    capacity = host_capacity(host(8 * GIB, gpus=(24 * GIB, 12 * GIB)), ResourcePolicy(), (1,), LLAMA)
    selection = select_variant(VARIANTS, capacity, 4096, wants_gpu=True)
    assert selection.chosen_name == "q8_0"
    assert "more than the 12.0 GiB of GPU memory assigned" in selection.rejected[0].reason


def test_layers_split_across_gpus_use_their_sum() -> None:
    capacity = Capacity(ram_budget=0, gpu_memory=(6 * GIB, 6 * GIB), engines=LLAMA)
    selection = select_variant(VARIANTS, capacity, 4096, wants_gpu=True)
    assert selection.chosen_name == "q8_0"
    assert "more than the 12.0 GiB of GPU memory assigned across 2 GPUs" in selection.rejected[0].reason


def test_an_avx512_build_is_rejected_on_an_avx2_host() -> None:
    fast = VariantOption("q4_avx512", size=4 * GIB, needs=Needs(cpu_flags=("avx2", "avx512f")))
    selection = select_variant([fast, Q4], host_capacity(host(16 * GIB), ResourcePolicy(), (), LLAMA), 4096, False)
    assert selection.chosen_name == "q4_k_m"
    assert selection.rejected[0].reason == "needs CPU flags avx512f, which this host's CPU lacks"


def test_unknown_cpu_flags_do_not_meet_a_need() -> None:
    fast = VariantOption("q4_avx512", size=4 * GIB, needs=Needs(cpu_flags=("avx512f",)))
    selection = select_variant([fast], Capacity(ram_budget=16 * GIB, cpu_flags=None), None, False)
    assert selection.rejected[0].reason == "needs CPU flags avx512f; this host's flags are unknown"


def test_a_missing_engine_is_rejected() -> None:
    awq = VariantOption("awq", size=4 * GIB, format="safetensors", needs=Needs(engine="vllm"))
    selection = select_variant([awq, Q4], Capacity(ram_budget=16 * GIB, engines=LLAMA), 4096, False)
    assert selection.chosen_name == "q4_k_m"
    assert selection.rejected[0].reason == "needs engine vllm, which this host does not have (available: llama_cpp)"


def test_a_gpu_memory_need_is_met_by_each_assigned_gpu() -> None:
    big = VariantOption("f16", size=GIB, needs=Needs(gpu_memory=24 * GIB))
    small_gpus = Capacity(ram_budget=64 * GIB, gpu_memory=(24 * GIB, 16 * GIB))
    assert select_variant([big], small_gpus, None, True).rejected[0].reason == (
        "needs 24.0 GiB on each GPU; an assigned GPU has 16.0 GiB")
    assert select_variant([big], Capacity(ram_budget=64 * GIB), None, False).rejected[0].reason == (
        "needs a GPU with 24.0 GiB; none is assigned")


def test_an_unknown_footprint_is_not_known_to_fit() -> None:
    mystery = VariantOption("mystery")
    selection = select_variant([mystery, Q4], Capacity(ram_budget=64 * GIB, engines=LLAMA), 4096, False)
    assert selection.chosen_name == "q4_k_m"
    assert selection.rejected[0].reason.startswith("footprint unknown: declare spec.size")


def test_an_unreachable_variant_is_waited_for_not_taken_for_one_that_does_not_fit() -> None:
    from reconciler.diff.engines import Blocked

    down = VariantOption("best", unjudged=Blocked("SourceUnreachable", "cannot read the GGUF header of http://h/b: HTTP 503"))
    big = VariantOption("f16", size=128 * GIB)
    capacity = Capacity(ram_budget=64 * GIB, engines=LLAMA)
    waiting = select_variant([big, down, Q4], capacity, 4096, False)
    assert (waiting.chosen, waiting.waiting, [r.name for r in waiting.rejected]) == (None, down.unjudged, ["f16"])
    assert waiting.message == "waiting for best, which cannot be judged yet (SourceUnreachable)"
    going_on = select_variant([big, down, Q4], capacity, 4096, False, next_when_unreachable=True)
    assert going_on.chosen_name == "q4_k_m" and going_on.waiting is None
    assert going_on.rejected[1].reason == f"SourceUnreachable: {down.unjudged.message}"
    sized = VariantOption("best", size=GIB, unjudged=down.unjudged)  # its declared size judges it: no wait
    assert select_variant([sized, Q4], capacity, 4096, False).chosen_name == "best"


def test_nothing_fits_so_nothing_is_chosen_and_every_variant_says_why() -> None:
    capacity = host_capacity(host(4 * GIB), ResourcePolicy(), (), LLAMA)
    selection = select_variant(VARIANTS, capacity, 4096, wants_gpu=False)
    assert (selection.chosen, selection.chosen_name, selection.estimate) == (None, None, None)
    assert [r.name for r in selection.rejected] == ["f16", "q8_0", "q4_k_m"]
    assert all("more than the 3.6 GiB of RAM that may be committed" in r.reason for r in selection.rejected)
    assert selection.message.startswith("no variant fits this host, so none is downloaded: f16: needs 15.1 GiB")


@given(sizes=st.lists(st.one_of(st.none(), st.integers(0, 64 * GIB)), min_size=0, max_size=6),
       engines=st.lists(st.sampled_from(["llama_cpp", "vllm"]), max_size=6),
       budget=st.integers(0, 64 * GIB))
@PROPERTIES
def test_the_choice_is_the_first_option_that_fits(sizes: list[int | None], engines: list[str], budget: int) -> None:
    options = [VariantOption(f"v{i}", size=size, needs=Needs(engine=engines[i] if i < len(engines) else None))
               for i, size in enumerate(sizes)]
    capacity = Capacity(ram_budget=budget, engines=LLAMA)
    selection = select_variant(options, capacity, None, wants_gpu=False)

    def fits(option: VariantOption) -> bool:
        engine_ok = option.needs.engine in (None, "llama_cpp")
        return engine_ok and option.size is not None and option.size + OVERHEAD <= budget

    first = next((i for i, option in enumerate(options) if fits(option)), None)
    assert selection.chosen == first
    considered = options if first is None else options[:first]
    assert [r.name for r in selection.rejected] == [option.name for option in considered]


def test_the_progress_line_says_bytes_share_rate_and_eta() -> None:
    from reconciler.control.models import progress_line

    assert progress_line("x.gguf", 10 * 2 ** 20, 40 * 2 ** 20, 5.0) == "x.gguf  10.0/40.0 MiB   25%  2.0 MiB/s  ETA 15s"
    assert progress_line("x.gguf", 2 ** 20, None, 1.0) == "x.gguf  1.0 MiB  1.0 MiB/s"
