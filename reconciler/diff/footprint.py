"""How much memory a model variant takes on this host, and which variant to download: the first in preference
order that fits. Pure: the GGUF facts and the host's capacity are observed before.

footprint = weights + KV cache + overhead, where the KV cache is
n_layer × n_ctx × (n_embd_k_gqa + n_embd_v_gqa) × bytes per element (llama.cpp's f16 cache by default).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from reconciler.api.host import HostProfile
from reconciler.api.policy import ResourcePolicy
from reconciler.diff.resources import budget

if TYPE_CHECKING:
    from reconciler.api.kinds import ModelVariant
    from reconciler.diff.engines import Blocked
    from reconciler.observe.gguf_facts import GgufFacts
    from reconciler.observe.host import ModelPresence

KIB, MIB, GIB = 1024, 1024 ** 2, 1024 ** 3
F16 = 2
# Compute buffers, scratch and the engine's own memory (a CUDA context alone is a few hundred MiB): llama.cpp's
# compute buffer for a 7B model at 4k context is about 300 MiB, so 512 MiB leaves a margin without being a guess
# that rejects small models on small hosts.
OVERHEAD = 512 * MIB
CPU, GPU = "cpu", "gpu"


@dataclass(frozen=True)
class Footprint:
    weights: int  # bytes
    kv_cache: int  # bytes; 0 when unknown, which the explanation says
    overhead: int  # bytes
    device: str  # CPU or GPU
    explanation: str  # the formula with its numbers, one line

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.overhead


def estimate(weights_bytes: int | None, facts: GgufFacts | None, context: int | None, *,
             kv_bytes_per_element: int = F16, overhead: int = OVERHEAD, device: str) -> Footprint | None:
    """The footprint of one model on `device` serving `context` tokens (None: the model's trained context); None
    when neither a declared size nor a whole-model GGUF header says how big the weights are."""
    weights = _weights(weights_bytes, facts)
    if weights is None:
        return None
    size, source = weights
    kv_cache, kv_text = _kv_cache(facts, context, kv_bytes_per_element)
    total = size + (kv_cache or 0) + overhead
    explanation = (f"weights {human(size)} ({source}) + {kv_text} + overhead {human(overhead)} = {human(total)}"
                   + (" without the KV cache" if kv_cache is None else ""))
    return Footprint(size, kv_cache or 0, overhead, device, explanation)


def _weights(declared: int | None, facts: GgufFacts | None) -> tuple[int, str] | None:
    # The header counts the bytes the engine loads; a declared size is the file's, which is close. A shard's
    # header counts only its own tensors, so a split model needs its declared size.
    if facts is not None and facts.split_count == 1:
        return facts.tensor_bytes, "GGUF header"
    if declared is not None:
        return declared, "declared size"
    return None


def _kv_cache(facts: GgufFacts | None, context: int | None, per_element: int) -> tuple[int | None, str]:
    if facts is None:
        return None, "KV cache unknown: no GGUF header"
    n_ctx = context if context is not None else facts.n_ctx_train
    k, v = facts.n_embd_k_gqa, facts.n_embd_v_gqa
    if n_ctx is None:
        return None, "KV cache unknown: no context size given and the header states none"
    if facts.n_layer is None or k is None or v is None:
        return None, f"KV cache unknown: the GGUF header ({facts.architecture}) lacks the attention shape"
    kv_cache = facts.n_layer * n_ctx * (k + v) * per_element
    ctx_text = f"{n_ctx} ctx" if context is not None else f"{n_ctx} ctx (the model's trained context)"
    return kv_cache, f"KV cache {human(kv_cache)} ({facts.n_layer} layers × {ctx_text} × ({k}+{v}) × {per_element} B)"


@dataclass(frozen=True)
class Needs:
    engine: str | None = None  # the engine that serves this variant
    gpu_memory: int | None = None  # bytes each assigned GPU must have
    cpu_flags: tuple[str, ...] = ()  # e.g. ("avx512f",) for a build that uses them


@dataclass(frozen=True)
class VariantOption:
    name: str
    size: int | None = None  # declared bytes (spec.size)
    facts: GgufFacts | None = None  # from the GGUF header, when it could be read
    needs: Needs = Needs()
    format: str = "gguf"
    invalid: str | None = None  # why its file is not a GGUF model (a malformed header): never chosen
    unjudged: Blocked | None = None  # why its header could not be read yet (an unreachable source): not a misfit


@dataclass(frozen=True)
class Capacity:
    ram_budget: int  # bytes workloads may commit: RAM less the policy's reserve
    gpu_memory: tuple[int, ...] = ()  # total bytes of each GPU this workload would get; () = CPU only
    cpu_flags: frozenset[str] | None = frozenset()  # None: unknown (no /proc/cpuinfo)
    engines: frozenset[str] = frozenset()  # the engines this host can run


@dataclass(frozen=True)
class Rejection:
    name: str
    reason: str  # with the numbers
    invalid: bool = False  # its file is not a GGUF model: InvalidModel when nothing is chosen


@dataclass(frozen=True)
class Selection:
    chosen: int | None  # index into the options, in preference order; None: none fits, download nothing
    chosen_name: str | None
    estimate: Footprint | None  # the chosen variant's
    rejected: tuple[Rejection, ...]  # the variants before the chosen one (all, when none fits), in order
    message: str  # one line for status and plan
    waiting: Blocked | None = None  # chosen is None because a preferred variant cannot be judged yet, and why


def host_capacity(profile: HostProfile, rules: ResourcePolicy, gpu_indices: Iterable[int],
                  engines: Iterable[str]) -> Capacity:
    """The capacity a workload assigned `gpu_indices` has on this host."""
    assigned = set(gpu_indices)
    flags = profile.cpu.flags
    return Capacity(
        ram_budget=budget(profile.memory.total, rules),
        gpu_memory=tuple(gpu.memory_total for gpu in profile.gpus.devices if gpu.index in assigned),
        cpu_flags=None if flags is None else frozenset(flags), engines=frozenset(engines),
    )


def select_variant(options: list[VariantOption], capacity: Capacity, context: int | None,
                   wants_gpu: bool, next_when_unreachable: bool = False) -> Selection:
    """The first variant, in preference order, whose needs the host meets and whose footprint fits: on the GPUs
    (the sum of the assigned GPUs' memory, as when layers are split across them) when the workload wants GPUs and
    has some, else in the RAM budget. A variant of unknown footprint is not known to fit, so it is rejected; one
    whose file is not a GGUF model is never chosen; one whose footprint is unknown only because its source cannot
    be reached now is waited for, unless the spec says to go on to the next (`next_when_unreachable`)."""
    device = GPU if wants_gpu and capacity.gpu_memory else CPU
    rejected: list[Rejection] = []
    for index, option in enumerate(options):
        if option.invalid is not None:
            rejected.append(Rejection(option.name, option.invalid, invalid=True))
            continue
        footprint = estimate(option.size, option.facts, context, device=device)
        unmet = _unmet(option.needs, capacity)
        if unmet is None and footprint is None and option.unjudged is not None:
            if not next_when_unreachable:
                message = f"waiting for {option.name}, which cannot be judged yet ({option.unjudged.reason})"
                return Selection(None, None, None, tuple(rejected), message, option.unjudged)
            rejected.append(Rejection(option.name, f"{option.unjudged.reason}: {option.unjudged.message}"))
            continue
        problem = unmet or _misfit(footprint, capacity, device)
        if problem is None:
            assert footprint is not None  # _misfit rejects an unknown footprint
            message = f"chose {option.name}: {human(footprint.total)} on {device} fits {_room(capacity, device)}"
            if rejected:
                message += "; rejected " + "; ".join(f"{r.name}: {r.reason}" for r in rejected)
            return Selection(index, option.name, footprint, tuple(rejected), message)
        rejected.append(Rejection(option.name, problem))
    reasons = "; ".join(f"{r.name}: {r.reason}" for r in rejected) or "no variants given"
    usable = "is a GGUF model that fits" if any(r.invalid for r in rejected) else "fits"
    return Selection(None, None, None, tuple(rejected), f"no variant {usable} this host, so none is downloaded: {reasons}")


def _unmet(needs: Needs, capacity: Capacity) -> str | None:
    if needs.engine is not None and needs.engine not in capacity.engines:
        available = ", ".join(sorted(capacity.engines)) or "none"
        return f"needs engine {needs.engine}, which this host does not have (available: {available})"
    if needs.cpu_flags:
        if capacity.cpu_flags is None:
            return f"needs CPU flags {' '.join(needs.cpu_flags)}; this host's flags are unknown"
        missing = [flag for flag in needs.cpu_flags if flag not in capacity.cpu_flags]
        if missing:
            return f"needs CPU flags {' '.join(missing)}, which this host's CPU lacks"
    if needs.gpu_memory is not None:
        if not capacity.gpu_memory:
            return f"needs a GPU with {human(needs.gpu_memory)}; none is assigned"
        smallest = min(capacity.gpu_memory)
        if smallest < needs.gpu_memory:
            return f"needs {human(needs.gpu_memory)} on each GPU; an assigned GPU has {human(smallest)}"
    return None


def _misfit(footprint: Footprint | None, capacity: Capacity, device: str) -> str | None:
    if footprint is None:
        return "footprint unknown: declare spec.size (no size and no readable GGUF header of the whole model)"
    if footprint.total <= _limit(capacity, device):
        return None
    return f"needs {human(footprint.total)} on {device}, more than {_room(capacity, device)} ({footprint.explanation})"


def _limit(capacity: Capacity, device: str) -> int:
    return sum(capacity.gpu_memory) if device == GPU else capacity.ram_budget


def _room(capacity: Capacity, device: str) -> str:
    if device == CPU:
        return f"the {human(capacity.ram_budget)} of RAM that may be committed"
    across = f" across {len(capacity.gpu_memory)} GPUs" if len(capacity.gpu_memory) > 1 else ""
    return f"the {human(_limit(capacity, device))} of GPU memory assigned{across}"


def human(count: int) -> str:
    for unit, name in ((GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")):
        if count >= unit:
            return f"{count / unit:.1f} {name}"
    return f"{count} B"


@dataclass(frozen=True)
class ModelView:
    """What a Model amounts to on this host now."""

    presence: ModelPresence | None  # the chosen variant's bytes: where they are (or will be), and whether they are
    variant: ModelVariant | None
    selection: Selection | None = None  # None when there was nothing to choose: one local file
    problem: Blocked | None = None  # NoVariantFits, Downloading, or why the fetch or the check failed
    progress: tuple[int, int | None] | None = None
    # Why the chosen variant's bytes must be fetched now (not in the cache, lost, an earlier fetch failed and its
    # back-off is over); None when they are there, cannot be fetched, or a fetch runs or waits out its back-off.
    absent: str | None = None

    @property
    def ready(self) -> bool:
        return self.problem is None and self.presence is not None and self.presence.present
