"""Pure units behind native AI engines: command rendering, Workload validation, GPU assignment, health
bookkeeping, preflight, launch rendering and cgroup discovery. No processes, no network, no real clock."""

from __future__ import annotations

import os
import re
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from reconciler.api.kinds import Model
from reconciler.api.meta import API_VERSION
from reconciler.api.status import HealthState
from reconciler.api.checks import HealthCheck
from reconciler.api.workload import GpuRequest, Workload, WorkloadSpec
from reconciler.diff.gpus import assign_gpus
from reconciler.diff.health import next_probe_in, note_probe, probe_due, unhealthy_cause
from reconciler.diff.preflight import preflight
from reconciler.drive.cgroups import Cgroups
from reconciler.diff.engines import (GATEWAY_PROGRAM, Blocked, EngineCommand, engine_check, engine_command,
                                     engine_endpoint)
from reconciler.observe.host import EngineFacts
from reconciler.api.launch import render_launch
from reconciler.observe.gpus import Gpu, GpuInventory
from reconciler.observe.host import ModelPresence

GiB = 2**30
MODEL = "/models/tiny.gguf"
LLAMA_SERVER = "/opt/llama/bin/llama-server"
PYTHON = "/venv/bin/python"
VLLM = "/venv/bin/vllm"
T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)


def spec(**fields: Any) -> WorkloadSpec:
    return Workload.model_validate(
        {"apiVersion": API_VERSION, "kind": "Workload", "metadata": {"name": "w"}, "spec": fields}
    ).spec


def llama(**fields: Any) -> WorkloadSpec:
    return spec(engine="llama.cpp", model="tiny", port=8080, **fields)


def vllm(**fields: Any) -> WorkloadSpec:
    fields.setdefault("resources", {"gpus": {"count": 1}})
    return spec(engine="vllm", model="tiny", port=8000, **fields)


def rendered(result: EngineCommand | Blocked) -> EngineCommand:
    assert isinstance(result, EngineCommand), result
    return result


def blocked(result: EngineCommand | Blocked) -> Blocked:
    assert isinstance(result, Blocked), result
    return result


# -- 1. engine_command ----------------------------------------------------------------------------------------------


class TestLlamaServer:
    FACTS = EngineFacts(llama_server=LLAMA_SERVER, llama_cpp_python=PYTHON)

    def test_minimal_renders_model_host_port_and_the_model_name_clients_see(self) -> None:
        command = rendered(engine_command(llama(), MODEL, self.FACTS))
        assert command.command == (LLAMA_SERVER,)
        assert command.args == ("--model", MODEL, "--host", "127.0.0.1", "--port", "8080", "--alias", "tiny", "--no-webui")

    def test_every_option_set_renders_its_flag_then_spec_args(self) -> None:
        options = {"contextSize": 4096, "gpuLayers": 0, "threads": 8, "parallel": 4, "chatFormat": "chatml"}
        command = rendered(engine_command(llama(llamaCpp=options, args=["--verbose", "--no-mmap"]), MODEL, self.FACTS))
        assert command.args == (
            "--model", MODEL, "--host", "127.0.0.1", "--port", "8080", "--alias", "tiny",
            "--ctx-size", "4096", "--n-gpu-layers", "0", "--threads", "8", "--threads-batch", "8", "--parallel", "4",
            "--chat-template", "chatml", "--no-webui",
            "--verbose", "--no-mmap",
        )

    def test_only_the_options_that_are_set(self) -> None:
        command = rendered(engine_command(llama(llamaCpp={"threads": 2}), MODEL, self.FACTS))
        assert command.args == ("--model", MODEL, "--host", "127.0.0.1", "--port", "8080", "--alias", "tiny",
                                "--threads", "2", "--threads-batch", "2", "--no-webui")

    def test_default_health_check_is_http_health(self) -> None:
        check = engine_check(llama(), self.FACTS)
        assert check is not None and check.http is not None
        assert check.http.path == "/health"
        assert check.tcp is None and check.exec is None

    def test_endpoint_is_openai_base_url(self) -> None:
        assert engine_endpoint(llama(host="0.0.0.0")) == "http://127.0.0.1:8080/v1", "a wildcard bind is reached on loopback"

    def test_ipv6_host_is_bracketed_in_endpoint_but_not_in_flags(self) -> None:
        command = rendered(engine_command(llama(host="::1"), MODEL, self.FACTS))
        assert engine_endpoint(llama(host="::1")) == "http://[::1]:8080/v1"
        assert command.args[2:4] == ("--host", "::1")

    def test_executable_option_overrides_path(self) -> None:
        command = rendered(engine_command(llama(llamaCpp={"executable": "/custom/llama-server"}), MODEL, self.FACTS))
        assert command.command == ("/custom/llama-server",)

    def test_executable_option_used_without_any_installed_engine(self) -> None:
        command = rendered(engine_command(llama(llamaCpp={"executable": "/custom/llama-server", "parallel": 2}), MODEL,
                                          EngineFacts()))
        assert command.command == ("/custom/llama-server",)
        assert "--parallel" in command.args and "--n_ctx" not in command.args

    def test_spec_health_replaces_default(self) -> None:
        own = {"tcp": {}, "periodSeconds": 1}
        check = engine_check(llama(health=own), self.FACTS)
        assert check is not None and check.tcp is not None and check.http is None
        assert check.period_seconds == 1


