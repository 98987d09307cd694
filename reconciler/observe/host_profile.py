"""The host's capability profile, observed; each piece that cannot be read is None or False with a reason."""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path

import psutil

from reconciler.base.sdk_errors import docker_errors
from reconciler.api.host import (ContainerEngineProfile, CpuProfile, DiskProfile, EngineBuildProfile, GpuProfile, GpusProfile,
                                 HostProfile, MemoryProfile, OsProfile)
from reconciler.observe.docker_engine import DockerEngine, EngineUnavailable
from reconciler.observe.engine_builds import LLAMA_CPP_PYTHON, LLAMA_SERVER, EngineBuilds
from reconciler.observe.gpus import GpuInventory, read_inventory
from reconciler.observe.host import engine_facts

CPUINFO = Path("/proc/cpuinfo")
_INFERENCE_FLAGS = frozenset({"avx", "avx2", "avx_vnni", "fma", "f16c", "neon", "asimd", "sve"})
_INFERENCE_PREFIXES = ("avx512", "amx")


def observe_host_profile(cache_dir: Path, engine: DockerEngine | None, builds: EngineBuilds | None = None,
                         inventory: GpuInventory | None = None, builds_unasked: str = "not asked") -> HostProfile:
    """`builds`: where the llama.cpp builds' answers are kept; None: they are not asked, and `builds_unasked` says
    why in the profile. `inventory`: the GPUs as just read by the caller (None: read here)."""
    inventory = read_inventory() if inventory is None else inventory
    return HostProfile(cpu=observe_cpu(), memory=observe_memory(), disk=observe_disk(cache_dir), os=observe_os(),
                       container_engine=observe_engine(engine), gpus=observe_gpus(inventory),
                       engine_builds=observe_engine_builds(builds, inventory) if builds is not None else [],
                       engine_builds_unasked=None if builds is not None else builds_unasked)


def parse_cpuinfo(text: str) -> tuple[str | None, list[str]]:
    """The CPU model and its inference-relevant flags (x86 `flags`, arm `Features`), from /proc/cpuinfo's text."""
    model = None
    per_processor: list[set[str]] = []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        # arm kernels name no `model name`; some SoCs (Raspberry Pi) give the board as `Model`
        if key in ("model name", "Model") and model is None:
            model = value.strip() or None
        elif key in ("flags", "Features"):
            per_processor.append(set(value.split()))
    # Only what every processor has is safe to use: a thread may run on any of them.
    common = set.intersection(*per_processor) if per_processor else set()
    return model, sorted(flag for flag in common if flag in _INFERENCE_FLAGS or flag.startswith(_INFERENCE_PREFIXES))


def observe_cpu(cpuinfo: Path = CPUINFO) -> CpuProfile:
    try:
        model, flags = parse_cpuinfo(cpuinfo.read_text())
    except OSError:  # not Linux, or /proc not mounted
        model, flags = platform.processor() or None, None
    return CpuProfile(model=model, logical_cores=psutil.cpu_count(), physical_cores=psutil.cpu_count(logical=False),
                      architecture=platform.machine(), flags=flags)


def observe_memory() -> MemoryProfile:
    memory = psutil.virtual_memory()
    return MemoryProfile(total=memory.total, available=memory.available)


def observe_disk(cache_dir: Path) -> DiskProfile:
    measured = _nearest_existing(cache_dir.expanduser().absolute())
    try:
        usage = shutil.disk_usage(measured)
    except OSError as error:
        return DiskProfile(path=str(measured), reason=f"cannot measure {measured}: {error.strerror or error}")
    return DiskProfile(path=str(measured), free=usage.free, total=usage.total)


def observe_os() -> OsProfile:
    try:
        distribution = platform.freedesktop_os_release().get("PRETTY_NAME")
    except OSError:  # neither /etc/os-release nor /usr/lib/os-release
        distribution = None
    return OsProfile(system=platform.system(), kernel_release=platform.release(), distribution=distribution)


def observe_engine(engine: DockerEngine | None) -> ContainerEngineProfile:
    if engine is None:
        return ContainerEngineProfile(reachable=False, reason="no container engine was asked")
    try:
        version = engine.version()
    except EngineUnavailable as error:
        return ContainerEngineProfile(reachable=False, address=engine.address, reason=error.message)
    except docker_errors.APIError as error:
        reason = f"Docker engine at {engine.address} answered with an error: {error.explanation or error}"
        return ContainerEngineProfile(reachable=False, address=engine.address, reason=reason)
    return ContainerEngineProfile(reachable=True, version=version, address=engine.address)


def observe_gpus(inventory: GpuInventory) -> GpusProfile:
    devices = [GpuProfile(index=gpu.index, name=gpu.name, uuid=gpu.uuid, memory_total=gpu.memory_total,
                          memory_free=gpu.memory_free, compute_capability=gpu.compute_capability) for gpu in inventory.gpus]
    return GpusProfile(devices=devices, driver_version=inventory.driver, cuda_version=inventory.cuda,
                       source=inventory.source, reason=inventory.reason)


def observe_engine_builds(builds: EngineBuilds, inventory: GpuInventory) -> list[EngineBuildProfile]:
    """What the host's own llama.cpp servers can do: the builds a llama.cpp workload runs unless it names another."""
    facts = engine_facts()
    found = [(kind, path) for kind, path in ((LLAMA_SERVER, facts.llama_server), (LLAMA_CPP_PYTHON, facts.llama_cpp_python))
             if path is not None]
    return [EngineBuildProfile(engine=build.kind, executable=build.executable, digest=build.digest,
                               gpu_offload=build.gpu_offload, backends=list(build.backends), devices=list(build.devices),
                               problem=build.problem)
            for build in (builds.of(kind, path, inventory) for kind, path in found)]


def _nearest_existing(path: Path) -> Path:
    # os.path.exists, not Path.exists: a parent we may not search raises PermissionError from the latter
    while not os.path.exists(path) and path != path.parent:
        path = path.parent
    return path
