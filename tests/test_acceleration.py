"""Honest acceleration (issue 24): a GPU request is never started on the CPU in its place, and the status shows
where the model really is. Builds are asked for real (this host's CPU-only llama-cpp-python); GPUs are stand-ins."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.api.meta import API_VERSION, ResourceKey
from reconciler.api.policy import PolicySpec
from reconciler.control.placement import local_blocker
from reconciler.diff.engines import Rendered
from reconciler.api.workload import Workload, WorkloadSpec
from reconciler.diff.acceleration import AssignedGpu, assess_acceleration
from reconciler.gate.acceleration import ACCELERATION_UNAVAILABLE, acceleration_asked, acceleration_refusal, gpu_layers_asked
from reconciler.observe.engine_builds import (CACHE_FILE, LLAMA_CPP_PYTHON, LLAMA_SERVER, EngineBuild, EngineBuilds,
                                              parse_device_list)
from reconciler.observe.engine_log import EngineLoad, parse_engine_log
from reconciler.observe.gpu_processes import read_gpu_processes
from reconciler.observe.gpus import GpuInventory
from reconciler.control.reconciler import Reconciler
from reconciler.record.recorder import HOST_PROFILE_FILE
from tests.conftest import POLICY_YAML, Workspace, wait_for, workload_yaml
from tests.test_engines import ENGINES_POLICY, document, engine_env, free_port
from tests.tiny_gguf import write_tiny_llama

PROGRAMS = Path(__file__).parent / "programs"
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


def test_a_build_that_cannot_offload_is_this_hosts_incapacity_which_a_fallback_may_serve() -> None:
    blocked = acceleration_refusal(llama(llamaCpp={"gpuLayers": 8}), (0,), CPU_BUILD)
    assert blocked is not None and local_blocker(Rendered(blocked=blocked), (0, ""), 0, PolicySpec()) is blocked


class TestBuildProbe:
    def test_llama_server_device_list_from_a_published_cuda_build(self) -> None:
        # https://github.com/ggml-org/llama.cpp/pull/11424 (a comment showing `llama-server --rpc ... --list-devices`)
        offload, backends, devices = parse_device_list((FIXTURES / "list-devices-cuda.txt").read_text())
        assert (offload, backends) == (True, ("CUDA",))
        assert devices == ("CUDA0: NVIDIA GeForce RTX XXXX (A MiB, B MiB free)",
                           "CUDA1: NVIDIA GeForce GTX YYYY (A MiB, B MiB free)")  # the RPC servers are other hosts'

    def test_a_cpu_build_lists_no_device(self) -> None:
        assert parse_device_list("Available devices:\n") == (False, (), ())

    def test_a_build_that_cannot_answer_is_asked_again_later_not_on_every_pass(self, tmp_path: Path) -> None:
        server = tmp_path / "llama-server"
        server.write_text(f"#!/bin/sh\necho asked >> {tmp_path / 'asked'}\necho 'error: invalid argument: --list-devices' >&2\nexit 1\n")
        server.chmod(0o755)
        builds = EngineBuilds(tmp_path)
        first = builds.of(LLAMA_SERVER, str(server), GpuInventory(reason="none"))
        assert first.gpu_offload is None and first.problem == "the probe exited with code 1: error: invalid argument: --list-devices"
        assert builds.of(LLAMA_SERVER, str(server), GpuInventory(reason="none")) == first
        assert (tmp_path / "asked").read_text() == "asked\n" and not (tmp_path / CACHE_FILE).exists()

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


class TestEngineLog:
    def test_the_cpu_build_here_puts_every_layer_on_the_cpu(self) -> None:
        # captured on this host: llama-cpp-python 0.3.36 (the `llama` extra), --n_gpu_layers 8, a generated model
        load = parse_engine_log((FIXTURES / "llama-cpp-python-cpu-build.log").read_text())
        assert load.loaded and load.gpu_devices == () and load.layers == {"CPU": 3}
        assert load.layers_on_gpu == (0, 3) and set(load.buffers) == {"CPU_Mapped"}

    def test_a_published_cuda_load_over_two_gpus(self) -> None:
        load = parse_engine_log((FIXTURES / "llama-cuda-two-gpus.log").read_text())
        assert load.offloaded == load.layers_on_gpu == (81, 81) and load.gpu_devices == ("CUDA0", "CUDA2")
        assert load.buffers["CUDA0"] == int(24277.75 * 2**20) and "CUDA_Host" not in load.gpu_devices

    def test_vllm_platform_lines(self) -> None:
        cuda, none = (FIXTURES / "vllm-platforms.log").read_text().splitlines()[2:]
        assert parse_engine_log(cuda).platform == "cuda" and parse_engine_log(none).platform == "unspecified"

    def test_a_start_still_loading_has_said_nothing(self) -> None:
        head = (FIXTURES / "llama-cpp-python-cpu-build.log").read_text().split("load_tensors:")[0]
        assert not parse_engine_log(head).loaded


class TestStandInNvml:
    def test_per_process_memory_through_the_nvml_calls(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        listed = [{**FAKE_GPU[0], "processes": [{"pid": 10, "usedMemory": 5}, {"pid": 11, "usedMemory": None}]},
                  {"index": 1, "name": "Fake L4", "uuid": "GPU-fake-1", "memoryTotal": 2**30, "processes": [{"pid": 99, "usedMemory": 7}]}]
        (tmp_path / "gpus.json").write_text(json.dumps(listed))
        monkeypatch.setenv("RECONCILER_FAKE_GPUS", str(tmp_path / "gpus.json"))
        processes = read_gpu_processes()
        assert processes.held_by({10, 11}) == {"GPU-fake-0": 5} and processes.held_by({12}) == {}

    def test_a_gpu_that_may_not_list_processes_leaves_the_use_unknown(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        (tmp_path / "gpus.json").write_text(json.dumps(FAKE_GPU))
        monkeypatch.setenv("RECONCILER_FAKE_GPUS", str(tmp_path / "gpus.json"))
        processes = read_gpu_processes()
        assert processes.held_by({1}) is None and "Not Supported" in (processes.reason or "")


H100 = AssignedGpu(0, "GPU-a")
CUDA_LOAD = EngineLoad({"CUDA0": 4 * 2**30, "CPU_Mapped": 2**28}, (33, 33))


class TestAssessment:
    def test_on_the_assigned_gpu_with_the_estimate_beside_what_it_holds(self) -> None:
        seen = assess_acceleration("GPU 0 assigned", [H100], CUDA_LOAD, {"GPU-a": 5 * 2**30}, "99", 4 * 2**30)
        assert (seen.ok, seen.reason) == (True, "OnAssignedGPUs")
        assert seen.report["gpuMemoryUsed"] == 5 * 2**30 and seen.report["estimateError"] == "+25%"
        assert seen.message == "33/33 layers on GPU 0 (GPU-a), 5.0 GiB held by its processes (estimated 4.0 GiB, +25%)"

    def test_the_engine_claims_cuda_but_nvml_lists_nothing(self) -> None:
        seen = assess_acceleration("GPU 0 assigned", [H100], CUDA_LOAD, {}, None, None)
        assert seen.off_the_gpu and "NVML lists no GPU memory held by its processes" in seen.message

    def test_without_nvml_lists_the_log_decides(self) -> None:
        assert assess_acceleration("x", [H100], CUDA_LOAD, None, None, None).ok is True
        cpu = EngineLoad({"CPU_Mapped": 2**28}, None, {"CPU": 3})
        assert assess_acceleration("x", [H100], cpu, None, None, None).off_the_gpu

    def test_another_gpu_than_assigned_is_a_mismatch(self) -> None:
        seen = assess_acceleration("x", [H100], CUDA_LOAD, {"GPU-a": 1, "GPU-b": 2}, None, None)
        assert (seen.ok, seen.reason, seen.off_the_gpu) == (False, "GPUMismatch", False)
        assert "holds memory on GPU GPU-b, which it was not assigned" in seen.message

    def test_fewer_layers_than_asked(self) -> None:
        partial = EngineLoad({"CUDA0": 2**30}, (20, 33))
        seen = assess_acceleration("x", [H100], partial, {"GPU-a": 2**30}, "99", None)
        assert seen.reason == "FewerLayersOffloaded" and "only 20 of the 33 layers asked" in seen.message
        assert assess_acceleration("x", [H100], partial, {"GPU-a": 2**30}, "20", None).ok is True
        assert assess_acceleration("x", [H100], partial, {"GPU-a": 2**30}, "auto", None).ok is True

    def test_vllm_on_no_platform_and_a_load_not_yet_reported(self) -> None:
        assert assess_acceleration("x", [H100], EngineLoad(platform="unspecified"), None, None, None).off_the_gpu
        assert assess_acceleration("x", [H100], EngineLoad(platform="cuda"), None, None, None).ok is True
        assert assess_acceleration("x", [H100], EngineLoad(), {}, None, None).ok is None


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


def _write_inventory(path: Path, processes: list[dict[str, int]] | None) -> None:
    """The stand-in NVML's GPU, listing `processes` (None: it may not list them, as NVML in some containers)."""
    gpu = {**FAKE_GPU[0], **({"processes": processes} if processes is not None else {})}
    path.write_text(json.dumps([gpu]))