class TestLlamaCppPython:
    FACTS = EngineFacts(llama_server=None, llama_cpp_python=PYTHON)

    def test_runs_the_module_with_underscore_flags(self) -> None:
        options = {"contextSize": 2048, "gpuLayers": 10, "threads": 4, "chatFormat": "llama2"}
        command = rendered(engine_command(llama(llamaCpp=options, args=["--verbose", "true"]), MODEL, self.FACTS))
        assert command.command == (PYTHON, "-P", "-s", "-m", "llama_cpp.server")
        assert command.args == (
            "--model", MODEL, "--host", "127.0.0.1", "--port", "8080", "--model_alias", "tiny",
            "--n_ctx", "2048", "--n_gpu_layers", "10", "--n_threads", "4", "--n_threads_batch", "4",
            "--chat_format", "llama-2",
            "--verbose", "true",
        )

    def test_minimal_has_no_option_flags(self) -> None:
        command = rendered(engine_command(llama(), MODEL, self.FACTS))
        assert command.args == ("--model", MODEL, "--host", "127.0.0.1", "--port", "8080", "--model_alias", "tiny")

    def test_default_health_check_is_a_tcp_connect(self) -> None:
        check = engine_check(llama(), self.FACTS)
        assert check is not None and check.tcp is not None and check.http is None, "every HTTP route waits for generation"

    def test_spec_health_replaces_default(self) -> None:
        check = engine_check(llama(health={"http": {"path": "/ready"}}), self.FACTS)
        assert check is not None and check.http is not None and check.http.path == "/ready"

    def test_endpoint(self) -> None:
        assert engine_endpoint(llama()) == "http://127.0.0.1:8080/v1"

    def test_parallel_is_unsupported(self) -> None:
        why = blocked(engine_command(llama(llamaCpp={"parallel": 2}), MODEL, self.FACTS))
        assert why.reason == "EngineOptionUnsupported"
        assert "parallel" in why.message and "llama-server" in why.message

    def test_neither_server_is_not_installed_and_names_the_llama_extra(self) -> None:
        why = blocked(engine_command(llama(), MODEL, EngineFacts(vllm=VLLM)))
        assert why.reason == "EngineNotInstalled"
        assert "llama-server" in why.message
        assert "[llama]" in why.message


