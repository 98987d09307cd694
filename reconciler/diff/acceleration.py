"""Whether a running engine really uses the GPUs it was given, from what it logged and what NVML lists. Pure.

NVML is the judge where it can list processes (the workload's process tree must hold memory on exactly the GPUs
assigned); the engine's log says how many layers went where, and stands in for NVML where NVML cannot say.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from reconciler.base.sizes import gib
from reconciler.observe.engine_log import EngineLoad

ON_ASSIGNED_GPUS, NOT_ON_GPU, GPU_MISMATCH, FEWER_LAYERS, UNCONFIRMED = (
    "OnAssignedGPUs", "NotOnGPU", "GPUMismatch", "FewerLayersOffloaded", "AccelerationUnconfirmed")


@dataclass(frozen=True)
class AssignedGpu:
    index: int
    uuid: str


@dataclass(frozen=True)
class Acceleration:
    """The `Accelerated` condition (ok None: Unknown) and the status's `acceleration` block."""

    ok: bool | None
    reason: str
    message: str
    report: dict[str, Any]

    @property
    def off_the_gpu(self) -> bool:
        """Asked for a GPU and uses none: not Ready, whatever its health check says."""
        return self.reason == NOT_ON_GPU


def assess_acceleration(
    asked: str, assigned: Sequence[AssignedGpu], load: EngineLoad, held: dict[str, int] | None,
    layers_asked: str | None, estimate: int | None,
) -> Acceleration:
    """`asked`: why the workload asks for acceleration; `held`: GPU UUID -> bytes the process tree holds there (None:
    NVML cannot list processes); `layers_asked`: the GPU layers the server was told; `estimate`: the footprint
    estimated for the model, in bytes."""
    by_device = {f"CUDA{n}": gpu.uuid for n, gpu in enumerate(assigned)}  # CUDA_VISIBLE_DEVICES renumbers from 0
    claimed = {by_device.get(device, device) for device in load.gpu_devices}
    if held is None and load.platform == "cuda":
        claimed = {gpu.uuid for gpu in assigned}  # vLLM logs no buffers: which GPUs, only NVML could say
    used = set(held) if held is not None else claimed
    layers = load.layers_on_gpu
    report: dict[str, Any] = {
        "assigned": [gpu.uuid for gpu in assigned], "devices": sorted(used),
        "layersOffloaded": layers[0] if layers else None, "layersTotal": layers[1] if layers else None,
        "gpuMemoryUsed": sum(held.values()) if held is not None else None,
        "modelBuffers": dict(sorted(load.buffers.items())) or None, "layersByDevice": dict(sorted(load.layers.items())) or None,
        "platform": load.platform, "estimate": estimate,
        "observedBy": "nvml+log" if held is not None else "log",
    }
    report = {key: value for key, value in report.items() if value is not None}
    if estimate and held:
        report["estimateError"] = f"{(sum(held.values()) - estimate) * 100 / estimate:+.0f}%"
    if not load.loaded and not held:
        return Acceleration(None, UNCONFIRMED, f"{asked}: the engine has not said where it put the model yet", report)
    if not used or load.platform not in (None, "cuda"):
        return Acceleration(False, NOT_ON_GPU, f"{asked}, but it runs on the CPU: {_nowhere(load, held)}", report)
    expected = {gpu.uuid for gpu in assigned}
    if used != expected:
        extra, unused = sorted(used - expected), sorted(expected - used)
        said = ([f"holds memory on GPU {', '.join(extra)}, which it was not assigned"] if extra else []) + \
               ([f"uses none of assigned GPU {', '.join(unused)}"] if unused else [])
        return Acceleration(False, GPU_MISMATCH, f"{asked}, but it {' and '.join(said)}", report)
    short = _fewer_layers(layers, layers_asked)
    if short is not None:
        return Acceleration(False, FEWER_LAYERS, f"{asked}, but {short}", report)
    where = ", ".join(f"GPU {gpu.index} ({gpu.uuid})" for gpu in assigned)
    on = f"{layers[0]}/{layers[1]} layers on {where}" if layers else f"on {where}"
    memory = f", {gib(sum(held.values()))} held by its processes" if held else ""
    versus = f" (estimated {gib(estimate)}, {report['estimateError']})" if "estimateError" in report and estimate else ""
    return Acceleration(True, ON_ASSIGNED_GPUS, f"{on}{memory}{versus}", report)


def _nowhere(load: EngineLoad, held: dict[str, int] | None) -> str:
    if load.platform not in (None, "cuda"):
        return f"vLLM detected platform {load.platform}"
    buffers = ", ".join(f"{device} {gib(size)}" for device, size in sorted(load.buffers.items()))
    logged = f"the engine logged model buffers on {buffers}" if buffers else "the engine logged no model buffer"
    return f"{logged}; NVML lists no GPU memory held by its processes" if held is not None else logged


def _fewer_layers(layers: tuple[int, int] | None, asked: str | None) -> str | None:
    if layers is None or asked is None:
        return None
    done, total = layers
    wanted = total if asked.strip() in ("all", "-1") else min(int(asked), total) if asked.strip().isdigit() else None
    if wanted is None or done >= wanted:
        return None  # "auto" leaves the count to llama.cpp
    return f"only {done} of the {wanted} layers asked are on the GPU ({total - done} on the CPU)"
