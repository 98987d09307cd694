"""Honest acceleration (issue 24): a GPU request is never started on the CPU in its place, and the status shows
where the model really is. Builds are asked for real (this host's CPU-only llama-cpp-python); GPUs are stand-ins."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from reconciler.api.meta import API_VERSION
from reconciler.api.workload import Workload, WorkloadSpec
from reconciler.gate.acceleration import ACCELERATION_UNAVAILABLE, acceleration_asked, acceleration_refusal, gpu_layers_asked
from reconciler.observe.engine_builds import (CACHE_FILE, LLAMA_CPP_PYTHON, LLAMA_SERVER, EngineBuild, EngineBuilds,
                                              parse_device_list)
from reconciler.observe.gpus import GpuInventory
from tests.conftest import Workspace, wait_for
from tests.test_engines import ENGINES_POLICY, document, engine_env, free_port
from tests.tiny_gguf import write_tiny_llama

FIXTURES = Path(__file__).parent / "fixtures" / "acceleration"
CPU_BUILD = EngineBuild(LLAMA_CPP_PYTHON, "/venv/bin/python", "ab" * 32, False, ("CPU",), ("CPU: AMD EPYC (24105 MiB)",))
CUDA_BUILD = EngineBuild(LLAMA_SERVER, "/opt/llama/llama-server", "cd" * 32, True, ("CUDA",), ("CUDA0: NVIDIA H100",))
FAKE_GPU = [{"index": 0, "name": "Fake H100", "uuid": "GPU-fake-0", "memoryTotal": 80 * 2**30}]


def llama(**fields: Any) -> WorkloadSpec:
    body = {"engine": "llama.cpp", "model": "tiny", "port": 8080, **fields}
    return Workload.model_validate({"apiVersion": API_VERSION, "kind": "Workload", "metadata": {"name": "w"},
                                    "spec": body}).spec


class TestAskedFor:
    @pytest.mark.parametrize("fields, asked", [
        ({}, None),
        ({"llamaCpp": {"gpuLayers": 0}}, None),
        ({"llamaCpp": {"gpuLayers": 8}}, "8"),
        ({"args": ["-ngl", "99"]}, "99"),
        ({"args": ["--n-gpu-layers=all"]}, "all"),
        ({"args": ["--gpu_layers", "4"]}, "4"),  # llama-server turns _ into -
        ({"args": ["--n_gpu", "4"]}, "4"),  # llama-cpp-python's argparse takes a prefix
        ({"llamaCpp": {"gpuLayers": 8}, "args": ["--n-gpu-layers", "0"]}, None),  # the last one wins
        ({"llamaCpp": {"gpuLayers": 0}, "args": ["-ngl", "12"]}, "12"),
    ])
    def test_gpu_layers_as_the_servers_read_them(self, fields: dict[str, Any], asked: str | None) -> None:
        assert gpu_layers_asked(llama(**fields)) == asked

    def test_an_assigned_gpu_asks_for_acceleration_by_itself(self) -> None:
        assert acceleration_asked(llama(), (1,)) == "GPU 1 assigned"
        assert acceleration_asked(llama(llamaCpp={"gpuLayers": 8}), (0,)) == "GPU 0 assigned and 8 GPU layers asked"
        assert acceleration_asked(llama(), ()) is None


class TestRefusal:
    def test_a_cpu_only_build_asked_for_gpu_layers_is_refused_with_the_recipe(self) -> None:
        refused = acceleration_refusal(llama(llamaCpp={"gpuLayers": 8}), (0,), CPU_BUILD)
        assert refused is not None and refused.reason == ACCELERATION_UNAVAILABLE
        assert "llama-cpp-python at /venv/bin/python (build sha256:abababababab)" in refused.message
        assert "no GPU backend compiled in (backends: CPU)" in refused.message
        assert 'CMAKE_ARGS="-DGGML_CUDA=on" pip install' in refused.message

    def test_gpu_layers_without_a_gpu_assigned_would_run_on_the_cpu(self) -> None:
        refused = acceleration_refusal(llama(llamaCpp={"gpuLayers": 8}), (), CUDA_BUILD)
        assert refused is not None and "no GPU is assigned" in refused.message

    def test_a_build_that_could_not_be_asked_is_not_trusted(self) -> None:
        unknown = EngineBuild(LLAMA_SERVER, "/opt/llama-server", "ef" * 32, None, problem="the probe exited with code 1")
        refused = acceleration_refusal(llama(), (0,), unknown)
        assert refused is not None and "could not be asked whether it can offload (the probe exited with code 1)" in refused.message

    def test_what_asks_for_no_gpu_or_can_have_one_passes(self) -> None:
        assert acceleration_refusal(llama(llamaCpp={"gpuLayers": 0}), (), CPU_BUILD) is None
        assert acceleration_refusal(llama(llamaCpp={"gpuLayers": 99}), (0,), CUDA_BUILD) is None
        assert acceleration_refusal(llama(), (0,), None) is None  # a spec-named server: confirmed after its start


class TestBuildProbe:
    def test_llama_server_device_list_from_a_published_cuda_build(self) -> None:
        # https://github.com/ggml-org/llama.cpp/pull/11424 (a comment showing `llama-server --rpc ... --list-devices`)
        offload, backends, devices = parse_device_list((FIXTURES / "list-devices-cuda.txt").read_text())
        assert (offload, backends) == (True, ("CUDA",))
        assert devices == ("CUDA0: NVIDIA GeForce RTX XXXX (A MiB, B MiB free)",
                           "CUDA1: NVIDIA GeForce GTX YYYY (A MiB, B MiB free)")  # the RPC servers are other hosts'

    def test_a_cpu_build_lists_no_device(self) -> None:
        assert parse_device_list("Available devices:\n") == (False, (), ())

    def test_this_hosts_llama_cpp_python_is_asked_once_and_remembered(self, tmp_path: Path) -> None:
        pytest.importorskip("llama_cpp")
        build = EngineBuilds(tmp_path).of(LLAMA_CPP_PYTHON, sys.executable, GpuInventory(reason="none"))
        assert build.gpu_offload is False and "CPU" in build.backends, build  # the shipped `llama` extra is CPU-only
        cached = json.loads((tmp_path / CACHE_FILE).read_text())
        assert [entry["digest"] for entry in cached.values()] == [build.digest]
        assert (tmp_path / CACHE_FILE).stat().st_mode & 0o777 == 0o600
        # a second reconciler reads the answer back instead of asking again: a planted answer shows it is read
        planted = {key: {**entry, "backends": ["PLANTED"]} for key, entry in cached.items()}
        (tmp_path / CACHE_FILE).write_text(json.dumps(planted))
        again = EngineBuilds(tmp_path).of(LLAMA_CPP_PYTHON, sys.executable, GpuInventory(reason="none"))
        assert again.backends == ("PLANTED",)


def _chat(workspace: Workspace, llama_options: dict[str, Any], gpus: int) -> int:
    write_tiny_llama(workspace.desired / "models" / "tiny.gguf")
    port = free_port()
    spec: dict[str, Any] = {"engine": "llama.cpp", "model": "tiny", "port": port,
                            "llamaCpp": {"contextSize": 128, **llama_options}}
    if gpus:
        spec["resources"] = {"gpus": {"count": gpus}}
    workspace.write("policy.yaml", ENGINES_POLICY)
    workspace.write("chat.yaml", document("Model", "tiny", {"source": "models/tiny.gguf"}) + "---\n"
                    + document("Workload", "chat", spec))
    return port


def test_the_cpu_only_build_asked_for_a_gpu_is_refused_and_never_started(workspace: Workspace, tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    _chat(workspace, {"gpuLayers": 8}, gpus=1)
    result = workspace.cli("apply", "--wait", env=engine_env(FAKE_GPU, tmp_path))
    assert result.returncode == 1, result.stdout + result.stderr
    status = workspace.resource_status("chat.yaml", "chat")
    assert (status["phase"], status["placement"]) == ("Blocked", "unavailable")
    ready = workspace.condition("chat.yaml", "chat")
    assert ready["reason"] == ACCELERATION_UNAVAILABLE
    assert "GPU 0 assigned and 8 GPU layers asked" in ready["message"] and "-DGGML_CUDA=on" in ready["message"]
    assert not workspace.owned_processes()


def test_the_cpu_build_without_a_gpu_request_runs_as_before(workspace: Workspace, tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    _chat(workspace, {"gpuLayers": 0}, gpus=0)
    workspace.start_daemon(env=engine_env(None, tmp_path))
    ready = wait_for(lambda: (s := workspace.resource_status("chat.yaml", "chat")) and s["phase"] == "Running" and s,
                     timeout=60, what="the CPU server to run")
    assert ready["gpus"] == [] and "acceleration" not in ready


def test_reconciler_host_shows_what_the_llama_cpp_build_can_do(workspace: Workspace, tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    shown = workspace.cli("host", env=engine_env(None, tmp_path))
    assert shown.returncode == 0, shown.stderr
    row = next(line for line in shown.stdout.splitlines() if line.strip().startswith("llama-cpp-python:"))
    assert "CPU only (backends: CPU)" in row and f"{sys.executable}, sha256:" in row
    dumped = json.loads(workspace.cli("host", "-o", "json", env=engine_env(None, tmp_path)).stdout)
    assert [(b["engine"], b["gpuOffload"]) for b in dumped["engineBuilds"]] == [("llama-cpp-python", False)]