class TestVllm:
    FACTS = EngineFacts(vllm=VLLM)

    def test_minimal(self) -> None:
        command = rendered(engine_command(vllm(), "/models/qwen", self.FACTS))
        assert command.command == (VLLM,)
        assert command.args == ("serve", "/models/qwen", "--host", "127.0.0.1", "--port", "8000", "--served-model-name", "tiny")
        assert engine_endpoint(vllm()) == "http://127.0.0.1:8000/v1"

    def test_every_option_then_spec_args(self) -> None:
        options = {"gpuMemoryUtilization": 0.85, "maxModelLen": 8192, "dtype": "half", "quantization": "awq",
                   "tensorParallelSize": 2}
        command = rendered(engine_command(
            vllm(vllm=options, args=["--enforce-eager"], resources={"gpus": {"count": 2}}), "/models/qwen", self.FACTS))
        assert command.args == (
            "serve", "/models/qwen", "--host", "127.0.0.1", "--port", "8000", "--served-model-name", "tiny",
            "--gpu-memory-utilization", "0.85", "--max-model-len", "8192", "--dtype", "half",
            "--quantization", "awq", "--tensor-parallel-size", "2",
            "--enforce-eager",
        )

    def test_only_set_options(self) -> None:
        command = rendered(engine_command(vllm(vllm={"dtype": "bfloat16"}), "/m", self.FACTS))
        assert command.args[8:] == ("--dtype", "bfloat16")

    def test_default_health_check_is_http_health(self) -> None:
        check = engine_check(vllm(), self.FACTS)
        assert check is not None and check.http is not None and check.http.path == "/health"

    def test_spec_health_replaces_default(self) -> None:
        check = engine_check(vllm(health={"exec": {"command": ["true"]}}), self.FACTS)
        assert check is not None and check.exec is not None and check.http is None

    def test_missing_is_not_installed(self) -> None:
        why = blocked(engine_command(vllm(), "/m", EngineFacts(llama_server=LLAMA_SERVER, llama_cpp_python=PYTHON)))
        assert why.reason == "EngineNotInstalled"
        assert "vllm" in why.message

    def test_executable_option_overrides_path(self) -> None:
        command = rendered(engine_command(vllm(vllm={"executable": "/other/vllm"}), "/m", EngineFacts()))
        assert command.command == ("/other/vllm",)

    def test_ipv6_endpoint(self) -> None:
        assert engine_endpoint(vllm(host="fe80::1")) == "http://[fe80::1]:8000/v1"


class TestGateway:
    def test_runs_the_reconcilers_own_server_with_a_safe_import_path_and_its_routes_file(self) -> None:
        """-P -s as for llama-cpp-python: a module planted in workingDir, or in the user site-packages of a HOME,
        is never imported in place of the gateway's own code."""
        command = rendered(engine_command(spec(engine="gateway", port=8090), None, EngineFacts(), None, "/state/routes.json"))
        assert command.command == (sys.executable, "-P", "-s", GATEWAY_PROGRAM)
        assert command.args == ("--host", "127.0.0.1", "--port", "8090", "--routes", "/state/routes.json")


class TestProcessEngine:
    def test_passes_command_and_args_through(self) -> None:
        command = rendered(engine_command(spec(command=["python3", "-m", "http.server"], args=["9000"]), None, EngineFacts()))
        assert command.command == ("python3", "-m", "http.server")
        assert command.args == ("9000",)

    def test_no_port_no_endpoint_and_no_default_check(self) -> None:
        assert engine_endpoint(spec(command=["sleep", "1"])) is None
        assert engine_check(spec(command=["sleep", "1"]), EngineFacts()) is None

    def test_endpoint_with_port_has_no_v1(self) -> None:
        assert engine_endpoint(spec(command=["srv"], port=9000)) == "http://127.0.0.1:9000"

    def test_ipv6_endpoint(self) -> None:
        assert engine_endpoint(spec(command=["srv"], host="::", port=9000)) == "http://[::1]:9000"

    def test_own_health_check_is_kept(self) -> None:
        check = engine_check(spec(command=["srv"], port=9000, health={"tcp": {}}), EngineFacts())
        assert check is not None and check.tcp is not None


# -- 2. Workload validation -----------------------------------------------------------------------------------------


def rejected(message: str, **fields: Any) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        spec(**fields)


