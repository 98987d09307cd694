"""The engine fixtures work: the tiny GGUF model runs in llama.cpp, the vLLM stand-in serves."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.tiny_gguf import write_tiny_llama

VLLM = Path(__file__).parent / "programs" / "vllm"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def test_tiny_gguf_loads_and_completes(tmp_path: Path) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    model = write_tiny_llama(tmp_path / "tiny.gguf")
    assert model.read_bytes()[:4] == b"GGUF"

    llm = llama_cpp.Llama(model_path=str(model), n_ctx=128, verbose=False)
    out = llm("the", max_tokens=4)

    assert out["usage"]["completion_tokens"] > 0
    assert isinstance(out["choices"][0]["text"], str)


def test_vllm_stand_in_serves_with_a_gpu_and_refuses_without(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0"}
    proc = subprocess.Popen(
        [str(VLLM), "serve", "org/tiny", "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "128"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        def healthy() -> bool:
            assert proc.poll() is None, f"stand-in exited {proc.returncode}"
            return _status(f"http://127.0.0.1:{port}/health") == 200

        wait_for(healthy, 10, what="/health to answer 200")
        record = json.loads(proc.stdout.readline())  # printed and flushed before the port opens
        assert record["model"] == "org/tiny"
        assert record["port"] == port
        assert record["max_model_len"] == 128
        assert record["cuda_visible_devices"] == "0"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as response:
            assert json.load(response)["data"][0]["id"] == "org/tiny"
        assert _status(f"http://127.0.0.1:{port}/nowhere") == 404
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()

    no_gpu = {key: value for key, value in os.environ.items() if key != "CUDA_VISIBLE_DEVICES"}
    refused = subprocess.run(
        [str(VLLM), "serve", "org/tiny", "--port", str(port)],
        env=no_gpu,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert refused.returncode == 2
    assert "CUDA_VISIBLE_DEVICES" in refused.stderr
