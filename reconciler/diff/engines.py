"""How each native engine is started and checked: command lines, default health checks, endpoints. Pure."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from reconciler.api.chat_formats import server_chat_format
from reconciler.api.checks import HealthCheck, HttpCheck, TcpCheck
from reconciler.api.engine_options import LlamaCppOptions, VllmOptions
from reconciler.api.workload import Engine, WorkloadSpec
from reconciler.api.launch import LaunchSpec
from reconciler.diff.acceleration import Acceleration
from reconciler.observe.host import EngineFacts, ModelPresence

LLAMA_CPP_PYTHON_MODULE = "llama_cpp.server"
# `python -m` puts the working directory first on sys.path, so a llama_cpp/ planted in spec.workingDir would run
# instead of the trusted engine: -P (3.11+) keeps it off, -s keeps HOME's user site-packages (the spec may set HOME)
# off. Not -I: it would also drop the PYTHON* variables, which the gate already judges (native.loaderEnvironment),
# silently ignoring what a Policy allowed.
SAFE_PYTHON = ("-P", "-s")
# vllm is a console script: its shebang picks the interpreter, so flags cannot be given; its workers are spawned
# with `python -c`, which puts the working directory first. These are the same two switches, inherited by them all.
SAFE_PYTHON_ENV = (("PYTHONSAFEPATH", "1"), ("PYTHONNOUSERSITE", "1"))
# Run by path, so the gateway is the code of the reconciler that writes its routes, wherever that is installed.
GATEWAY_PROGRAM = str(Path(__file__).resolve().parent.parent / "gateway" / "__main__.py")


@dataclass(frozen=True)
class Blocked:
    """Why a workload cannot start here; the reason is a condition reason (CamelCase)."""

    reason: str
    message: str


@dataclass(frozen=True)
class EngineCommand:
    command: tuple[str, ...]
    args: tuple[str, ...]
    executable_from_spec: bool = False  # a spec-named server binary: engine trust does not cover it
    env: tuple[tuple[str, str], ...] = ()  # set by the engine, over the spec's


@dataclass(frozen=True)
class Rendered:
    """A workload as it would run here: its launch, or why it cannot start; its health check and endpoint."""

    launch: LaunchSpec | None = None
    blocked: Blocked | None = None
    check: HealthCheck | None = None
    endpoint: str | None = None
    model: ModelPresence | None = None  # the model file the launch serves: hashed again before a start
    acceleration: Acceleration | None = None  # where the running engine put the model, when it asked for a GPU
    readiness: HealthCheck | None = None  # spec.readiness: decides Ready, never a restart


# vLLM loads big models for many minutes (weights, then CUDA graphs) before /health answers.
VLLM_STARTUP_SECONDS = 1800.0


def engine_check(spec: WorkloadSpec, facts: EngineFacts) -> HealthCheck | None:
    """The spec's check, else the engine's own. llama-cpp-python's server has no /health, and every HTTP route of
    it (/v1/models included) waits for the lock generation holds: a probe there ended streamed replies and timed out
    during long ones (and got 401 with an API key). It loads the model before it opens its port, so an accepted
    TCP connection already means loaded, and competes with nothing."""
    if spec.health is not None or spec.engine is Engine.process:
        return spec.health
    if spec.engine is Engine.llama_cpp and _llama_server(spec, facts) is None:
        return HealthCheck(tcp=TcpCheck())
    if spec.engine is Engine.vllm:
        return HealthCheck(http=HttpCheck(path="/health"), startup_seconds=VLLM_STARTUP_SECONDS)
    return HealthCheck(http=HttpCheck(path="/health"))


def startup_budget(spec: WorkloadSpec) -> float:
    """How long a start may take to pass its first check, without the host's facts (for the gateway's wait): the
    spec's check, else the engine's default, whichever engine serves it."""
    if spec.health is not None:
        return spec.health.startup_seconds
    return VLLM_STARTUP_SECONDS if spec.engine is Engine.vllm else HealthCheck.model_fields["startup_seconds"].default


def engine_endpoint(spec: WorkloadSpec) -> str | None:
    """Where a client on this host reaches the server (a wildcard bind is reached on loopback)."""
    if spec.port is None:
        return None
    base = f"http://{reachable_host(spec.host)}:{spec.port}"
    return base if spec.engine is Engine.process else f"{base}/v1"


def reachable_host(host: str) -> str:
    """Where a client on this host reaches a server bound to `host` (a wildcard is reached on loopback), as a URL
    writes it."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"[{host}]" if ":" in host else host