class TestWorkloadValidation:
    def test_process_without_command(self) -> None:
        rejected("engine 'process' needs spec.command")

    def test_process_with_model(self) -> None:
        rejected("spec.model is for engines llama.cpp and vllm, not 'process'", command=["x"], model="tiny")

    def test_process_with_llama_cpp_options(self) -> None:
        rejected("spec.llamaCpp is for engines llama.cpp and vllm, not 'process'", command=["x"], llamaCpp={"threads": 1})

    def test_llama_cpp_with_command(self) -> None:
        rejected("engine 'llama.cpp' renders its own command: put extra flags in spec.args",
                 engine="llama.cpp", model="tiny", port=8080, command=["llama-server"])

    def test_llama_cpp_without_model(self) -> None:
        rejected("engine 'llama.cpp' needs spec.model and spec.port", engine="llama.cpp", port=8080)

    def test_llama_cpp_without_port(self) -> None:
        rejected("engine 'llama.cpp' needs spec.model and spec.port", engine="llama.cpp", model="tiny")

    def test_vllm_options_on_llama_cpp(self) -> None:
        rejected("spec.vllm does not apply to engine 'llama.cpp'", engine="llama.cpp", model="tiny", port=8080,
                 vllm={"dtype": "half"})

    def test_llama_cpp_options_on_vllm(self) -> None:
        rejected("spec.llamaCpp does not apply to engine 'vllm'", engine="vllm", model="m", port=8000,
                 llamaCpp={"threads": 1}, resources={"gpus": {"count": 1}})

    def test_vllm_without_gpus(self) -> None:
        rejected("engine 'vllm' needs an NVIDIA GPU", engine="vllm", model="m", port=8000)

    def test_vllm_with_gpu_indices_is_accepted(self) -> None:
        assert spec(engine="vllm", model="m", port=8000, resources={"gpus": {"indices": [1]}}).resources.gpus.wanted == 1

    def test_cuda_visible_devices_in_env(self) -> None:
        rejected("request GPUs with spec.resources.gpus, not CUDA_VISIBLE_DEVICES",
                 command=["x"], env={"CUDA_VISIBLE_DEVICES": "0"})

    def test_other_env_is_accepted(self) -> None:
        assert spec(command=["x"], env={"HF_HOME": "/data"}).env == {"HF_HOME": "/data"}

    def test_option_names_are_camel_case_and_typos_rejected(self) -> None:
        assert llama(llamaCpp={"contextSize": 64}).llama_cpp.context_size == 64  # type: ignore[union-attr]
        with pytest.raises(ValidationError, match="contextsize"):
            llama(llamaCpp={"contextsize": 64})

    def test_container_runtime_needs_an_image(self) -> None:
        rejected("runtime 'container' needs spec.image", command=["x"], runtime="container")

    def test_container_fields_rejected_on_native(self) -> None:
        rejected("spec.ports is for runtime 'container', not 'native'", command=["x"], ports=[{"containerPort": 80}])

    def test_gpu_count_indices_mismatch(self) -> None:
        with pytest.raises(ValidationError, match=re.escape("count 2 does not match the 1 indices given")):
            GpuRequest.model_validate({"count": 2, "indices": [0]})

    @pytest.mark.parametrize("count", [0, 2])
    def test_gpu_count_matching_or_zero_with_indices(self, count: int) -> None:
        assert GpuRequest.model_validate({"count": count, "indices": [3, 1]}).wanted == 2

    def test_gpu_duplicate_indices_rejected(self) -> None:
        with pytest.raises(ValidationError):
            GpuRequest.model_validate({"indices": [0, 0]})

    def test_health_check_with_no_kind(self) -> None:
        with pytest.raises(ValidationError, match=re.escape("give exactly one of http, tcp, exec (got none)")):
            HealthCheck.model_validate({"periodSeconds": 1})

    def test_health_check_with_two_kinds(self) -> None:
        with pytest.raises(ValidationError, match=re.escape("give exactly one of http, tcp, exec (got http, tcp)")):
            HealthCheck.model_validate({"http": {}, "tcp": {}})

    def test_health_check_with_one_kind(self) -> None:
        assert HealthCheck.model_validate({"exec": {"command": ["true"]}}).exec is not None


# -- 3. assign_gpus -------------------------------------------------------------------------------------------------


def gpus(*memory_gib: int) -> GpuInventory:
    return GpuInventory(tuple(Gpu(i, "NVIDIA Test", f"GPU-{i}", m * GiB, m * GiB) for i, m in enumerate(memory_gib)))


def request(**fields: Any) -> GpuRequest:
    return GpuRequest.model_validate(fields)


