"""Models on demand: what the reconciler adds to a model's cold start, and what a swap between two models that
cannot both be resident costs, against starting the same llama.cpp server by hand and polling it (the floor: Ollama
and llama-swap are not installable here without network).

Both sides run llama-cpp-python's server on the tests' tiny GGUF models (load time is mostly interpreter start-up
and the server's imports) and count a start as done when the first completion is answered. Ours goes through the
gateway: the request's demand record, the daemon's pass, the gate, the spawn, the health check, the routes file,
and for a swap the eviction of the other model (each commits a memory limit of 60 % of the host's RAM, so only one
fits the policy's budget: the llama-cpp-python here is a CPU build, on which a GPU request is refused)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import yaml

from bench.harness import Scenario
from bench.native import API, Daemon, _documents, wait_for
from tests.ports import stable_port
from tests.tiny_gguf import write_tiny_llama

MODELS = ("alpha", "beta")
MEMORY_SHARE = 0.6  # of the host's RAM, per server: one fits the default budget (90 %), two do not


def _complete(base: str, model: str, timeout: float = 120.0) -> int:
    body = json.dumps({"model": model, "prompt": "the", "max_tokens": 4}).encode()
    request = urllib.request.Request(f"{base}/completions", body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status if json.load(answer).get("model") == model else 0
    except urllib.error.HTTPError as refused:
        return refused.code


class OnDemand:
    """The daemon with a gateway and two on-demand servers that cannot both be resident in RAM."""

    def __init__(self, idle_seconds: float) -> None:
        self.idle_seconds, self.gateway_port = idle_seconds, stable_port()
        self.daemon: Daemon | None = None
        self.lost = self.asked = 0
        self.resident = ""

    def files(self, models: Path) -> dict[str, str]:
        policy = {"apiVersion": API, "kind": "Policy", "metadata": {"name": "bench"},
                  "spec": {"native": {"trustedEngines": ["llama.cpp", "gateway"]}, "models": {"roots": [str(models)]}}}
        files = {"policy.yaml": _documents(policy), "gateway.yaml": _documents({
            "apiVersion": API, "kind": "Workload", "metadata": {"name": "gateway"},
            "spec": {"engine": "gateway", "port": self.gateway_port, "args": ["--wait-seconds", "120"],
                     "health": {"http": {"path": "/health"}, "periodSeconds": 0.2}}})}
        for name in MODELS:
            files[f"{name}.yaml"] = _documents(
                {"apiVersion": API, "kind": "Model", "metadata": {"name": name}, "spec": {"source": str(models / f"{name}.gguf")}},
                {"apiVersion": API, "kind": "Workload", "metadata": {"name": f"{name}-server"}, "spec": {
                    "engine": "llama.cpp", "model": name, "port": stable_port(), "llamaCpp": {"contextSize": 256},
                    "resources": {"memory": int(psutil.virtual_memory().total * MEMORY_SHARE)}, "health": {"tcp": {}, "periodSeconds": 0.1},
                    "activation": {"mode": "OnDemand", "idleSeconds": self.idle_seconds}}})
        return files

    def up(self) -> None:
        models = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-on-demand-models-{os.getpid()}"
        _write_models(models)
        self.daemon = Daemon(self.files(models))
        try:  # the harness tears down only after a setup that returned
            self.daemon.start()
            wait_for(lambda: _answered(self.base, "alpha"), 120, "the gateway and a first start", 0.2)
        except BaseException:
            self.down()
            raise
        self.resident = "alpha"

    def swap(self) -> float:
        """Three concurrent requests for the model that is not resident: it evicts the other and starts."""
        self.resident = MODELS[1 - MODELS.index(self.resident)]
        return self.timed(self.resident, clients=3)

    def down(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}/v1"

    def phase(self, name: str) -> str | None:
        assert self.daemon is not None
        report = yaml.safe_load((self.daemon.desired / f"{name}.status.yaml").read_text()) or {}
        return next((r["phase"] for r in report.get("resources", []) if r["name"] == f"{name}-server"), None)

    def timed(self, model: str, clients: int = 1) -> float:
        """Seconds until `clients` concurrent requests for `model` are all answered; those not answered by it with
        200 are counted in `lost`."""
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            answers = list(pool.map(lambda _: _complete(self.base, model), range(clients)))
        self.lost += sum(1 for status in answers if status != 200)
        self.asked += clients
        return time.perf_counter() - started


def _by_hand(models: Path, name: str) -> subprocess.Popen[bytes]:
    """The same server as the workload's, started by hand on `models`/NAME.gguf; returned once it answers."""
    port = stable_port()
    server = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(models / f"{name}.gguf"),
                               "--model_alias", name, "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "256"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: _answered(f"http://127.0.0.1:{port}/v1", name), 120, f"{name} by hand", 0.02)
    except BaseException:
        _stop(server)
        raise
    return server


def _write_models(folder: Path) -> None:
    for name in MODELS:
        if not (folder / f"{name}.gguf").exists():
            write_tiny_llama(folder / f"{name}.gguf", name=name)


def _answered(base: str, name: str) -> bool:
    try:
        return _complete(base, name, timeout=30) == 200
    except OSError:
        return False


def _stop(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    server.wait(timeout=30)


def scenarios(quick: bool = False) -> list[Scenario]:
    cold, swap = OnDemand(idle_seconds=0.5), OnDemand(idle_seconds=600)
    models = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-by-hand-{os.getpid()}"

    def cold_ours() -> float:
        wait_for(lambda: cold.phase("alpha") == "Idle", 60, "alpha idle again", 0.05)
        return cold.timed("alpha")

    def cold_by_hand() -> float:
        _write_models(models)
        started = time.perf_counter()
        server = _by_hand(models, "alpha")
        elapsed = time.perf_counter() - started
        _stop(server)
        return elapsed

    def lost_in_swaps() -> float:
        """Requests not answered by their model during `swaps` swaps, three concurrent requests each."""
        before = swap.lost
        for _ in range(swaps):
            swap.swap()
        return float(swap.lost - before)

    def swap_by_hand() -> float:
        _write_models(models)
        first = _by_hand(models, "alpha")
        started = time.perf_counter()
        _stop(first)
        second = _by_hand(models, "beta")
        elapsed = time.perf_counter() - started
        _stop(second)
        return elapsed

    repetitions, swaps = (5, 10) if quick else (20, 100)
    return [
        Scenario("on demand: idle model, request -> answered (cold start through the gateway)", "s", cold_ours,
                 cold_by_hand, "llama-cpp-python server started by hand, polled", "ratio <= 1.5", repetitions,
                 cold.up, cold.down),
        Scenario("on demand: request for the other model -> answered (evict one, start the other, room for one in RAM)", "s",
                 swap.swap, swap_by_hand, "stop one server, start the other by hand, polled", "ratio <= 1.5",
                 repetitions, swap.up, swap.down),
        Scenario(f"on demand: requests lost during {swaps} swaps (3 concurrent requests each)", "requests",
                 lost_in_swaps, None, "", "0", 1, swap.up, swap.down),
    ]
