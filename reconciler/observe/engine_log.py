"""Where an engine says it put the model, read from the start of its run's log.

llama.cpp prints, while loading: `load_tensors: offloaded N/M layers to GPU` (llama-server; the request clamped to
the model, not proof of an allocation), one `<device> model buffer size = X MiB` per device that holds weights
(`CUDA0`, `CPU_Mapped`, ...) and, verbosely (llama-cpp-python's server), `layer N assigned to device D`. vLLM
prints the platform it detected. These are the engine's claims; NVML's process list is what is checked against.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.observe.host import open_regular

HEAD_BYTES = 4 * 1024 * 1024  # loading is logged first; a long run's requests come after and are not read

_BUFFER = re.compile(r"\b(?P<device>[A-Za-z][\w]*) model buffer size =\s*(?P<mib>[\d.]+) MiB")
_OFFLOADED = re.compile(r"offloaded (?P<done>\d+)/(?P<total>\d+) layers to GPU")
_ASSIGNED = re.compile(r"layer\s+(?P<layer>\d+) assigned to device (?P<device>[\w]+)")
_PLATFORM = re.compile(r"Automatically detected platform (?P<platform>\w+)\.|No platform detected")
# A device the weights are on the GPU with: CUDA0, ROCm1, Vulkan0, SYCL0. CPU, CPU_Mapped, CPU_REPACK and
# CUDA_Host (pinned host memory) are the host's RAM.
_GPU_DEVICE = re.compile(r"^[A-Za-z]+\d+$")


def is_gpu_device(name: str) -> bool:
    return bool(_GPU_DEVICE.match(name)) and not name.startswith("CPU")


@dataclass(frozen=True)
class EngineLoad:
    buffers: dict[str, int] = field(default_factory=dict)  # device -> bytes of model weights it holds
    offloaded: tuple[int, int] | None = None  # layers offloaded, of the model's, as llama-server reports them
    layers: dict[str, int] = field(default_factory=dict)  # device -> layers assigned to it
    platform: str | None = None  # vLLM's: "cuda", "cpu", or "unspecified" when it found none

    @property
    def loaded(self) -> bool:
        """Whether the engine has said where the model is (a start still loading has not)."""
        return bool(self.buffers) or self.platform is not None

    @property
    def gpu_devices(self) -> tuple[str, ...]:
        return tuple(sorted(device for device in {*self.buffers, *self.layers} if is_gpu_device(device)))

    @property
    def layers_on_gpu(self) -> tuple[int, int] | None:
        """Layers on a GPU of all the model's: the per-layer assignment where printed, else llama-server's count."""
        if self.layers:
            return sum(n for device, n in self.layers.items() if is_gpu_device(device)), sum(self.layers.values())
        return self.offloaded


def parse_engine_log(text: str) -> EngineLoad:
    buffers: dict[str, int] = {}
    assigned: dict[int, str] = {}
    offloaded = platform = None
    for line in text.splitlines():
        if found := _BUFFER.search(line):
            buffers[found["device"]] = buffers.get(found["device"], 0) + int(float(found["mib"]) * 2**20)
        elif found := _OFFLOADED.search(line):
            offloaded = int(found["done"]), int(found["total"])
        elif found := _ASSIGNED.search(line):
            assigned[int(found["layer"])] = found["device"]
        elif found := _PLATFORM.search(line):
            platform = found["platform"] or "unspecified"
    layers: dict[str, int] = {}
    for device in assigned.values():
        layers[device] = layers.get(device, 0) + 1
    return EngineLoad(buffers, offloaded, layers, platform)


def read_engine_load(log_file: str | Path) -> EngineLoad:
    """The load as the run's log tells it; nothing when the log cannot be read (it is the reconciler's own)."""
    try:
        with open_regular(log_file) as handle:
            head = handle.read(HEAD_BYTES)
    except OSError:
        return EngineLoad()
    return parse_engine_log(head.decode("utf-8", errors="replace"))