class TestAssignGpus:
    def test_nothing_wanted(self) -> None:
        assert assign_gpus(request(), gpus(24), {}) == ()
        assert assign_gpus(request(), GpuInventory(reason="no driver"), {}) == ()

    def test_no_gpus_on_host_names_inventory_reason(self) -> None:
        why = blocked(assign_gpus(request(count=1), GpuInventory(reason="NVML unavailable: driver not loaded"), {}))
        assert why.reason == "NoCompatibleGPU"
        assert "NVML unavailable: driver not loaded" in why.message

    def test_explicit_indices_missing(self) -> None:
        why = blocked(assign_gpus(request(indices=[0, 5]), gpus(24, 24), {}))
        assert why.reason == "NoCompatibleGPU"
        assert "[5]" in why.message

    def test_explicit_indices_below_min_memory(self) -> None:
        why = blocked(assign_gpus(request(indices=[0, 1], minMemory="16Gi"), gpus(24, 8), {}))
        assert why.reason == "InsufficientGPUMemory"
        assert "[1]" in why.message and "16Gi" in why.message

    def test_explicit_indices_taken_names_holder(self) -> None:
        why = blocked(assign_gpus(request(indices=[1]), gpus(24, 24), {1: "other-llm"}))
        assert why.reason == "GPUInUse"
        assert "GPU 1" in why.message and "other-llm" in why.message

    def test_explicit_indices_free(self) -> None:
        assert assign_gpus(request(indices=[2, 0]), gpus(24, 24, 24), {1: "x"}) == (2, 0)

    def test_count_picks_free_gpus_that_fit(self) -> None:
        inventory = gpus(8, 24, 24, 48)  # 0 too small, 1 taken
        assert assign_gpus(request(count=2, minMemory="16Gi"), inventory, {1: "x"}) == (2, 3)

    def test_count_without_min_memory_takes_lowest_free(self) -> None:
        assert assign_gpus(request(count=2), gpus(8, 8, 8), {0: "x"}) == (1, 2)

    def test_min_memory_boundary_is_inclusive(self) -> None:
        assert assign_gpus(request(count=1, minMemory="24Gi"), gpus(24), {}) == (0,)

    def test_keeps_current_assignment_when_still_free(self) -> None:
        assert assign_gpus(request(count=1), gpus(24, 24, 24), {}, current=(2,)) == (2,)
        assert assign_gpus(request(count=2), gpus(24, 24, 24, 24), {}, current=(3, 1)) == (1, 3)

    def test_keeps_what_it_can_of_current(self) -> None:
        # GPU 2 went to someone else; GPU 3 is kept, the other comes from the free ones
        assert assign_gpus(request(count=2), gpus(24, 24, 24, 24), {2: "x"}, current=(2, 3)) == (0, 3)

    def test_current_too_small_after_min_memory_raised_is_dropped(self) -> None:
        assert assign_gpus(request(count=1, minMemory="16Gi"), gpus(8, 24), {}, current=(0,)) == (1,)

    def test_not_enough_free(self) -> None:
        why = blocked(assign_gpus(request(count=2, minMemory="16Gi"), gpus(24, 24, 8), {0: "x"}))
        assert why.reason == "InsufficientGPUs"
        assert "needs 2" in why.message and "16Gi" in why.message and "in use by x" in why.message

    def test_not_enough_with_that_much_memory(self) -> None:
        why = blocked(assign_gpus(request(count=3, minMemory="16Gi"), gpus(24, 24, 8), {}))
        assert why.reason == "InsufficientGPUMemory"
        assert "2 of this host's 3 have that much" in why.message and "minMemory" in why.message

    def test_more_than_the_host_has_is_a_missing_capability_not_a_wait(self) -> None:
        why = blocked(assign_gpus(request(count=4), gpus(24, 24), {}))
        assert why.reason == "NoCompatibleGPU" and "this host has 2" in why.message


# -- 4. health bookkeeping ------------------------------------------------------------------------------------------


def check(**fields: Any) -> HealthCheck:
    return HealthCheck.model_validate({"http": {}, **fields})


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


class TestProbeDue:
    def test_initial_delay(self) -> None:
        c = check(initialDelaySeconds=10)
        assert not probe_due(c, None, 100, T0, at(9.9))
        assert probe_due(c, None, 100, T0, at(10))

    def test_first_probe_without_delay(self) -> None:
        assert probe_due(check(), None, 100, T0, T0)

    def test_period_once_ready(self) -> None:
        state = HealthState(pid=100, ready=True, ever_ready=True, last_probe_at=at(20))
        c = check(periodSeconds=5)
        assert not probe_due(c, state, 100, T0, at(24.9))
        assert probe_due(c, state, 100, T0, at(25))

    def test_state_without_a_probe_is_due(self) -> None:
        assert probe_due(check(), HealthState(pid=100), 100, T0, T0)

    def test_new_pid_resets(self) -> None:
        state = HealthState(pid=100, ready=True, ever_ready=True, last_probe_at=at(20))
        assert probe_due(check(periodSeconds=60), state, 200, T0, at(21))

    def test_new_pid_still_waits_initial_delay(self) -> None:
        state = HealthState(pid=100, last_probe_at=at(20))
        assert not probe_due(check(initialDelaySeconds=5), state, 200, at(21), at(22))


