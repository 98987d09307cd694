"""The host capability profile for people, in the manner of `kubectl describe`."""

from __future__ import annotations

from reconciler.api.host import (ContainerEngineProfile, CpuProfile, DiskProfile, EngineBuildProfile, GpusProfile, HostProfile,
                                 MemoryProfile, OsProfile)
from reconciler.base.sizes import gib

UNKNOWN = "unknown"

Rows = list[tuple[str, str]]


def host_table(profile: HostProfile) -> str:
    sections = {
        "CPU": _cpu(profile.cpu), "Memory": _memory(profile.memory), "Disk": _disk(profile.disk), "OS": _os(profile.os),
        "Container engine": _engine(profile.container_engine), "GPUs": _gpus(profile.gpus),
        "Engine builds": [("llama.cpp", profile.engine_builds_unasked)] if profile.engine_builds_unasked
                         else _builds(profile.engine_builds),
    }
    # One width for every section, so all values start in the same column.
    width = max(len(key) for rows in sections.values() for key, _ in rows) + len(":")
    lines = []
    for title, rows in sections.items():
        lines.append(f"{title}:")
        lines += [f"  {key + ':':<{width}}  {value}" for key, value in rows]
    lines.append(f"Capability digest: {profile.capability_digest()}")
    return "\n".join(lines)


def _gib(amount: int | None) -> str:
    return UNKNOWN if amount is None else gib(amount)


def _cpu(cpu: CpuProfile) -> Rows:
    return [
        ("Model", cpu.model or UNKNOWN),
        ("Architecture", cpu.architecture),
        ("Cores", f"{_or_unknown(cpu.logical_cores)} logical, {_or_unknown(cpu.physical_cores)} physical"),
        ("Flags", UNKNOWN if cpu.flags is None else " ".join(cpu.flags) or "none of interest"),
    ]


def _memory(memory: MemoryProfile) -> Rows:
    return [("Total", _gib(memory.total)), ("Available", _gib(memory.available))]


def _disk(disk: DiskProfile) -> Rows:
    rows = [("Path", disk.path), ("Free", _gib(disk.free)), ("Total", _gib(disk.total))]
    return rows + ([("Reason", disk.reason)] if disk.reason else [])


def _os(host_os: OsProfile) -> Rows:
    return [("System", f"{host_os.system} {host_os.kernel_release}"), ("Distribution", host_os.distribution or UNKNOWN)]


def _engine(engine: ContainerEngineProfile) -> Rows:
    rows = [("Address", engine.address or "-"), ("Reachable", "yes" if engine.reachable else "no")]
    if engine.reachable:
        return rows + [("Version", engine.version or UNKNOWN)]
    return rows + [("Reason", engine.reason or UNKNOWN)]


def _gpus(gpus: GpusProfile) -> Rows:
    rows = [("Source", gpus.source)]
    if not gpus.devices:
        return rows + [("Reason", gpus.reason or UNKNOWN)]
    rows += [("Driver", f"{gpus.driver_version or UNKNOWN} (CUDA {gpus.cuda_version or UNKNOWN})")]
    rows += [(f"GPU {gpu.index}", f"{gpu.name}, {_gib(gpu.memory_total)} ({_gib(gpu.memory_free)} free), "
                                  f"compute {gpu.compute_capability or UNKNOWN}, {gpu.uuid}") for gpu in gpus.devices]
    return rows + [("Total", f"{_gib(gpus.memory_total)} ({_gib(gpus.memory_free)} free)")]


def _builds(builds: list[EngineBuildProfile]) -> Rows:
    if not builds:
        return [("llama.cpp", "none found (no llama-server on PATH, no llama-cpp-python)")]
    return [(build.engine, f"{_offload(build)}; {build.executable}, sha256:{build.digest[:12]}") for build in builds]


def _offload(build: EngineBuildProfile) -> str:
    if build.gpu_offload is None:
        return f"GPU offload unknown: {build.problem}"
    if build.gpu_offload:
        return f"GPU offload ({', '.join(device for device in build.devices if not device.startswith('CPU'))})"
    return f"CPU only (backends: {', '.join(build.backends) or 'none'})"


def _or_unknown(value: int | None) -> str:
    return UNKNOWN if value is None else str(value)
