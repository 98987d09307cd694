"""How much host memory a workload commits, as the no-overcommit rule counts it. Pure."""

from __future__ import annotations

from reconciler.api.policy import ResourcePolicy
from reconciler.api.workload import Engine, Runtime, WorkloadSpec
from reconciler.base.sizes import gib


def memory_commitment(spec: WorkloadSpec, model_bytes: int | None) -> tuple[int, str]:
    """(bytes, how they were counted). A memory limit is a ceiling the kernel enforces, so it counts whole; without
    one, a llama.cpp server on the CPU holds at least its weights in RAM. Anything else commits nothing known."""
    if spec.resources.memory:
        return spec.resources.memory, f"memory limit {gib(spec.resources.memory)}"
    on_cpu = spec.runtime is Runtime.native and spec.engine is Engine.llama_cpp and not spec.resources.gpus.wanted
    if on_cpu and model_bytes:
        return model_bytes, f"model weights {gib(model_bytes)} (llama.cpp on the CPU, no memory limit)"
    return 0, "no memory limit or model footprint"


def budget(total: int, rules: ResourcePolicy) -> int:
    """The bytes of RAM workloads may commit: the host's, less the policy's reserve."""
    return int(total * (1 - rules.memory_reserve))
