"""Which GPUs a workload gets: explicit, exclusive unless shareable, and fitted to memory. Pure."""

from __future__ import annotations

from collections.abc import Mapping

from reconciler.api.quantity import format_bytes
from reconciler.api.workload import GpuRequest
from reconciler.diff.engines import Blocked
from reconciler.observe.gpus import GpuInventory


def assign_gpus(
    request: GpuRequest, inventory: GpuInventory, taken: Mapping[int, str], current: tuple[int, ...] = (),
    shared: Mapping[int, tuple[tuple[str, int], ...]] | None = None,
) -> tuple[int, ...] | Blocked:
    """GPUs for one workload. `taken` maps GPUs held exclusively by other workloads to their names, `shared`
    those held by shareable ones to (name, memory it uses); `current` are the ones this workload runs on now,
    kept when they still fit so a pass does not reshuffle them."""
    taken = _unavailable(request, inventory, taken, shared or {})
    wanted = request.wanted
    if wanted == 0:
        return ()
    if not inventory.gpus:
        return Blocked("NoCompatibleGPU", f"needs {wanted} NVIDIA GPU(s); this host has none ({inventory.reason}): "
                                          "run it on a host with one, or drop spec.resources.gpus")
    if wanted > len(inventory.gpus):  # no waiting makes this host able to: a capability, like having none
        return Blocked("NoCompatibleGPU", f"needs {wanted} NVIDIA GPU(s); this host has {len(inventory.gpus)}: "
                                          "run it on a host with more, or ask for fewer")
    by_index = {gpu.index: gpu for gpu in inventory.gpus}
    fits = [gpu.index for gpu in inventory.gpus if request.min_memory is None or gpu.memory_total >= request.min_memory]
    if request.indices is not None:
        missing = [index for index in request.indices if index not in by_index]
        if missing:
            return Blocked("NoCompatibleGPU", f"GPU {missing} requested; this host has GPUs {sorted(by_index)}")
        small = [index for index in request.indices if index not in fits]
        if small:
            return Blocked("InsufficientGPUMemory", f"GPU {small} has less than {format_bytes(request.min_memory or 0)}")
        busy = {index: taken[index] for index in request.indices if index in taken}
        if busy:
            return Blocked("GPUInUse", "; ".join(f"GPU {index} is assigned to {name}" for index, name in busy.items()))
        return tuple(request.indices)
    free = [index for index in fits if index not in taken]
    keep = [index for index in current if index in free][:wanted]
    chosen = keep + [index for index in free if index not in keep][: wanted - len(keep)]
    if len(fits) < wanted <= len(inventory.gpus):
        return Blocked("InsufficientGPUMemory", f"needs {wanted} GPU(s) with at least {format_bytes(request.min_memory or 0)}; "
                                                f"{len(fits)} of this host's {len(inventory.gpus)} have that much: "
                                                "lower spec.resources.gpus.minMemory, or ask for fewer")
    if len(chosen) < wanted:
        memory = f" with at least {format_bytes(request.min_memory)}" if request.min_memory else ""
        holders = ", ".join(sorted({taken[index] for index in fits if index in taken})) or "nothing"
        return Blocked("InsufficientGPUs", f"needs {wanted} GPU(s){memory}; {len(fits)} fit, in use by {holders}: "
                                           "stop one of those, or ask for fewer")
    return tuple(sorted(chosen))


def _unavailable(
    request: GpuRequest, inventory: GpuInventory, taken: Mapping[int, str], shared: Mapping[int, tuple[tuple[str, int], ...]]
) -> dict[int, str]:
    """GPUs this request cannot have, with who holds them: a shared GPU is open only to another shareable
    request, and only while everyone's memory still fits it."""
    busy = dict(taken)
    for gpu in inventory.gpus:
        sharers = shared.get(gpu.index, ())
        if not sharers or gpu.index in busy:
            continue
        used = sum(memory for _, memory in sharers)
        if not request.shareable or used + (request.min_memory or 0) > gpu.memory_total:
            names = ", ".join(name for name, _ in sharers)
            busy[gpu.index] = f"{names} (sharing it, {format_bytes(used)} of {format_bytes(gpu.memory_total)} in use)"
    return busy


def granted_share(request: GpuRequest, inventory: GpuInventory, gpus: tuple[int, ...]) -> float | None:
    """The fraction of its GPUs a shareable workload was granted (its minMemory of the smallest), rounded down to
    a hundredth; None when it holds them alone. An engine that sizes itself by a fraction (vLLM takes 90 % by
    default) must stay inside it, or the sharer that starts second fails."""
    totals = [gpu.memory_total for gpu in inventory.gpus if gpu.index in gpus]
    if not request.shareable or request.min_memory is None or not totals:
        return None
    return max(0.01, int(request.min_memory * 100 / min(totals)) / 100)
