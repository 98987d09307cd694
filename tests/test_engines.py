"""Native AI engines end to end: a real llama.cpp server on a generated model, the vLLM stand-in on
(fake) GPUs, health checks, and every way a start is refused before it happens."""

from __future__ import annotations

import json
import os
import signal
import socket
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from tests.conftest import PYTHON, Workspace, wait_for, workload_yaml
from tests.tiny_gguf import write_tiny_llama

PROGRAMS = Path(__file__).parent / "programs"
ENGINES_POLICY = (
    "apiVersion: localaistack.dev/v1alpha1\nkind: Policy\nmetadata: {name: test-host}\n"
    f"spec:\n  native:\n    trustedEngines: [llama.cpp, vllm]\n    trustedExecutables:\n      - executable: {PYTHON}\n"
)


def _ended(pid: int) -> bool:
    """Gone or a zombie (a process mid-exit no longer shows its environment, so it is not 'owned' before this)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def document(kind: str, name: str, spec: dict[str, Any]) -> str:
    return yaml.safe_dump({"apiVersion": "localaistack.dev/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec},
                          sort_keys=False)


def engine_env(gpus: list[dict[str, Any]] | None, tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ, PATH=f"{PROGRAMS}:{os.environ['PATH']}")
    env.pop("RECONCILER_FAKE_GPUS", None)
    if gpus is not None:
        inventory = tmp_path / "gpus.json"
        inventory.write_text(json.dumps(gpus))
        env["RECONCILER_FAKE_GPUS"] = str(inventory)
    return env


@pytest.fixture
def engines(workspace: Workspace) -> Workspace:
    workspace.write("policy.yaml", ENGINES_POLICY)
    return workspace


def test_llama_cpp_serves_a_real_model_end_to_end(engines: Workspace, tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    write_tiny_llama(engines.desired / "models" / "tiny.gguf")
    port = free_port()
    spec = {"engine": "llama.cpp", "model": "tiny", "port": port, "llamaCpp": {"contextSize": 128},
            "health": {"http": {"path": "/v1/models"}, "periodSeconds": 0.2},
            "restart": {"backoff": {"initialSeconds": 0.2}}}
    engines.write("chat.yaml", document("Model", "tiny", {"source": "models/tiny.gguf"}) + "---\n" + document("Workload", "chat", spec))
    engines.start_daemon(env=engine_env(None, tmp_path))
    ready = wait_for(lambda: (s := engines.resource_status("chat.yaml", "chat")) and s["phase"] == "Running" and s, timeout=60,
                     what="the llama.cpp server to be healthy")
    assert ready["endpoints"] == [f"http://127.0.0.1:{port}/v1"]
    assert ready["command"][1:5] == ["-P", "-s", "-m", "llama_cpp.server"] and "--n_ctx" in ready["command"]
    assert ready["gpus"] == []
    assert psutil.Process(ready["pid"]).environ()["CUDA_VISIBLE_DEVICES"] == "", "no GPU unless requested"
    body = json.dumps({"prompt": "the", "max_tokens": 4}).encode()
    request = urllib.request.Request(f"{ready['endpoints'][0]}/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        completion = json.load(answer)
    assert completion["usage"]["completion_tokens"] > 0

    spec["llamaCpp"]["contextSize"] = 256
    engines.write("chat.yaml", document("Model", "tiny", {"source": "models/tiny.gguf"}) + "---\n" + document("Workload", "chat", spec))
    second = wait_for(lambda: (s := engines.resource_status("chat.yaml", "chat")) and s.get("pid") not in (None, ready["pid"])
                      and s["phase"] == "Running" and s, timeout=60, what="recreated with the new context size")
    assert second["command"][second["command"].index("--n_ctx") + 1] == "256"
    decisions = [r for r in engines.evidence("chat.yaml") if r["event"] == "decision" and r["resource"] == "Workload/chat"]
    assert (decisions[-1]["action"], decisions[-1]["cause"]) == ("recreate", "spec.llamaCpp.contextSize changed")

    os.kill(second["pid"], signal.SIGKILL)
    third = wait_for(lambda: (s := engines.resource_status("chat.yaml", "chat")) and s.get("pid") not in (None, second["pid"])
                     and s["phase"] == "Running" and s, timeout=60, what="restarted after kill -9")
    assert third["restartCount"] == 1

    engines.write("chat.yaml", document("Model", "tiny", {"source": "models/tiny.gguf"}))
    wait_for(lambda: not engines.owned_processes("chat") and _ended(third["pid"]), timeout=30, what="the server to be pruned")


def test_vllm_without_a_gpu_is_unavailable_and_never_started(engines: Workspace, tmp_path: Path) -> None:
    (engines.desired / "weights").mkdir()
    engines.write("big.yaml", document("Model", "weights", {"source": "weights", "format": "safetensors"}) + "---\n"
                  + document("Workload", "big", {"engine": "vllm", "model": "weights", "port": free_port(), "resources": {"gpus": {"count": 1}}}))
    result = engines.cli("apply", "--wait", env=engine_env(None, tmp_path))
    assert result.returncode == 1
    status = engines.resource_status("big.yaml", "big")
    assert (status["phase"], status["placement"]) == ("Blocked", "unavailable")
    ready = engines.condition("big.yaml", "big")
    assert ready["reason"] == "NoCompatibleGPU" and "NVML" in ready["message"]
    assert not engines.owned_processes()


def test_vllm_gets_exclusive_gpus_from_the_inventory(engines: Workspace, tmp_path: Path) -> None:
    gpus = [{"index": 0, "name": "Fake H100", "memoryTotal": 80 * 2**30}, {"index": 1, "name": "Fake L4", "memoryTotal": 24 * 2**30}]
    env = engine_env(gpus, tmp_path)
    (engines.desired / "weights").mkdir()
    docs = [document("Model", "weights", {"source": "weights", "format": "safetensors"})]
    for name, request in (("large", {"count": 1, "minMemory": "40Gi"}), ("small", {"count": 1}), ("third", {"count": 1})):
        docs.append(document("Workload", name, {"engine": "vllm", "model": "weights", "port": free_port(),
                                                 "vllm": {"gpuMemoryUtilization": 0.8}, "resources": {"gpus": request},
                                                 "health": {"http": {"path": "/health"}, "periodSeconds": 0.2}}))
    engines.write("vllm.yaml", "---\n".join(docs))
    engines.cli("apply", "--wait", "--timeout", "30", env=env)
    large = engines.resource_status("vllm.yaml", "large")
    assert (large["phase"], large["gpus"]) == ("Running", [0]), "only GPU 0 has 40 GiB"
    # small and third are started at once and ask for the same: whichever is admitted first gets GPU 1
    (small,) = [status for name in ("small", "third") if (status := engines.resource_status("vllm.yaml", name))["phase"] == "Running"]
    assert small["gpus"] == [1] and psutil.Process(small["pid"]).environ()["CUDA_VISIBLE_DEVICES"] == "1"
    assert "--gpu-memory-utilization" in large["command"] and large["command"][1] == "serve"
    third = engines.condition("vllm.yaml", ({"small", "third"} - {small["name"]}).pop())
    assert third["reason"] == "InsufficientGPUs"
    started = json.loads((engines.state / "logs" / "large.log").read_text().splitlines()[0])
    assert started["cuda_visible_devices"] == "0" and started["gpu_memory_utilization"] == 0.8


def test_a_gpu_is_released_when_its_workload_has_ended_for_good(engines: Workspace, tmp_path: Path) -> None:
    env = engine_env([{"index": 0, "name": "Fake H100", "memoryTotal": 80 * 2**30}], tmp_path)
    engines.write("done.yaml", workload_yaml("done", "print('finished')", resources={"gpus": {"count": 1}},
                                             restart={"policy": "Never"}))
    engines.cli("apply", env=env)
    wait_for(lambda: not engines.owned_processes("done"), 20, what="it to finish")
    engines.cli("apply", env=env)  # sees it ended: Never restarts it
    engines.write("next.yaml", workload_yaml("next", resources={"gpus": {"count": 1}}))
    engines.cli("apply", env=env)
    after = engines.resource_status("next.yaml", "next")
    assert (after["phase"], after["gpus"]) == ("Running", [0]), engines.condition("next.yaml", "next")
    engines.cli("apply", env=env)
    assert engines.resource_status("done.yaml", "done")["phase"] != "Blocked"  # ended for good: needs no GPU


HEALTH_SERVER = (
    "import http.server, os, sys\n"
    "port, sick = int(sys.argv[1]), sys.argv[2]\n"
    "class Handler(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(500 if os.path.exists(sick) else 200); self.end_headers()\n"
    "    def log_message(self, *args): pass\n"
    "http.server.HTTPServer(('127.0.0.1', port), Handler).serve_forever()\n"
)


def test_an_unhealthy_process_is_stopped_and_restarted_with_back_off(workspace: Workspace, tmp_path: Path) -> None:
    port, sick = free_port(), tmp_path / "sick"
    health = {"http": {"path": "/health"}, "periodSeconds": 0.1, "failureThreshold": 2}
    workspace.write("web.yaml", workload_yaml("web", code=HEALTH_SERVER, args=(str(port), str(sick)), port=port, health=health,
                                              restart={"backoff": {"initialSeconds": 0.2}}))
    workspace.start_daemon()
    first = wait_for(lambda: (s := workspace.resource_status("web.yaml", "web")) and s["phase"] == "Running" and s, what="healthy")
    assert workspace.condition("web.yaml", "web")["reason"] == "Healthy"
    assert first["endpoints"] == [f"http://127.0.0.1:{port}"]
    sick.write_text("x")
    wait_for(lambda: any(r.get("action") == "stop" for r in workspace.evidence("web.yaml")), what="the unhealthy stop")
    stop = next(r for r in workspace.evidence("web.yaml") if r.get("action") == "stop" and r["event"] == "decision")
    assert stop["cause"].startswith("unhealthy: 2 checks failed in a row") and "500, expected 200" in stop["cause"]
    sick.unlink()
    again = wait_for(lambda: (s := workspace.resource_status("web.yaml", "web")) and s.get("pid") not in (None, first["pid"])
                     and s["phase"] == "Running" and s, timeout=20, what="restarted and healthy")
    assert again["restartCount"] == 1


def test_a_start_that_never_becomes_healthy_is_stopped_after_its_startup_budget(workspace: Workspace) -> None:
    port = free_port()  # nothing listens there
    health = {"tcp": {}, "periodSeconds": 0.1, "startupSeconds": 0.5}
    workspace.write("slow.yaml", workload_yaml("slow", port=port, health=health, restart={"policy": "Never"}))
    workspace.start_daemon()
    wait_for(lambda: any(r.get("action") == "stop" for r in workspace.evidence("slow.yaml")), what="the startup-budget stop")
    stop = next(r for r in workspace.evidence("slow.yaml") if r.get("action") == "stop")
    assert stop["cause"].startswith("not healthy within its startup budget of 0.5s")
    wait_for(lambda: (workspace.resource_status("slow.yaml", "slow") or {}).get("phase") in ("Failed", "Exited"),
             what="stopped for good (restart policy Never)")


def test_starts_refused_before_they_happen(engines: Workspace, tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    write_tiny_llama(engines.desired / "models" / "tiny.gguf")
    (engines.desired / "models" / "fake.gguf").write_text("not a model")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    busy_port = taken.getsockname()[1]

    def llama(name: str, model: str, **extra: Any) -> str:
        return document("Workload", name, {"engine": "llama.cpp", "model": model, "port": extra.pop("port", None) or free_port(), **extra})

    docs = [
        document("Model", "tiny", {"source": "models/tiny.gguf"}),
        document("Model", "fake", {"source": "models/fake.gguf"}),
        document("Model", "gone", {"source": "models/gone.gguf"}),
        llama("no-model", "nonexistent"),
        llama("missing-file", "gone"),
        llama("not-gguf", "fake"),
        llama("too-little-memory", "tiny", resources={"memory": "100Ki"}),
        llama("port-taken", "tiny", port=busy_port),
        llama("too-many-gpus", "tiny", resources={"gpus": {"count": 2}}),
    ]
    engines.write("bad.yaml", "---\n".join(docs))
    try:
        engines.cli("apply", "--wait", "--timeout", "30", env=engine_env([{"index": 0, "name": "Fake", "memoryTotal": 2**34}], tmp_path))
    finally:
        taken.close()
    reasons = {name: engines.condition("bad.yaml", name)["reason"] for name in
               ("no-model", "missing-file", "not-gguf", "too-little-memory", "port-taken", "too-many-gpus")}
    assert reasons == {"no-model": "ModelNotFound", "missing-file": "ModelMissing", "not-gguf": "InvalidModel",
                       "too-little-memory": "MemoryBelowModelSize", "port-taken": "PortInUse", "too-many-gpus": "NoCompatibleGPU"}
    assert f"127.0.0.1:{busy_port} is already in use" in engines.condition("bad.yaml", "port-taken")["message"]
    assert not engines.owned_processes(), "nothing is left half-started"


def test_memory_limit_binds_the_workload_and_an_oom_kill_is_named(workspace: Workspace) -> None:
    hog = "import time\nprint('up', flush=True)\ntime.sleep(0.5)\nheap = bytearray(768 * 2**20)\ntime.sleep(60)\n"
    workspace.write("hog.yaml", workload_yaml("hog", code=hog, resources={"memory": "128Mi", "cpus": 0.5},
                                              restart={"policy": "Never"}))
    workspace.start_daemon()
    running = wait_for(lambda: (s := workspace.resource_status("hog.yaml", "hog")) and s.get("enforcement") and s,
                       what="the hog running with its limits")
    enforcement = running["enforcement"]
    # every host names each limit's mechanism and the privileges; a delegated cgroup v2 also holds the whole tree
    assert {"memory", "cpu", "privileges"} <= set(enforcement) <= {"memory", "cpu", "pids", "privileges", "tree"}
    ended = wait_for(lambda: (s := workspace.resource_status("hog.yaml", "hog")) and s["phase"] == "Failed" and s,
                     timeout=20, what="the hog to be stopped by its limit")
    if enforcement["memory"].startswith("cgroup"):
        assert workspace.condition("hog.yaml", "hog")["reason"] == "OOMKilled"
        assert ended["lastExit"]["oomKilled"] is True and ended["lastExit"]["signal"] == signal.SIGKILL
    else:  # a host that lets us create no cgroup: the per-process fallback, and the status says so
        assert enforcement["memory"].startswith("rlimit RLIMIT_DATA")
        assert ended["lastExit"]["code"] == 1
    assert enforcement["cpu"].startswith(("cgroup v2 cpu.max 0.5 CPUs", "cgroup v1 cpu quota 0.5 CPUs", "cpu affinity [")), \
        enforcement["cpu"]


GRACEFUL_HEALTH_SERVER = HEALTH_SERVER.replace(
    "import http.server, os, sys\n",
    "import http.server, os, signal, sys\nsignal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n",
)


def test_on_failure_restarts_a_server_stopped_for_failing_its_checks_even_if_it_exits_0(workspace: Workspace, tmp_path: Path) -> None:
    port, sick = free_port(), tmp_path / "sick"
    health = {"http": {"path": "/health"}, "periodSeconds": 0.1, "failureThreshold": 2}
    workspace.write("web.yaml", workload_yaml("web", code=GRACEFUL_HEALTH_SERVER, args=(str(port), str(sick)), port=port,
                                              health=health, restart={"policy": "OnFailure", "backoff": {"initialSeconds": 0.2}}))
    workspace.start_daemon()
    first = wait_for(lambda: (s := workspace.resource_status("web.yaml", "web")) and s["phase"] == "Running" and s, what="healthy")
    sick.write_text("x")
    stopped = wait_for(lambda: (s := workspace.resource_status("web.yaml", "web")) and s.get("lastExit") and s, what="the stop")
    assert stopped["lastExit"]["code"] == 0, "a graceful server exits 0 on SIGTERM"
    sick.unlink()
    again = wait_for(lambda: (s := workspace.resource_status("web.yaml", "web")) and s.get("pid") not in (None, first["pid"])
                     and s["phase"] == "Running" and s, timeout=20, what="restarted despite exit code 0")
    assert again["restartCount"] == 1


def test_concurrent_workers_never_put_two_servers_on_one_gpu(engines: Workspace, tmp_path: Path) -> None:
    env = engine_env([{"index": 0, "name": "Fake A", "memoryTotal": 2**34}, {"index": 1, "name": "Fake B", "memoryTotal": 2**34}], tmp_path)
    (engines.desired / "weights").mkdir()
    docs = [document("Model", "weights", {"source": "weights", "format": "safetensors"})]
    docs += [document("Workload", f"w{n}", {"engine": "vllm", "model": "weights", "port": free_port(),
                                            "resources": {"gpus": {"count": 1}}}) for n in range(6)]
    engines.write("many.yaml", "---\n".join(docs))
    engines.start_daemon(env=env)
    wait_for(lambda: len(engines.owned_processes()) == 2 and all(
        (engines.resource_status("many.yaml", f"w{n}") or {}).get("phase") for n in range(6)), what="two servers placed")
    holders: dict[int, list[str]] = {}
    for process in engines.owned_processes():
        holders.setdefault(int(process.environ()["CUDA_VISIBLE_DEVICES"]), []).append(process.environ()["LOCALAISTACK_WORKLOAD"])
    assert sorted(holders) == [0, 1] and all(len(names) == 1 for names in holders.values()), holders
    blocked = [n for n in range(6) if engines.condition("many.yaml", f"w{n}")["reason"] == "InsufficientGPUs"]
    assert len(blocked) == 4