def test_a_cuda_build_on_its_gpu_is_confirmed_with_its_memory_and_the_estimate(workspace: Workspace, tmp_path: Path) -> None:
    port = _chat(workspace, {"gpuLayers": 99}, gpus=1)
    env = engine_env(FAKE_GPU, tmp_path)
    env["PATH"] = f"{PROGRAMS / 'cuda'}:{env['PATH']}"  # the stand-in CUDA llama-server, asked --list-devices first
    inventory = Path(env["RECONCILER_FAKE_GPUS"])
    _write_inventory(inventory, [])
    workspace.start_daemon(env=env)
    running = wait_for(lambda: (s := workspace.resource_status("chat.yaml", "chat")) and s.get("pid") and s, timeout=30,
                       what="the stand-in CUDA server to start")
    assert running["command"][0] == str(PROGRAMS / "cuda" / "llama-server") and running["gpus"] == [0]
    # NVML lists no memory of its processes: the engine's word alone does not make it Ready
    degraded = wait_for(lambda: (c := workspace.condition("chat.yaml", "chat")) and c["reason"] == "NotOnGPU" and c,
                        timeout=30, what="NotOnGPU while NVML lists nothing")
    assert degraded["status"] == "False" and "NVML lists no GPU memory held by its processes" in degraded["message"]
    _write_inventory(inventory, [{"pid": running["pid"], "usedMemory": 25 * 2**30}, {"pid": 1, "usedMemory": 2**30}])
    ready = wait_for(lambda: (s := workspace.resource_status("chat.yaml", "chat")) and s["phase"] == "Running" and s,
                     timeout=30, what="Ready once NVML lists its memory on the assigned GPU")
    shown = ready["acceleration"]
    assert shown["devices"] == shown["assigned"] == ["GPU-fake-0"]
    assert (shown["layersOffloaded"], shown["layersTotal"], shown["gpuMemoryUsed"]) == (81, 81, 25 * 2**30)
    assert shown["estimate"] > 0 and shown["estimateError"].endswith("%")  # the tiny model's estimate beside 25 GiB
    accelerated = workspace.condition("chat.yaml", "chat", "Accelerated")
    assert (accelerated["status"], accelerated["reason"]) == ("True", "OnAssignedGPUs")
    assert "81/81 layers on GPU 0 (GPU-fake-0), 25.0 GiB held by its processes" in accelerated["message"]
    assert ready["endpoints"] == [f"http://127.0.0.1:{port}/v1"]
    placed = [(line["result"], line.get("acceleration", {}).get("gpuMemoryUsed")) for line in workspace.evidence("chat.yaml")
              if line["event"] == "acceleration"]
    assert placed[-2:] == [("NotOnGPU", 0), ("OnAssignedGPUs", 25 * 2**30)]  # each change once, the estimate beside it
    assert [line for line in workspace.evidence("chat.yaml") if line["event"] == "acceleration"][-1]["acceleration"]["estimate"] > 0