class TestNextProbeIn:
    def test_no_state_waits_initial_delay(self) -> None:
        assert next_probe_in(check(initialDelaySeconds=10), None, 1, T0, at(4)) == 6

    def test_due_now_is_zero_never_negative(self) -> None:
        assert next_probe_in(check(initialDelaySeconds=1), None, 1, T0, at(100)) == 0.0

    def test_after_a_probe_waits_a_period_once_ready(self) -> None:
        state = HealthState(pid=1, ready=True, ever_ready=True, last_probe_at=at(20))
        assert next_probe_in(check(periodSeconds=5), state, state.pid, T0, at(22)) == 3

    def test_initial_delay_wins_when_later(self) -> None:
        state = HealthState(pid=1, last_probe_at=at(1))
        assert next_probe_in(check(periodSeconds=5, initialDelaySeconds=30), state, 1, T0, at(10)) == 20

    def test_state_of_an_earlier_process_does_not_delay_the_first_probe(self) -> None:
        # the previous process was healthy and was probed just before it died
        state = HealthState(pid=100, ready=True, ever_ready=True, last_probe_at=at(20))
        c = check(periodSeconds=30)
        started, now = at(21), at(21)  # the new process (pid 200) starts a second later
        assert probe_due(c, state, 200, started, now)
        assert next_probe_in(c, state, 200, started, now) == 0.0


class TestNoteProbe:
    def test_success_sets_ready_and_ever_ready_and_resets_failures(self) -> None:
        state = HealthState(pid=7, consecutive_failures=2)
        after = note_probe(state, 7, True, "200 OK", at(5))
        assert (after.pid, after.ready, after.ever_ready, after.consecutive_failures) == (7, True, True, 0)
        assert after.last_probe_at == at(5) and after.message == "200 OK"

    def test_failure_increments_and_keeps_ever_ready(self) -> None:
        state = HealthState(pid=7, ready=True, ever_ready=True, consecutive_failures=1)
        after = note_probe(state, 7, False, "connection refused", at(5))
        assert (after.ready, after.ever_ready, after.consecutive_failures) == (False, True, 2)
        assert after.last_probe_at == at(5) and after.message == "connection refused"

    def test_first_probe_without_state(self) -> None:
        after = note_probe(None, 7, False, "refused", T0)
        assert (after.pid, after.ready, after.ever_ready, after.consecutive_failures) == (7, False, False, 1)

    def test_new_pid_starts_afresh(self) -> None:
        old = HealthState(pid=7, ready=True, ever_ready=True, consecutive_failures=5, last_probe_at=T0)
        after = note_probe(old, 8, False, "refused", at(1))
        assert (after.pid, after.ever_ready, after.consecutive_failures) == (8, False, 1)

    def test_does_not_mutate_input(self) -> None:
        state = HealthState(pid=7)
        note_probe(state, 7, False, "x", T0)
        assert state.consecutive_failures == 0 and state.last_probe_at is None


class TestUnhealthyCause:
    def test_threshold_after_ever_ready(self) -> None:
        c = check(failureThreshold=3)
        below = HealthState(pid=1, ever_ready=True, consecutive_failures=2, message="timed out")
        reached = below.model_copy(update={"consecutive_failures": 3})
        assert unhealthy_cause(c, below, 1, T0, at(10)) is None
        cause = unhealthy_cause(c, reached, 1, T0, at(10))
        assert cause is not None and cause[0] == "Unhealthy" and "3 checks failed" in cause[1] and "timed out" in cause[1]

    def test_threshold_not_applied_before_first_success(self) -> None:
        state = HealthState(pid=1, consecutive_failures=50)
        assert unhealthy_cause(check(failureThreshold=3, startupSeconds=300), state, 1, T0, at(10)) is None

    def test_startup_budget_before_first_success(self) -> None:
        c = check(startupSeconds=60)
        state = HealthState(pid=1, consecutive_failures=4, message="refused")
        assert unhealthy_cause(c, state, 1, T0, at(59.9)) is None
        cause = unhealthy_cause(c, state, 1, T0, at(60))
        assert cause is not None and cause[0] == "StartupTimeout"
        assert "startup budget of 60s" in cause[1] and "refused" in cause[1]

    def test_startup_budget_applies_without_any_state(self) -> None:
        assert unhealthy_cause(check(startupSeconds=60), None, 1, T0, at(61)) is not None

    def test_startup_budget_not_applied_after_first_success(self) -> None:
        state = HealthState(pid=1, ready=True, ever_ready=True)
        assert unhealthy_cause(check(startupSeconds=60), state, 1, T0, at(10_000)) is None

    def test_state_of_another_pid_is_ignored(self) -> None:
        old = HealthState(pid=1, ever_ready=True, consecutive_failures=10)
        assert unhealthy_cause(check(failureThreshold=3, startupSeconds=60), old, 2, at(100), at(110)) is None


