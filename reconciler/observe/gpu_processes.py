"""Which processes hold memory on which GPU, from NVML's per-process lists.

With RECONCILER_FAKE_GPUS a stand-in answers through the same calls (nvmlDeviceGetComputeRunningProcesses and
the rest), from each fake GPU's optional `processes: [{pid, usedMemory}]`; a fake GPU without that key answers
NotSupported, as NVML does where it may not list processes, so its use is unknown rather than none.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import psutil

from reconciler.observe.gpus import FAKE_GPUS_VARIABLE


@dataclass(frozen=True)
class GpuProcesses:
    """GPU UUID -> (pid, bytes it holds there; None where NVML does not say) for every process listed."""

    by_gpu: dict[str, tuple[tuple[int, int | None], ...]]
    reason: str | None = None  # why the lists are unknown (None: they are known, empty or not)

    def held_by(self, pids: set[int]) -> dict[str, int] | None:
        """The memory `pids` hold on each GPU they are listed on; None when the lists are unknown."""
        if self.reason is not None:
            return None
        held = {}
        for uuid, processes in self.by_gpu.items():
            mine = [memory for pid, memory in processes if pid in pids]
            if mine:
                held[uuid] = sum(memory or 0 for memory in mine)
        return held


class StandInNvmlError(Exception):
    """NVMLError of the stand-in."""


class StandInNvml:
    """The NVML calls `read_gpu_processes` makes, answered from the fake inventory's description."""

    NVMLError = StandInNvmlError

    def __init__(self, described: list[dict[str, Any]]) -> None:
        self._gpus = described

    def nvmlInit(self) -> None:  # noqa: N802 - NVML's names
        pass

    def nvmlShutdown(self) -> None:  # noqa: N802
        pass

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return len(self._gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> dict[str, Any]:  # noqa: N802
        return self._gpus[index]

    def nvmlDeviceGetUUID(self, handle: dict[str, Any]) -> str:  # noqa: N802
        return str(handle.get("uuid", f"GPU-fake-{handle['index']}"))

    def nvmlDeviceGetComputeRunningProcesses(self, handle: dict[str, Any]) -> list[SimpleNamespace]:  # noqa: N802
        if "processes" not in handle:
            raise StandInNvmlError("Not Supported")
        return [SimpleNamespace(pid=int(p["pid"]), usedGpuMemory=p.get("usedMemory")) for p in handle["processes"]]

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: dict[str, Any]) -> list[SimpleNamespace]:  # noqa: N802
        return []


def read_gpu_processes() -> GpuProcesses:
    fake = os.environ.get(FAKE_GPUS_VARIABLE)
    if fake:
        try:
            nvml: Any = StandInNvml(json.loads(open(fake).read()))
        except (OSError, ValueError) as error:
            return GpuProcesses({}, f"{FAKE_GPUS_VARIABLE}={fake}: unreadable: {error}")
    else:
        try:
            import pynvml as nvml
        except ImportError as error:  # pragma: no cover - nvidia-ml-py is a dependency
            return GpuProcesses({}, f"nvidia-ml-py is not installed: {error}")
    return _listed(nvml)


def _listed(nvml: Any) -> GpuProcesses:
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as error:
        return GpuProcesses({}, f"NVML unavailable: {error}")
    try:
        by_gpu = {}
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            uuid = nvml.nvmlDeviceGetUUID(handle)
            listed = [*nvml.nvmlDeviceGetComputeRunningProcesses(handle), *nvml.nvmlDeviceGetGraphicsRunningProcesses(handle)]
            by_gpu[uuid.decode() if isinstance(uuid, bytes) else uuid] = tuple(
                (int(process.pid), _bytes(process.usedGpuMemory)) for process in listed)
        return GpuProcesses(by_gpu)
    except (nvml.NVMLError, KeyError, TypeError, ValueError, IndexError) as error:
        return GpuProcesses({}, f"NVML cannot list the processes on its GPUs: {error}")
    finally:
        nvml.nvmlShutdown()


def _bytes(used: object) -> int | None:
    """NVML reports a value it may not read (a process in another container) as None or as its 'not available'."""
    return used if isinstance(used, int) and 0 <= used < 2**63 else None


def process_tree(pid: int) -> set[int]:
    """A process and its descendants: an engine's workers hold GPU memory too (vLLM's, llama.cpp's RPC)."""
    try:
        return {pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))}
    except psutil.Error:
        return {pid}
