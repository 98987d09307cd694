"""How each native engine is started and checked: command lines, default health checks, endpoints. Pure."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from reconciler.api.workload import Engine, HealthCheck, HttpCheck, TcpCheck, WorkloadSpec
from reconciler.api.launch import LaunchSpec
from reconciler.observe.host import EngineFacts, ModelPresence

LLAMA_CPP_PYTHON_MODULE = "llama_cpp.server"
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


@dataclass(frozen=True)
class Rendered:
    """A workload as it would run here: its launch, or why it cannot start; its health check and endpoint."""

    launch: LaunchSpec | None = None
    blocked: Blocked | None = None
    check: HealthCheck | None = None
    endpoint: str | None = None
    model: ModelPresence | None = None  # the model file the launch serves: hashed again before a start


def engine_check(spec: WorkloadSpec, facts: EngineFacts) -> HealthCheck | None:
    """The spec's check, else the engine's own. llama-cpp-python's server has no /health, and every route of its API
    takes the model's lock: a probe of one ends a running generation (--interrupt_requests, its default) or, with
    that off, waits behind it and times out. It listens only once its model is loaded, so its port is the check."""
    if spec.health is not None or spec.engine is Engine.process:
        return spec.health
    if spec.engine is Engine.llama_cpp and _llama_server(spec, facts) is None:
        return HealthCheck(tcp=TcpCheck())
    return _http("/health")


def engine_endpoint(spec: WorkloadSpec) -> str | None:
    """Where a client on this host reaches the server (a wildcard bind is reached on loopback)."""
    if spec.port is None:
        return None
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(spec.host, spec.host)
    base = f"http://{f'[{host}]' if ':' in host else host}:{spec.port}"
    return base if spec.engine is Engine.process else f"{base}/v1"


def engine_command(spec: WorkloadSpec, model_path: str | None, facts: EngineFacts,
                   routes_file: str | None = None) -> EngineCommand | Blocked:
    """`routes_file`: where the reconciler publishes the gateway's routes (engine gateway only)."""
    if spec.engine is Engine.process:
        assert spec.command is not None
        return EngineCommand(tuple(spec.command), tuple(spec.args))
    assert spec.port is not None
    listen = ["--host", spec.host, "--port", str(spec.port)]
    if spec.engine is Engine.gateway:
        assert routes_file is not None
        return EngineCommand((sys.executable, "-P", GATEWAY_PROGRAM), (*listen, "--routes", routes_file, *spec.args))
    assert model_path is not None
    if spec.engine is Engine.vllm:
        return _vllm(spec, model_path, facts, listen)
    return _llama_cpp(spec, model_path, facts, ["--model", model_path, *listen])


def _served_as(spec: WorkloadSpec, flag: str) -> list[str]:
    """The id clients see and send back is the Model's name: an engine's default is the file's path."""
    return [flag, str(spec.model)]


def _llama_server(spec: WorkloadSpec, facts: EngineFacts) -> str | None:
    return (spec.llama_cpp.executable if spec.llama_cpp else None) or facts.llama_server


def _llama_cpp(spec: WorkloadSpec, model_path: str, facts: EngineFacts, base: list[str]) -> EngineCommand | Blocked:
    options = spec.llama_cpp
    server = _llama_server(spec, facts)
    if server is not None:  # llama.cpp's own server
        base = base + _served_as(spec, "--alias")
        flags = base + (_flags(("--ctx-size", options.context_size), ("--n-gpu-layers", options.gpu_layers),
                                ("--threads", options.threads), ("--parallel", options.parallel),
                                ("--chat-template", options.chat_format)) if options else [])
        return EngineCommand((server,), (*flags, *spec.args), bool(options and options.executable))
    if facts.llama_cpp_python is None:
        return Blocked("EngineNotInstalled", "llama.cpp: no llama-server on PATH and no llama-cpp-python "
                                             "(install the `llama` extra: pip install 'localaistack-reconciler[llama]')")
    if options and options.parallel:
        return Blocked("EngineOptionUnsupported", "llamaCpp.parallel needs llama-server; llama-cpp-python's server has no slots")
    base = base + _served_as(spec, "--model_alias")
    flags = base + (_flags(("--n_ctx", options.context_size), ("--n_gpu_layers", options.gpu_layers),
                            ("--n_threads", options.threads), ("--chat_format", options.chat_format)) if options else [])
    return EngineCommand((facts.llama_cpp_python, "-m", LLAMA_CPP_PYTHON_MODULE), (*flags, *spec.args))


def _vllm(spec: WorkloadSpec, model_path: str, facts: EngineFacts, listen: list[str]) -> EngineCommand | Blocked:
    options = spec.vllm
    vllm = (options.executable if options else None) or facts.vllm
    if vllm is None:
        return Blocked("EngineNotInstalled", "vllm: not found on PATH (install the `vllm` extra on a host with an NVIDIA GPU)")
    flags = ["serve", model_path, *listen, *_served_as(spec, "--served-model-name")]
    if options:
        flags += _flags(("--gpu-memory-utilization", options.gpu_memory_utilization),
                        ("--max-model-len", options.max_model_len), ("--dtype", options.dtype),
                        ("--quantization", options.quantization), ("--tensor-parallel-size", options.tensor_parallel_size))
    return EngineCommand((vllm,), (*flags, *spec.args), bool(options and options.executable))


def _flags(*pairs: tuple[str, object]) -> list[str]:
    return [part for flag, value in pairs if value is not None for part in (flag, str(value))]


def _http(path: str) -> HealthCheck:
    return HealthCheck(http=HttpCheck(path=path))