def engine_command(
    spec: WorkloadSpec, model_path: str | None, facts: EngineFacts, gpu_share: float | None = None,
    routes_file: str | None = None, container_host: str | None = None,
) -> EngineCommand | Blocked:
    """`gpu_share`: the fraction of each assigned GPU this workload was granted, when it shares them; `routes_file`:
    where the reconciler publishes the gateway's routes, `container_host`: the host's address on the container bridge,
    where it also listens for the containers that use it (engine gateway only)."""
    if spec.engine is Engine.process:
        assert spec.command is not None
        return EngineCommand(tuple(spec.command), tuple(spec.args))
    assert spec.port is not None
    listen = ["--host", spec.host, "--port", str(spec.port)]
    if spec.engine is Engine.gateway:
        assert routes_file is not None
        bridge = ("--container-host", container_host) if container_host else ()
        return EngineCommand((sys.executable, *SAFE_PYTHON, GATEWAY_PROGRAM),
                             (*listen, *bridge, "--routes", routes_file, *spec.args))
    assert model_path is not None and spec.model is not None
    if spec.engine is Engine.vllm:
        return _vllm(spec, model_path, facts, listen, gpu_share)
    return _llama_cpp(spec, model_path, facts, ["--model", model_path, *listen])


def _llama_server(spec: WorkloadSpec, facts: EngineFacts) -> str | None:
    return (spec.llama_cpp.executable if spec.llama_cpp else None) or facts.llama_server


def _llama_cpp(spec: WorkloadSpec, model_path: str, facts: EngineFacts, base: list[str]) -> EngineCommand | Blocked:
    options = spec.llama_cpp or LlamaCppOptions()
    server = _llama_server(spec, facts)
    chat_format = None
    if options.chat_format is not None:
        chat_format, why = server_chat_format(options.chat_format, llama_server=server is not None)
        if chat_format is None:
            return Blocked("EngineOptionUnsupported", why)
    if server is not None:  # llama.cpp's own server; its web UI is on unless told otherwise
        flags = base + _flags(("--alias", spec.model), ("--ctx-size", options.context_size),
                              ("--n-gpu-layers", options.gpu_layers), ("--threads", options.threads),
                              ("--threads-batch", options.threads), ("--parallel", options.parallel),
                              ("--chat-template", chat_format))
        flags += [] if options.web_ui else ["--no-webui"]
        return EngineCommand((server,), (*flags, *spec.args), bool(options.executable))
    if facts.llama_cpp_python is None:
        return Blocked("EngineNotInstalled", "llama.cpp: no llama-server on PATH and no llama-cpp-python "
                                             "(install the `llama` extra: pip install 'localaistack-reconciler[llama]')")
    if options.parallel:
        return Blocked("EngineOptionUnsupported", "llamaCpp.parallel needs llama-server; llama-cpp-python's server has no slots")
    flags = base + _flags(("--model_alias", spec.model), ("--n_ctx", options.context_size),
                          ("--n_gpu_layers", options.gpu_layers), ("--n_threads", options.threads),
                          ("--n_threads_batch", options.threads), ("--chat_format", chat_format))
    return EngineCommand((facts.llama_cpp_python, *SAFE_PYTHON, "-m", LLAMA_CPP_PYTHON_MODULE), (*flags, *spec.args))


def _vllm(
    spec: WorkloadSpec, model_path: str, facts: EngineFacts, listen: list[str], gpu_share: float | None,
) -> EngineCommand | Blocked:
    options = spec.vllm or VllmOptions()
    vllm = options.executable or facts.vllm
    if vllm is None:
        return Blocked("EngineNotInstalled", "vllm: not found on PATH (install the `vllm` extra on a host with an NVIDIA GPU)")
    utilization = options.gpu_memory_utilization
    if gpu_share is not None and utilization is not None and utilization > gpu_share:
        return Blocked("GPUShareExceeded", f"vllm.gpuMemoryUtilization {utilization} asks for more of the shared GPU than "
                                           f"the {gpu_share} that resources.gpus.minMemory was granted: lower it, or "
                                           "leave it out to use the grant")
    # vLLM serves the model under its path and rejects any other name unless told the name clients use
    flags = ["serve", model_path, *listen, "--served-model-name", spec.model]
    flags += _flags(("--gpu-memory-utilization", utilization if utilization is not None else gpu_share),
                    ("--max-model-len", options.max_model_len), ("--dtype", options.dtype),
                    ("--quantization", options.quantization), ("--tokenizer", options.tokenizer),
                    ("--tensor-parallel-size", options.tensor_parallel_size or _more_than_one(spec.resources.gpus.wanted)))
    return EngineCommand((vllm,), (*flags, *spec.args), bool(options.executable), SAFE_PYTHON_ENV)


def _more_than_one(gpus: int) -> int | None:
    """vLLM uses one GPU unless told: a workload given several spreads over them all."""
    return gpus if gpus > 1 else None


def _flags(*pairs: tuple[str, object]) -> list[str]:
    return [part for flag, value in pairs if value is not None for part in (flag, str(value))]