def test_a_server_the_spec_names_that_runs_on_the_cpu_is_not_ready(workspace: Workspace, tmp_path: Path) -> None:
    """The real CPU-only llama-cpp-python behind a llama-server command line: not asked before the start (the spec
    names it, so it runs only once the gate trusts it), then caught by its own log and NVML's empty list."""
    pytest.importorskip("llama_cpp")
    shim = tmp_path / "llama-server"
    shim.write_text(f"#!{sys.executable}\n" + (PROGRAMS / "llama-server-shim.py").read_text())
    shim.chmod(0o755)
    _chat(workspace, {"gpuLayers": 8, "executable": str(shim)}, gpus=1)
    workspace.write("policy.yaml", ENGINES_POLICY + f"      - executable: {shim}\n")
    env = engine_env(FAKE_GPU, tmp_path)
    _write_inventory(Path(env["RECONCILER_FAKE_GPUS"]), [])
    workspace.start_daemon(env=env)
    ready = wait_for(lambda: (c := workspace.condition("chat.yaml", "chat")) and c["reason"] == "NotOnGPU" and c,
                     timeout=60, what="the CPU build to be caught after its start")
    assert ready["status"] == "False"
    assert "GPU 0 assigned and 8 GPU layers asked, but it runs on the CPU" in ready["message"]
    assert "model buffers on CPU_Mapped" in ready["message"]
    status = workspace.resource_status("chat.yaml", "chat")
    assert status["phase"] == "Degraded" and status["endpoints"] == []
    assert status["acceleration"]["layersOffloaded"] == 0 and status["acceleration"]["gpuMemoryUsed"] == 0
    assert status["acceleration"]["layersByDevice"] == {"CPU": 3}  # llama-cpp-python logs each layer's device


