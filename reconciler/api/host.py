"""What this host can run models with: CPU, memory, disk, OS, container engine and GPUs (pure data)."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from pydantic import Field

from reconciler.api.meta import API_VERSION, empty_list
from reconciler.api.status import Report

# The part of a profile that changes only when the host's capability does: no free or available amounts,
# no engine address or failure wording, so the digest in each decision's evidence is comparable over time.
_CAPABILITY = {
    "cpu": True,
    "memory": {"total"},
    "os": True,
    "container_engine": {"reachable", "version"},
    "gpus": {
        "devices": {"__all__": {"name", "uuid", "memory_total", "compute_capability"}},
        "driver_version": True, "cuda_version": True, "source": True, "reason": True,
    },
    "engine_builds": {"__all__": {"engine", "digest", "gpu_offload", "backends"}},
    "engine_builds_unasked": True,
}


class CpuProfile(Report):
    model: str | None = None
    logical_cores: int | None = None
    physical_cores: int | None = None
    architecture: str
    flags: list[str] | None = Field(
        None, description="The instruction-set extensions inference engines use, sorted; None when unknown (no /proc/cpuinfo).")


class MemoryProfile(Report):
    total: int = Field(description="bytes")
    available: int = Field(description="bytes")


class DiskProfile(Report):
    path: str = Field(description="The model cache directory, or its nearest existing parent while it does not exist.")
    free: int | None = Field(None, description="bytes")
    total: int | None = Field(None, description="bytes")
    reason: str | None = None  # why it could not be measured


class OsProfile(Report):
    system: str
    kernel_release: str
    distribution: str | None = Field(None, description="PRETTY_NAME from os-release; None when there is none.")


class ContainerEngineProfile(Report):
    reachable: bool
    version: str | None = None
    address: str | None = Field(None, description="The DOCKER_HOST or socket tried; None when no engine was asked.")
    reason: str | None = None  # why it is not reachable, in the engine client's words


class GpuProfile(Report):
    index: int
    name: str
    uuid: str
    memory_total: int = Field(description="bytes")
    memory_free: int = Field(description="bytes")
    compute_capability: str | None = Field(None, description='CUDA compute capability, e.g. "9.0".')


class GpusProfile(Report):
    devices: list[GpuProfile] = Field(default_factory=empty_list)
    driver_version: str | None = None
    cuda_version: str | None = None
    source: str = Field(description='"nvml", or "fake" for an inventory read from RECONCILER_FAKE_GPUS.')
    reason: str | None = None  # why there are none, when there are none

    @property
    def memory_total(self) -> int:
        return sum(gpu.memory_total for gpu in self.devices)

    @property
    def memory_free(self) -> int:
        return sum(gpu.memory_free for gpu in self.devices)


class EngineBuildProfile(Report):
    """A llama.cpp build on this host, as it answered when asked what it can do."""

    engine: str = Field(description="llama-server (on PATH) or llama-cpp-python (in the reconciler's Python).")
    executable: str
    digest: str = Field(description="sha256 over the executable and the ggml/llama libraries it loads.")
    gpu_offload: bool | None = Field(description="Whether it can put layers on a GPU here; None when it could not be asked.")
    backends: list[str] = Field(default_factory=empty_list)
    devices: list[str] = Field(default_factory=empty_list)
    problem: str | None = None  # why it could not be asked


class HostProfile(Report):
    cpu: CpuProfile
    memory: MemoryProfile
    disk: DiskProfile
    os: OsProfile
    container_engine: ContainerEngineProfile
    gpus: GpusProfile
    engine_builds: list[EngineBuildProfile] = Field(default_factory=empty_list)
    engine_builds_unasked: str | None = Field(
        None, description="Why the llama.cpp builds were not asked (none is until a llama.cpp workload is desired); "
                          "None when they were.")

    def capability_digest(self) -> str:
        """Changes when the host gains or loses capability (a GPU, a driver, memory), not when usage moves."""
        stable = self.model_dump(mode="json", include=_CAPABILITY)
        canonical = json.dumps(stable, sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def host_profile_document(profile: HostProfile, host_name: str, observed_at: datetime) -> dict[str, Any]:
    """The published HostProfile: Kubernetes-shaped, with the digest that decisions cite."""
    return {
        "apiVersion": API_VERSION, "kind": "HostProfile", "metadata": {"name": host_name},
        "status": {"observedAt": observed_at.isoformat(timespec="seconds"), "capabilityDigest": profile.capability_digest(),
                   **profile.model_dump(mode="json", by_alias=True)},
    }


def host_summary(profile: HostProfile) -> str:
    """One line of capability only (what the digest covers), for decision records that must not churn."""
    cpu, gpus = profile.cpu, profile.gpus
    flags = [flag for flag in cpu.flags or () if flag in ("avx2", "avx512f", "avx_vnni", "amx_tile", "asimd", "sve")]
    parts = [cpu.architecture, f"{cpu.logical_cores or '?'} cores" + (f", {' '.join(flags)}" if flags else ""),
             f"{profile.memory.total / 1024 ** 3:.1f} GiB RAM"]
    if gpus.devices:
        parts.append(", ".join(f"GPU {gpu.index} {gpu.name} {gpu.memory_total / 1024 ** 3:.0f} GiB" for gpu in gpus.devices))
    else:
        parts.append(f"no NVIDIA GPU ({gpus.reason})")
    return "; ".join(parts)
