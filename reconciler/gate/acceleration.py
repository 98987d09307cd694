"""A workload that asks for a GPU is never started on the CPU in its place. Pure.

llama.cpp falls back to the CPU without a word: a build without a GPU backend ignores --n-gpu-layers, and one
whose CUDA_VISIBLE_DEVICES is empty loads every layer on the CPU. Either is refused before the start, saying
which build, what it lacks and how to get one that can.
"""

from __future__ import annotations

from collections.abc import Sequence

from reconciler.api.engine_args import LLAMA_CPP_PYTHON, LLAMA_SERVER
from reconciler.api.workload import Engine, WorkloadSpec
from reconciler.diff.engines import Blocked
from reconciler.observe.engine_builds import EngineBuild, LLAMA_SERVER as SERVER_BUILD

ACCELERATION_UNAVAILABLE = "AccelerationUnavailable"
CUDA_RECIPES = {
    "llama-cpp-python": 'CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir '
                        '--no-binary llama-cpp-python llama-cpp-python (with nvcc on PATH)',
    SERVER_BUILD: "cmake -B build -DGGML_CUDA=ON && cmake --build build --config Release in a llama.cpp checkout "
                  "(or a CUDA release archive), then put its llama-server on PATH or in llamaCpp.executable",
}
_GPU_LAYER_OPTIONS = ((LLAMA_SERVER, "--n-gpu-layers"), (LLAMA_SERVER, "--gpu-layers"), (LLAMA_CPP_PYTHON, "--n_gpu_layers"))


def gpu_layers_asked(spec: WorkloadSpec) -> str | None:
    """The GPU layers a llama.cpp workload asks for, as the server reads them (args come after the rendered
    flags, and the last occurrence wins); None when it asks for none."""
    if spec.engine is not Engine.llama_cpp:
        return None
    options = spec.llama_cpp
    asked = str(options.gpu_layers) if options is not None and options.gpu_layers is not None else None
    args = list(spec.args)
    for index, argument in enumerate(args):
        if _is_gpu_layers(argument):
            inline = argument.partition("=")[2] if "=" in argument else None
            asked = inline if inline is not None else (args[index + 1] if index + 1 < len(args) else asked)
    return None if asked is None or asked.strip() == "0" else asked


def acceleration_asked(spec: WorkloadSpec, gpus: Sequence[int]) -> str | None:
    """Why this workload asks for acceleration, in a clause; None when it does not."""
    if spec.engine not in (Engine.llama_cpp, Engine.vllm):
        return None  # a process or container is its own: the reconciler does not render its command line
    why = [f"GPU {', '.join(map(str, gpus))} assigned"] if gpus else []
    layers = gpu_layers_asked(spec)
    if layers is not None:
        why.append(f"{layers} GPU layers asked")
    return " and ".join(why) or None


def acceleration_refusal(spec: WorkloadSpec, gpus: Sequence[int], build: EngineBuild | None) -> Blocked | None:
    """Why a start would silently run on the CPU, if it would. `build`: what the engine build that would run was
    observed to do; None when it was not asked (a server the spec names: confirmed after its start)."""
    asked = acceleration_asked(spec, gpus)
    if asked is None or spec.engine is not Engine.llama_cpp:
        return None  # vLLM needs a GPU to validate at all, and NoCompatibleGPU covers a host without one
    if build is not None and not build.gpu_offload:
        return Blocked(ACCELERATION_UNAVAILABLE, f"{asked}, but {build.describe()} cannot offload to a GPU: {build.lacks()}; "
                                                 f"it would run on the CPU instead. Get a CUDA build: {CUDA_RECIPES[build.kind]}; "
                                                 "or ask for no GPU (no resources.gpus, gpuLayers: 0)")
    if not gpus:
        return Blocked(ACCELERATION_UNAVAILABLE, f"{asked}, but no GPU is assigned: its CUDA_VISIBLE_DEVICES would be "
                                                 "empty and every layer would load on the CPU. Ask for one under "
                                                 "spec.resources.gpus, or set gpuLayers: 0")
    return None


def _is_gpu_layers(argument: str) -> bool:
    return argument == "-ngl" or any(rules.reads_as(argument, option) for rules, option in _GPU_LAYER_OPTIONS)