# -- 5. preflight ---------------------------------------------------------------------------------------------------


def model(fmt: str = "gguf") -> Model:
    return Model.model_validate({"apiVersion": API_VERSION, "kind": "Model", "metadata": {"name": "tiny"},
                                 "spec": {"source": "models/tiny.gguf", "format": fmt}})


def present(size: int | None = 4 * GiB, magic: bytes = b"GGUF") -> ModelPresence:
    return ModelPresence(Path("/models/tiny.gguf"), size, magic)


class TestPreflight:
    def test_process_needs_nothing(self) -> None:
        assert preflight(spec(command=["x"]), None, None) is None

    def test_model_not_in_desired_state(self) -> None:
        why = preflight(llama(), None, None)
        assert why is not None and why.reason == "ModelNotFound" and "Model/tiny" in why.message

    def test_model_file_missing(self) -> None:
        why = preflight(llama(), model(), present(size=None, magic=b""))
        assert why is not None and why.reason == "ModelMissing" and "/models/tiny.gguf" in why.message

    def test_llama_cpp_needs_gguf_magic(self) -> None:
        why = preflight(llama(), model(), present(magic=b"PK\x03\x04"))
        assert why is not None and why.reason == "InvalidModel" and "not a GGUF" in why.message

    def test_llama_cpp_rejects_safetensors_format(self) -> None:
        why = preflight(llama(), model("safetensors"), present(magic=b"GGUF"))
        assert why is not None and why.reason == "InvalidModel"

    def test_vllm_does_not_need_gguf(self) -> None:
        assert preflight(vllm(), model("safetensors"), present(magic=b"")) is None

    def test_memory_limit_below_model_size(self) -> None:
        why = preflight(llama(resources={"memory": "2Gi"}), model(), present(size=4 * GiB))
        assert why is not None and why.reason == "MemoryBelowModelSize"
        assert "2Gi" in why.message and "4Gi" in why.message

    def test_memory_limit_equal_to_size_fits(self) -> None:
        assert preflight(llama(resources={"memory": "4Gi"}), model(), present(size=4 * GiB)) is None

    def test_fitting_gguf(self) -> None:
        assert preflight(llama(resources={"memory": "8Gi"}), model(), present()) is None
        assert preflight(llama(), model(), present()) is None


# -- 6. render_launch -----------------------------------------------------------------------------------------------


def launch(workload: WorkloadSpec, gpu_ids: tuple[int, ...] = ()):  # noqa: ANN201
    return render_launch(workload, ("srv",), ("--flag",), "/work", "/usr/bin/srv", gpu_ids)


class TestRenderLaunch:
    def test_no_gpus_means_empty_cuda_visible_devices(self) -> None:
        rendered_launch = launch(spec(command=["srv"], env={"A": "1"}))
        assert rendered_launch.env == {"A": "1"}, "the spec's env only: the driver adds CUDA_VISIBLE_DEVICES from gpus"
        assert rendered_launch.gpus == ()

    def test_exactly_the_assigned_gpus(self) -> None:
        rendered_launch = launch(vllm(resources={"gpus": {"count": 2}}), (1, 3))
        assert rendered_launch.gpus == (1, 3)

    def test_listen_with_port(self) -> None:
        assert launch(llama(host="0.0.0.0")).listen == ("0.0.0.0", 8080)
        assert launch(spec(command=["srv"])).listen is None

    def test_carries_engine_limits_and_argv(self) -> None:
        rendered_launch = launch(llama(resources={"memory": "1Gi", "cpus": 1.5}))
        assert rendered_launch.engine == "llama.cpp"
        assert rendered_launch.memory_limit == GiB and rendered_launch.cpus == 1.5
        assert rendered_launch.argv == ("srv", "--flag")

    def test_changed_fields_names_gpus(self) -> None:
        workload = vllm()
        changed = launch(workload, (0,)).changed_fields(launch(workload, (1,)))
        assert "the GPUs assigned" in changed
        assert launch(workload, (0,)).digest != launch(workload, (1,)).digest

    def test_gpu_reassignment_names_only_the_gpus(self) -> None:
        workload = vllm()
        assert launch(workload, (0,)).changed_fields(launch(workload, (1,))) == ["the GPUs assigned"]

    def test_changed_fields_names_cpus(self) -> None:
        before = launch(spec(command=["srv"], resources={"cpus": 1}))
        after = launch(spec(command=["srv"], resources={"cpus": 2}))
        assert after.changed_fields(before) == ["spec.resources.cpus"]

    def test_same_launch_changes_nothing(self) -> None:
        assert launch(llama(), (0,)).changed_fields(launch(llama(), (0,))) == []


