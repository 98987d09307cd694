"""The NVIDIA GPUs of this host, through NVML, or the precise reason there are none.

RECONCILER_FAKE_GPUS names a JSON file describing GPUs that are not there, so the GPU paths
can be exercised on a host without one (tests, dry runs); its inventory says source="fake".
"""

from __future__ import annotations

import ctypes
import json
import os
from dataclasses import dataclass
from types import ModuleType

FAKE_GPUS_VARIABLE = "RECONCILER_FAKE_GPUS"
NVML_LIBRARY = "libnvidia-ml.so.1"  # what pynvml loads on Linux: the NVIDIA driver's


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    uuid: str
    memory_total: int
    memory_free: int
    compute_capability: str | None = None  # "9.0"; None where NVML or the fake inventory does not say


@dataclass(frozen=True)
class GpuInventory:
    gpus: tuple[Gpu, ...] = ()
    reason: str | None = None  # why there are none, when there are none
    driver: str | None = None
    cuda: str | None = None
    source: str = "nvml"


def read_inventory() -> GpuInventory:
    fake = os.environ.get(FAKE_GPUS_VARIABLE)
    if fake:
        return _fake(fake)
    try:
        ctypes.CDLL(NVML_LIBRARY)
    except OSError:  # no driver: told without pynvml's import, 8-16 ms of every command on such a host, in its words
        return _no_nvml("NVML Shared Library Not Found")
    try:
        import pynvml
    except ImportError as error:  # pragma: no cover - nvidia-ml-py is a dependency
        return GpuInventory(reason=f"nvidia-ml-py is not installed: {error}")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as error:
        return _no_nvml(str(error))
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(Gpu(index, _text(pynvml.nvmlDeviceGetName(handle)), _text(pynvml.nvmlDeviceGetUUID(handle)),
                            int(memory.total), int(memory.free), _compute_capability(pynvml, handle)))
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        cuda_version = pynvml.nvmlSystemGetCudaDriverVersion()
        cuda = f"{cuda_version // 1000}.{cuda_version % 1000 // 10}"
        return GpuInventory(tuple(gpus), None if gpus else "NVML reports no GPUs", driver, cuda)
    except pynvml.NVMLError as error:
        return GpuInventory(reason=f"NVML error: {error}")
    finally:
        pynvml.nvmlShutdown()


def _no_nvml(detail: str) -> GpuInventory:
    return GpuInventory(reason=f"NVML unavailable: {detail} (no NVIDIA driver on this host?)")


def _fake(path: str) -> GpuInventory:
    try:
        described = json.loads(open(path).read())
        gpus = tuple(Gpu(int(g["index"]), str(g["name"]), str(g.get("uuid", f"GPU-fake-{g['index']}")),
                         int(g["memoryTotal"]), int(g.get("memoryFree", g["memoryTotal"])),
                         None if g.get("computeCapability") is None else str(g["computeCapability"])) for g in described)
    except (OSError, ValueError, KeyError, TypeError) as error:
        return GpuInventory(reason=f"{FAKE_GPUS_VARIABLE}={path}: unreadable: {error}", source="fake")
    return GpuInventory(gpus, None if gpus else "the fake inventory lists no GPUs", source="fake")


def _compute_capability(pynvml: ModuleType, handle: object) -> str | None:
    # Older drivers and some device kinds answer NotSupported: the GPU is still usable, its capability unknown.
    try:
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
    except pynvml.NVMLError:
        return None
    return f"{major}.{minor}"


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
