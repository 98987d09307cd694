"""Models on demand, end to end: real llama.cpp servers (llama-cpp-python) on tiny GGUF models behind the real gateway
and daemon, each committing a memory limit sized so that only one fits the policy's RAM budget at a time.

RAM, not a fake GPU, makes them take turns: the llama-cpp-python installed here is a CPU build, and a llama.cpp
workload with a GPU assigned on it is Blocked AccelerationUnavailable (never run on the CPU in its place)."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest

from reconciler.drive.process import NAME_VARIABLE
from tests.conftest import Workspace, wait_for
from tests.ports import stable_port
from tests.test_engines import document, engine_env
from tests.test_gateway import POLICY, TCP_CHECK, call, completion
from tests.tiny_gguf import write_tiny_llama

# Each on-demand server commits this share of the host's RAM: one fits the default budget (90 %, memoryReserve 0.1),
# two (120 %) do not. A cgroup, where one is available, holds the server to it: far above what a tiny model uses.
MEMORY_SHARE = 0.6


def on_demand_server(name: str, model: str, idle_seconds: float) -> str:
    memory = int(psutil.virtual_memory().total * MEMORY_SHARE)
    spec: dict[str, Any] = {"engine": "llama.cpp", "model": model, "port": stable_port(), "llamaCpp": {"contextSize": 256},
                            "health": {**TCP_CHECK, "periodSeconds": 0.2}, "resources": {"memory": memory},
                            "activation": {"mode": "OnDemand", "idleSeconds": idle_seconds}}
    return document("Workload", name, spec)


def build(space: Workspace, models: dict[str, float], tmp_path: Path, wait: float = 120,
          policy: str = POLICY) -> tuple[str, dict[str, str]]:
    """A gateway and one on-demand server per Model (name -> idleSeconds), only one of which fits in RAM; the daemon runs."""
    space.write("policy.yaml", policy)
    for name, idle in models.items():
        write_tiny_llama(space.desired / "models" / f"{name}.gguf", name=name)
        space.write(f"{name}.yaml", document("Model", name, {"source": f"models/{name}.gguf"}) + "---\n"
                    + on_demand_server(f"{name}-server", name, idle))
    port = stable_port()
    space.write("gateway.yaml", document("Workload", "gateway", {
        "engine": "gateway", "port": port, "args": ["--wait-seconds", str(wait)],
        "health": {"http": {"path": "/health"}, "periodSeconds": 0.2}}))
    env = engine_env(None, tmp_path)
    space.start_daemon(env=env)
    wait_for(lambda: (s := space.resource_status("gateway.yaml", "gateway")) and s["phase"] == "Running", timeout=60,
             what="the gateway")
    return f"http://127.0.0.1:{port}", env


def phase(space: Workspace, name: str) -> str | None:
    return (space.resource_status(f"{name.removesuffix('-server')}.yaml", name) or {}).get("phase")


def story(space: Workspace, name: str) -> list[tuple[str, str, str]]:
    """The evidence of one workload, for a failure's message."""
    return [(line["event"], line.get("action", ""), line.get("cause", "")) for line in space.evidence(f"{name}.yaml")]


def starts(space: Workspace, name: str) -> int:
    return sum(1 for line in space.evidence(f"{name.removesuffix('-server')}.yaml") if line["event"] == "action"
               and line["resource"] == f"Workload/{name}" and line["action"] in ("create", "recreate"))


def servers(space: Workspace) -> Counter[str]:
    """The workloads' processes now, by workload (a process that ended while being looked at is not counted)."""
    running: Counter[str] = Counter()
    for process in space.owned_processes():
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                running[process.environ().get(NAME_VARIABLE, "?")] += 1
        except psutil.Error:
            continue
    return running


@pytest.fixture
def space(tmp_path: Path) -> Iterator[Workspace]:
    pytest.importorskip("llama_cpp")
    built = Workspace(tmp_path)
    yield built
    built.cleanup()


def ask(gateway: str, model: str) -> tuple[int, Any]:
    status, _, answer = call(f"{gateway}/v1/completions", completion(model))
    return status, answer


def test_an_on_demand_model_is_idle_until_asked_then_one_start_serves_every_waiting_request(
        space: Workspace, tmp_path: Path) -> None:
    gateway, _ = build(space, {"alpha": 600}, tmp_path)
    wait_for(lambda: phase(space, "alpha-server") == "Idle", timeout=30, what="alpha-server Idle")
    status = space.resource_status("alpha.yaml", "alpha-server")
    assert "starts when a request for Model/alpha reaches the gateway" in status["message"]
    assert space.owned_processes("alpha-server") == []
    _, _, listed = call(f"{gateway}/v1/models")
    assert [(m["id"], m["state"]) for m in listed["data"]] == [("alpha", "Idle")]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: ask(gateway, "alpha"), range(8)))
    assert [(status, answer.get("model")) for status, answer in answers] == [(200, "alpha")] * 8, answers
    assert starts(space, "alpha-server") == 1, ("eight waiting requests joined one start", story(space, "alpha"))
    assert len(space.owned_processes("alpha-server")) == 1


