"""Engines as their authors run them (pure): one chatFormat vocabulary, vLLM's served name, GPU share, tokenizer,
parallelism and startup budget, llama-server's alias, web UI and batch threads, Python engines' import path.

Upstream behaviour these tests hold the renderer to (cited where it was read):
- llama-server, llama.cpp common/arg.cpp: `--alias`, `--threads-batch`, `--no-webui` (env LLAMA_ARG_NO_WEBUI),
  `--api-key KEY` (env LLAMA_API_KEY), `--api-key-file FNAME`, `--metrics`; common_params_parse_ex turns "_" into
  "-" in arguments starting with "--" and then looks the argument up exactly.
- llama-cpp-python 0.3.x, llama_cpp/server/settings.py: `--model_alias`, `--n_threads_batch`.
- vLLM, `vllm serve --help` (`--served-model-name`, `--tokenizer`, `--gpu-memory-utilization`) and
  docs/features/quantization/gguf.md ("We recommend
  using the tokenizer from base model", `vllm serve ./x.gguf --tokenizer ...`, the vllm-gguf-plugin note).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from reconciler.api.chat_formats import CHAT_FORMATS, LLAMA_CPP_PYTHON_FORMATS, LLAMA_SERVER_TEMPLATES
from reconciler.api.kinds import Model
from reconciler.api.meta import API_VERSION
from reconciler.diff.engines import VLLM_STARTUP_SECONDS, Blocked, EngineCommand, engine_check, engine_command
from reconciler.diff.gpus import granted_share
from reconciler.diff.preflight import preflight
from reconciler.observe.gpus import Gpu, GpuInventory
from reconciler.observe.host import EngineFacts, ModelPresence
from tests.test_engine_rendering import llama, rendered, vllm

GiB = 2**30
SERVER = EngineFacts(llama_server="/opt/llama-server")
PYTHON = EngineFacts(llama_cpp_python="/venv/bin/python")
VLLM = EngineFacts(vllm="/venv/bin/vllm")


def flag(result: EngineCommand | Blocked, name: str) -> str | None:
    args = rendered(result).args
    return args[args.index(name) + 1] if name in args else None


# -- 27.3 one chatFormat vocabulary ----------------------------------------------------------------------------------


def test_one_chat_format_name_becomes_each_servers_own() -> None:
    options = {"chatFormat": "llama3"}
    assert flag(engine_command(llama(llamaCpp=options), "/m", SERVER), "--chat-template") == "llama3"
    assert flag(engine_command(llama(llamaCpp=options), "/m", PYTHON), "--chat_format") == "llama-3"


def test_a_name_outside_the_vocabulary_is_refused_naming_what_is_accepted() -> None:
    with pytest.raises(ValidationError, match="'llama-3' is llama-cpp-python's spelling of 'llama3'") as refused:
        llama(llamaCpp={"chatFormat": "llama-3"})
    assert "Accepted: chatml, llama2" in str(refused.value) and "alpaca" in str(refused.value)
    with pytest.raises(ValidationError, match="'mistral-v9' is not a known chat format"):
        llama(llamaCpp={"chatFormat": "mistral-v9"})


@pytest.mark.parametrize(("name", "facts", "lacks"), [("alpaca", SERVER, "llama-server"), ("mistral-v7", PYTHON, "llama-cpp-python")])
def test_a_format_one_server_lacks_blocks_the_start_there_with_what_it_takes(name: str, facts: EngineFacts, lacks: str) -> None:
    why = engine_command(llama(llamaCpp={"chatFormat": name}), "/m", facts)
    assert isinstance(why, Blocked) and why.reason == "EngineOptionUnsupported"
    assert f"that {lacks} lacks; {lacks} takes: chatml" in why.message


def test_the_vocabulary_matches_what_the_installed_llama_cpp_python_registers() -> None:
    chat_format = pytest.importorskip("llama_cpp.llama_chat_format")
    registered = set(chat_format.LlamaChatCompletionHandlerRegistry()._chat_handlers)
    assert set(LLAMA_CPP_PYTHON_FORMATS) <= registered, set(LLAMA_CPP_PYTHON_FORMATS) - registered
    assert {python for _, python in CHAT_FORMATS.values() if python} <= registered
    assert len(set(LLAMA_SERVER_TEMPLATES)) == len(LLAMA_SERVER_TEMPLATES)


# -- 27.4 vLLM as it is served ---------------------------------------------------------------------------------------


def test_vllm_serves_the_model_under_the_models_name() -> None:
    assert flag(engine_command(vllm(), "/models/qwen", VLLM), "--served-model-name") == "tiny"


def test_a_shared_gpu_sizes_vllm_to_its_grant() -> None:
    inventory = GpuInventory((Gpu(0, "L4", "GPU-0", 24 * GiB, 24 * GiB),))
    shared = vllm(resources={"gpus": {"count": 1, "minMemory": "8Gi", "shareable": True}})
    share = granted_share(shared.resources.gpus, inventory, (0,))
    assert share == 0.33
    assert flag(engine_command(shared, "/m", VLLM, share), "--gpu-memory-utilization") == "0.33"
    assert granted_share(vllm().resources.gpus, inventory, (0,)) is None, "an exclusive GPU is the engine's to size"
    too_much = vllm(resources=shared.resources.model_dump(by_alias=True), vllm={"gpuMemoryUtilization": 0.9})
    why = engine_command(too_much, "/m", VLLM, share)
    assert isinstance(why, Blocked) and why.reason == "GPUShareExceeded" and "0.33" in why.message


def test_a_gguf_model_for_vllm_needs_the_base_models_tokenizer() -> None:
    model = Model.model_validate({"apiVersion": API_VERSION, "kind": "Model", "metadata": {"name": "tiny"},
                                  "spec": {"source": "chat.gguf", "format": "gguf"}})
    presence = ModelPresence("/m/chat.gguf", 1000, b"GGUF")
    why = preflight(vllm(), model, presence)
    assert why is not None and why.reason == "TokenizerRequired" and "vllm.tokenizer" in why.message
    with_tokenizer = vllm(vllm={"tokenizer": "/models/base"})
    assert preflight(with_tokenizer, model, presence) is None
    assert flag(engine_command(with_tokenizer, "/m/chat.gguf", VLLM), "--tokenizer") == "/models/base"


def test_tensor_parallelism_uses_every_gpu_assigned() -> None:
    with pytest.raises(ValidationError, match="fewer leaves GPUs reserved and idle"):
        vllm(vllm={"tensorParallelSize": 1}, resources={"gpus": {"count": 2}})
    assert flag(engine_command(vllm(resources={"gpus": {"count": 2}}), "/m", VLLM), "--tensor-parallel-size") == "2"
    assert flag(engine_command(vllm(), "/m", VLLM), "--tensor-parallel-size") is None


def test_vllm_gets_a_long_startup_budget_by_default() -> None:
    check = engine_check(vllm(), VLLM)
    assert check is not None and check.startup_seconds == VLLM_STARTUP_SECONDS >= 1200
    assert engine_check(llama(), SERVER).startup_seconds == 300  # type: ignore[union-attr]


# -- 27.5 what a supervisor sets on llama-server ---------------------------------------------------------------------


def test_llama_server_gets_the_models_name_no_web_ui_and_batch_threads() -> None:
    server = rendered(engine_command(llama(llamaCpp={"threads": 6}), "/m", SERVER))
    assert flag(server, "--alias") == "tiny" and flag(server, "--threads-batch") == "6"
    assert "--no-webui" in server.args and "--metrics" not in server.args
    assert "--no-webui" not in rendered(engine_command(llama(llamaCpp={"webUI": True}), "/m", SERVER)).args
    python = engine_command(llama(llamaCpp={"threads": 6}), "/m", PYTHON)
    assert flag(python, "--model_alias") == "tiny" and flag(python, "--n_threads_batch") == "6"


# -- 18.6 a Python engine never imports from its working directory ---------------------------------------------------


def test_llama_cpp_python_starts_with_a_safe_import_path() -> None:
    python = rendered(engine_command(llama(), "/m", PYTHON))
    assert python.command == ("/venv/bin/python", "-P", "-s", "-m", "llama_cpp.server")


def test_vllm_and_the_workers_it_spawns_never_import_from_the_working_directory(tmp_path: Path) -> None:
    """vllm's interpreter comes from its shebang and its workers start as `python -c`, which puts the working
    directory first on sys.path: the engine's environment keeps it off for all of them."""
    marker = tmp_path / "marker"
    (tmp_path / "planted.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n")
    worker = [sys.executable, "-c", "import planted"]
    plain = {"PATH": os.environ["PATH"]}
    subprocess.run(worker, cwd=tmp_path, env=plain, capture_output=True, check=True)
    assert marker.exists(), "the plant is importable from the working directory"
    marker.unlink()
    engine_env = dict(rendered(engine_command(vllm(), "/m", VLLM)).env)
    done = subprocess.run(worker, cwd=tmp_path, env=plain | engine_env, capture_output=True, text=True)
    assert done.returncode != 0 and "No module named 'planted'" in done.stderr and not marker.exists()


@pytest.mark.parametrize("field", ["tokenizer", "dtype", "quantization"])
def test_a_vllm_option_value_cannot_pose_as_another_option(field: str) -> None:
    with pytest.raises(ValidationError, match=f"vllm.{field}"):
        vllm(vllm={field: "--host=0.0.0.0"})