def _logging_llama_server(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A llama-server stand-in on PATH that notes each run's arguments and lists no device: (its log, the env)."""
    asked, programs = tmp_path / "asked", tmp_path / "bin"
    programs.mkdir()
    server = programs / "llama-server"
    server.write_text(f"#!/bin/sh\necho \"$@\" >> {asked}\necho 'Available devices:'\n")
    server.chmod(0o755)
    env = engine_env(FAKE_GPU, tmp_path)
    env["PATH"] = f"{programs}:{env['PATH']}"
    return asked, env


def test_read_only_commands_ask_no_build_that_no_workload_is_judged_by(workspace: Workspace, tmp_path: Path) -> None:
    """status, plan and describe read the host to judge what the specs ask: a build no spec runs on a GPU is not
    run (0.15 s of every command)."""
    asked, env = _logging_llama_server(tmp_path)
    workspace.write("policy.yaml", POLICY_YAML)
    workspace.write("hello.yaml", workload_yaml("hello"))
    for command in (("status",), ("plan",), ("describe", "hello")):
        done = workspace.cli(*command, env=env)
        assert done.returncode in (0, 2), done.stderr
        assert not asked.exists(), f"`reconciler {command[0]}` ran {asked.parent / 'bin'}: {asked.read_text()}"


def test_apply_asks_the_builds_only_once_a_llama_cpp_workload_is_desired(workspace: Workspace, tmp_path: Path) -> None:
    """Asking a build runs it (0.2 s before a cold apply's first start): without a llama.cpp workload the published
    profile says it was not asked; with one, the build is asked once, before that workload is judged by it."""
    asked, env = _logging_llama_server(tmp_path)
    workspace.write("policy.yaml", POLICY_YAML)
    workspace.write("hello.yaml", workload_yaml("hello"))
    assert workspace.cli("apply", env=env).returncode == 0
    assert not asked.exists(), f"apply without a llama.cpp workload ran llama-server: {asked.read_text()}"
    published = yaml.safe_load((workspace.desired / HOST_PROFILE_FILE).read_text())["status"]
    assert published["engineBuilds"] == [] and published["engineBuildsUnasked"] == "not asked: no llama.cpp workload is desired"
    _chat(workspace, {"gpuLayers": 8}, gpus=1)  # judged by the build: it lists no device, so it is refused
    refused = workspace.cli("apply", env=env)
    assert asked.read_text() == "--list-devices\n", refused.stderr
    published = yaml.safe_load((workspace.desired / HOST_PROFILE_FILE).read_text())["status"]
    assert LLAMA_SERVER in [build["engine"] for build in published["engineBuilds"]]
    assert "engineBuildsUnasked" not in published or published["engineBuildsUnasked"] is None
    assert "it lists no GPU device (`llama-server --list-devices`)" in refused.stderr


def test_a_running_reconciler_asks_the_builds_on_the_refresh_a_llama_cpp_workload_first_appears(
    workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon's profile is kept for 30 s; a llama.cpp workload that arrives within them is not judged, nor its
    decision cited, by a profile that asked no build."""
    asked, env = _logging_llama_server(tmp_path)
    monkeypatch.setenv("PATH", env["PATH"])
    monkeypatch.setenv("RECONCILER_FAKE_GPUS", env["RECONCILER_FAKE_GPUS"])
    workspace.write("policy.yaml", POLICY_YAML)
    reconciler = Reconciler(workspace.desired, workspace.state)
    reconciler.refresh()
    unasked = reconciler.parts.host.profile
    assert not asked.exists() and unasked is not None and unasked.engine_builds_unasked is not None
    _chat(workspace, {"gpuLayers": 8}, gpus=1)
    reconciler.refresh()
    profile = reconciler.parts.host.profile
    assert asked.read_text() == "--list-devices\n"
    assert profile is not None and profile.engine_builds_unasked is None
    assert LLAMA_SERVER in [build.engine for build in profile.engine_builds]
    assert profile.capability_digest() != unasked.capability_digest()


def test_a_llama_cpp_workload_held_at_its_last_valid_spec_keeps_the_builds_asked(
    workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its file now has an error: it runs on (restarted after a crash) as last reconciled, and is judged by the build
    meanwhile, so the profile must not say that no llama.cpp workload is desired."""
    asked, env = _logging_llama_server(tmp_path)
    monkeypatch.setenv("PATH", env["PATH"])
    monkeypatch.setenv("RECONCILER_FAKE_GPUS", env["RECONCILER_FAKE_GPUS"])
    _chat(workspace, {"gpuLayers": 8}, gpus=1)
    reconciler = Reconciler(workspace.desired, workspace.state)
    reconciler.refresh()
    for key in reconciler.keys():
        reconciler.reconcile(key)
    assert ResourceKey("Workload", "chat") in reconciler.records
    chat = workspace.desired / "chat.yaml"
    chat.write_text(chat.read_text().replace("contextSize: 128", "contextSize: lots"))
    reconciler.refresh()
    assert ResourceKey("Workload", "chat") in reconciler.desired.rejected
    profile = reconciler.parts.host.profile
    assert profile is not None and profile.engine_builds_unasked is None
    assert LLAMA_SERVER in [build.engine for build in profile.engine_builds]