def test_requests_alternating_between_two_models_that_cannot_both_fit_are_all_answered_by_their_own(
        space: Workspace, tmp_path: Path) -> None:
    gateway, _ = build(space, {"alpha": 600, "beta": 600}, tmp_path)
    wait_for(lambda: phase(space, "alpha-server") == phase(space, "beta-server") == "Idle", timeout=30, what="both Idle")
    seen: list[Counter[str]] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.append(servers(space))
            time.sleep(0.02)

    def client(first: int) -> list[tuple[str, int, Any]]:
        asked = [("alpha", "beta")[(first + n) % 2] for n in range(4)]
        return [(model, *ask(gateway, model)) for model in asked]

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            results = [answer for answers in pool.map(client, range(4)) for answer in answers]
    finally:
        done.set()
        watcher.join()
    assert len(results) == 16
    assert [(model, status, answer.get("model")) for model, status, answer in results if status != 200
            or answer.get("model") != model] == [], "every request answered by the Model it named"
    assert {"alpha-server", "beta-server"} <= {name for sample in seen for name in sample}, "both were seen serving"
    assert all(count <= 1 for sample in seen for count in sample.values()), "never two processes of one model"
    assert all(sum(sample.values()) <= 2 for sample in seen)  # the gateway and at most one model server
    evicted = [line for name in ("alpha", "beta") for line in space.evidence(f"{name}.yaml") if line["event"] == "evicted"]
    assert evicted, "the models took turns in the host's RAM"
    for line in evicted:
        other = "beta" if line["resource"] == "Workload/alpha-server" else "alpha"
        assert line["for"] == f"Workload/{other}-server" and line["model"] == other and line["request"], line
        assert line["cause"].startswith("evicted: idle, and ")
        assert line["shortage"].startswith("memory limit "), ("room in RAM, not on a GPU", line)


def test_an_idle_model_is_stopped_after_idle_seconds_and_a_restarted_daemon_keeps_its_clock(
        space: Workspace, tmp_path: Path) -> None:
    gateway, env = build(space, {"alpha": 4}, tmp_path)
    wait_for(lambda: phase(space, "alpha-server") == "Idle", timeout=30, what="alpha-server Idle")
    assert ask(gateway, "alpha")[0] == 200
    pid = space.pid("alpha.yaml", "alpha-server")
    finished = time.monotonic()
    space.stop_daemon(signal.SIGKILL)
    space.start_daemon(env=env)
    wait_for(lambda: phase(space, "alpha-server") == "Idle", timeout=30, what="alpha-server stopped when idle")
    assert time.monotonic() - finished >= 3.5, ("the idle clock runs from the last request", story(space, "alpha"))
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    stops = [line for line in space.evidence("alpha.yaml") if line.get("action") == "stop" and line["event"] == "decision"]
    assert len(stops) == 1 and "idle for" in stops[0]["cause"], story(space, "alpha")
    assert starts(space, "alpha-server") == 1, ("re-adopted, not started twice", story(space, "alpha"))
    status, answer = ask(gateway, "alpha")
    assert status == 200, ("a request after the idle stop starts it again", answer, story(space, "alpha"))
    assert starts(space, "alpha-server") == 2, story(space, "alpha")


def test_a_daemon_killed_mid_activation_converges_with_one_process(space: Workspace, tmp_path: Path) -> None:
    gateway, env = build(space, {"alpha": 600}, tmp_path)
    wait_for(lambda: phase(space, "alpha-server") == "Idle", timeout=30, what="alpha-server Idle")
    with ThreadPoolExecutor(4) as pool:
        asked = [pool.submit(ask, gateway, "alpha") for _ in range(4)]
        # Killed once the start is recorded, while the server loads. Killed between the spawn and the start's evidence
        # line, the restarted daemon adopts the process and no line ever says it was started.
        wait_for(lambda: starts(space, "alpha-server"), timeout=30, what="the start to be recorded")
        assert not any(future.done() for future in asked), "killed while the requests still wait for the start"
        space.stop_daemon(signal.SIGKILL)
        space.start_daemon(env=env)
        answers = [future.result(timeout=150) for future in asked]
    assert [(status, answer.get("model")) for status, answer in answers] == [(200, "alpha")] * 4, answers
    assert len(space.owned_processes("alpha-server")) == 1
    assert starts(space, "alpha-server") == 1, story(space, "alpha")


