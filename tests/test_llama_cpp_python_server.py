"""llama-cpp-python's real server as the reconciler runs it: checked without competing with generation, and
started with an import path that a planted working directory cannot enter."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest

from reconciler.api.kinds import Workload
from reconciler.diff.engines import engine_check
from reconciler.observe.host import EngineFacts
from reconciler.observe.probes import probe
from tests.conftest import PYTHON, Workspace, wait_for
from tests.test_engines import ENGINES_POLICY, document, engine_env, free_port
from tests.tiny_gguf import write_tiny_llama

pytest.importorskip("llama_cpp.server")
CONTEXT = 8192


def serve(workspace: Workspace, tmp_path: Path, **spec: Any) -> tuple[dict[str, Any], Workload]:
    workspace.write("policy.yaml", ENGINES_POLICY)
    write_tiny_llama(workspace.desired / "models" / "tiny.gguf")
    body = {"engine": "llama.cpp", "model": "tiny", "port": free_port(), **spec}
    text = document("Model", "tiny", {"source": "models/tiny.gguf"}) + "---\n" + document("Workload", "chat", body)
    workspace.write("chat.yaml", text)
    workspace.start_daemon(env=engine_env(None, tmp_path))
    ready = wait_for(lambda: (s := workspace.resource_status("chat.yaml", "chat")) and s["phase"] == "Running"
                     and (workspace.condition("chat.yaml", "chat") or {}).get("reason") == "Healthy" and s,
                     timeout=90, what="the llama-cpp-python server to be Ready")
    workload = Workload.model_validate({"apiVersion": "localaistack.dev/v1alpha1", "kind": "Workload",
                                        "metadata": {"name": "chat"}, "spec": body})
    return ready, workload


def stream(endpoint: str, max_tokens: int, chunks: list[dict[str, Any]]) -> None:
    with completion(endpoint, max_tokens, stream=True) as answer:
        for line in answer:
            if line.startswith(b"data: {"):
                chunks.append(json.loads(line[6:]))


def completion(endpoint: str, max_tokens: int, stream: bool) -> Any:
    # </s> (token 2) banned so that a reply runs its full length
    body = json.dumps({"prompt": "the", "max_tokens": max_tokens, "stream": stream, "logit_bias": {"2": -100}}).encode()
    request = urllib.request.Request(f"{endpoint}/completions", body, {"Content-Type": "application/json"})
    return urllib.request.urlopen(request, timeout=300)


def test_the_default_check_never_competes_with_a_long_streamed_reply(workspace: Workspace, tmp_path: Path) -> None:
    ready, workload = serve(workspace, tmp_path, llamaCpp={"contextSize": CONTEXT})
    check = engine_check(workload.spec, EngineFacts(llama_cpp_python=PYTHON))  # what the daemon probes with
    assert check is not None
    budget = check.timeout_seconds * check.failure_threshold  # failures in a row that stop the server
    endpoint, port = ready["endpoints"][0], workload.spec.port
    tokens, lasted = 128, 0.0
    while lasted <= budget and tokens < CONTEXT // 2:  # longer replies until one outlasts the failure budget
        tokens *= 2
        chunks: list[dict[str, Any]] = []
        reader = threading.Thread(target=stream, args=(endpoint, tokens, chunks))
        began = time.monotonic()
        reader.start()
        results = []
        while reader.is_alive():
            results.append(probe(check, workload.spec.host, port))
            time.sleep(0.2)
        reader.join()
        lasted = time.monotonic() - began
        assert chunks and chunks[-1]["choices"][0]["finish_reason"] == "length", f"a probe cut the stream after {lasted:.1f}s"
        assert len(chunks) >= tokens / 2, f"{len(chunks)} chunks of {tokens} tokens"
        assert all(result.ok for result in results), [r.message for r in results if not r.ok]
    assert lasted > budget, f"{tokens} tokens took {lasted:.1f}s, not past the {budget}s failure budget: too short to tell"
    after = workspace.resource_status("chat.yaml", "chat")
    assert after is not None and (after["pid"], after["restartCount"]) == (ready["pid"], 0), "stopped as unhealthy"
    assert (workspace.condition("chat.yaml", "chat") or {}).get("status") == "True"


PLANTED = "import pathlib, sys\npathlib.Path({marker!r}).write_text('planted module ran')\nsys.exit(3)\n"


def test_a_module_planted_in_the_working_directory_is_never_imported(workspace: Workspace, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    planted = workspace.desired / "planted" / "llama_cpp" / "server"
    planted.mkdir(parents=True)
    (planted.parent / "__init__.py").write_text("")
    (planted / "__init__.py").write_text("")
    (planted / "__main__.py").write_text(PLANTED.format(marker=str(marker)))
    ready, _ = serve(workspace, tmp_path, workingDir="planted")
    assert psutil.Process(ready["pid"]).cwd() == str(planted.parent.parent), "the server runs in the planted folder"
    with completion(ready["endpoints"][0], 4, stream=False) as answer:
        assert json.load(answer)["usage"]["completion_tokens"] > 0, "the real server answers"
    assert not marker.exists(), "python -m imported the llama_cpp planted in spec.workingDir"
    with urllib.request.urlopen(f"{ready['endpoints'][0]}/models", timeout=10) as answer:
        assert [model["id"] for model in json.load(answer)["data"]] == ["tiny"], "served under the Model's name"