# -- 7. Cgroups on a root that holds none ---------------------------------------------------------------------------


def _v1_paths() -> dict[str, str]:
    """controller -> its cgroup path, from this process's /proc/self/cgroup (v1 lines only)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return {}
    found: dict[str, str] = {}
    for line in lines:
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(","):
            if controller:
                found[controller] = f"{controllers}/{path.lstrip('/')}"
    return found


class TestCgroups:
    def test_empty_root_leaves_both_controllers_unavailable_with_a_reason(self, tmp_path: Path) -> None:
        cgroups = Cgroups("owner", root=tmp_path)
        assert set(cgroups.unavailable) == {"memory", "cpu"}
        for controller, why in cgroups.unavailable.items():
            assert why
            if controller in _v1_paths():
                assert str(tmp_path) in why and "not writable" in why
        assert list(tmp_path.iterdir()) == []  # discovery creates nothing

    def test_nothing_to_release_or_read_on_an_empty_root(self, tmp_path: Path) -> None:
        cgroups = Cgroups("owner", root=tmp_path)
        cgroups.release({})
        assert cgroups.oom_killed(None) is False and cgroups.oom_killed(str(tmp_path / "absent")) is False
        assert list(tmp_path.iterdir()) == []

    def test_a_writable_controller_path_under_the_root_is_available(self, tmp_path: Path) -> None:
        paths = _v1_paths()
        if "memory" not in paths:
            pytest.skip("no cgroup v1 memory controller in /proc/self/cgroup")
        (tmp_path / paths["memory"]).mkdir(parents=True)
        if not os.access(tmp_path / paths["memory"], os.W_OK):
            pytest.skip("tmp_path is not writable")
        cgroups = Cgroups("owner", root=tmp_path)
        assert "memory" not in cgroups.unavailable
        cgroups.release({})  # nothing was created, nothing to remove
        assert (tmp_path / paths["memory"]).is_dir()


def test_an_http_or_tcp_check_without_any_port_is_rejected_at_load() -> None:
    with pytest.raises(ValidationError, match="needs a port: set spec.port or the check's own port"):
        spec(command=["srv"], health={"http": {"path": "/"}})
    assert spec(command=["srv"], health={"tcp": {"port": 9000}}).health is not None


class TestSharedGpus:
    """A GPU is shared only between workloads that both ask to, and only while their memory fits it."""

    def test_a_shareable_request_joins_a_sharer_while_memory_fits(self) -> None:
        shared = {0: (("Workload/a", 30 * GiB),)}
        assert assign_gpus(request(count=1, minMemory="40Gi", shareable=True), gpus(80), {}, shared=shared) == (0,)

    def test_a_shareable_request_that_would_overfill_the_gpu_waits(self) -> None:
        shared = {0: (("Workload/a", 50 * GiB),)}
        why = blocked(assign_gpus(request(count=1, minMemory="40Gi", shareable=True), gpus(80), {}, shared=shared))
        assert why.reason == "InsufficientGPUs" and "Workload/a (sharing it, 50Gi of 80Gi in use)" in why.message

    def test_an_exclusive_request_never_joins_sharers(self) -> None:
        shared = {0: (("Workload/a", 1 * GiB),)}
        assert blocked(assign_gpus(request(count=1), gpus(80), {}, shared=shared)).reason == "InsufficientGPUs"
        assert assign_gpus(request(count=1), gpus(80, 80), {}, shared=shared) == (1,)

    def test_a_shareable_request_never_joins_an_exclusive_holder(self) -> None:
        why = blocked(assign_gpus(request(indices=[0], minMemory="1Gi", shareable=True), gpus(80), {0: "Workload/x"}))
        assert why.reason == "GPUInUse"

    def test_sharing_needs_the_memory_each_sharer_uses(self) -> None:
        with pytest.raises(ValueError, match="shareable GPU request needs minMemory"):
            request(count=1, shareable=True)