def test_a_gateway_killed_with_requests_waiting_leaves_no_request_counted_and_no_second_process(
        space: Workspace, tmp_path: Path) -> None:
    gateway, _ = build(space, {"alpha": 600}, tmp_path)
    wait_for(lambda: phase(space, "alpha-server") == "Idle", timeout=30, what="alpha-server Idle")
    killed = space.pid("gateway.yaml", "gateway")
    record = space.state / "gateway" / "demand" / "alpha-server.json"
    with ThreadPoolExecutor(3) as pool:
        waiting = [pool.submit(ask, gateway, "alpha") for _ in range(3)]
        wait_for(lambda: record.exists() and json.loads(record.read_text())["inFlight"] == 3, timeout=30,
                 what="three requests counted")
        psutil.Process(killed).kill()
        for future in waiting:
            with pytest.raises(OSError):  # the connection ends: the client knows its request was not answered
                future.result(timeout=60)
    wait_for(lambda: (pid := space.pid("gateway.yaml", "gateway")) and pid != killed
             and phase(space, "gateway") == "Running", timeout=60, what="the gateway restarted")
    wait_for(lambda: json.loads(record.read_text())["inFlight"] == 0, timeout=10,
             what="the restarted gateway to take the record over with nothing in flight")
    status, answer = ask(gateway, "alpha")
    assert (status, answer.get("model")) == (200, "alpha")
    assert len(space.owned_processes("alpha-server")) == 1 and starts(space, "alpha-server") == 1


def test_apply_wait_takes_an_idle_on_demand_workload_as_settled(space: Workspace) -> None:
    space.write("policy.yaml", POLICY)
    write_tiny_llama(space.desired / "models" / "alpha.gguf", name="alpha")
    space.write("alpha.yaml", document("Model", "alpha", {"source": "models/alpha.gguf"}) + "---\n"
                + on_demand_server("alpha-server", "alpha", 600))
    done = space.cli("apply", "--wait", "--timeout", "20")
    assert done.returncode == 0, done.stderr
    assert phase(space, "alpha-server") == "Idle" and space.owned_processes("alpha-server") == []


def test_a_daemon_killed_mid_eviction_converges_with_one_process_each(space: Workspace, tmp_path: Path) -> None:
    gateway, env = build(space, {"alpha": 600, "beta": 600}, tmp_path)
    wait_for(lambda: phase(space, "alpha-server") == phase(space, "beta-server") == "Idle", timeout=30, what="both Idle")
    assert ask(gateway, "alpha")[0] == 200
    with ThreadPoolExecutor(1) as pool:
        asked = pool.submit(ask, gateway, "beta")
        wait_for(lambda: not servers(space)["alpha-server"], timeout=60, what="alpha evicted")
        space.stop_daemon(signal.SIGKILL)
        space.start_daemon(env=env)
        status, answer = asked.result(timeout=150)
    assert (status, answer.get("model")) == (200, "beta")
    wait_for(lambda: phase(space, "alpha-server") == "Idle", timeout=30, what="alpha-server Idle")
    assert servers(space)["beta-server"] == 1 and not servers(space)["alpha-server"]
    assert starts(space, "alpha-server") == 1 and starts(space, "beta-server") == 1


def test_a_request_that_outwaits_the_bound_gets_503_with_retry_after_and_the_start_goes_on(
        space: Workspace, tmp_path: Path) -> None:
    gateway, _ = build(space, {"alpha": 600}, tmp_path, wait=0.2)
    wait_for(lambda: phase(space, "alpha-server") == "Idle", timeout=30, what="alpha-server Idle")
    status, headers, answer = call(f"{gateway}/v1/completions", completion("alpha"))
    assert (status, headers["Retry-After"]) == (503, "5"), answer
    assert "still starting" in answer["error"]["message"]
    wait_for(lambda: ask(gateway, "alpha")[0] == 200, timeout=60, what="a later request answered")
    assert starts(space, "alpha-server") == 1, story(space, "alpha")


def test_a_start_the_policy_refuses_answers_503_with_the_gates_reason(space: Workspace, tmp_path: Path) -> None:
    untrusted = document("Policy", "test-host", {"native": {"trustedEngines": ["gateway"]}})
    gateway, _ = build(space, {"alpha": 600}, tmp_path, policy=untrusted)
    wait_for(lambda: phase(space, "alpha-server") == "Idle", timeout=30, what="alpha-server Idle")
    status, answer = ask(gateway, "alpha")
    assert (status, answer["error"]["code"]) == (503, "PolicyDenied"), answer
    assert "llama.cpp" in answer["error"]["message"]
    assert space.owned_processes("alpha-server") == []
