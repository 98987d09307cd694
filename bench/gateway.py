"""Gateway benchmarks: what the gateway adds over calling llama.cpp directly, beside what a LiteLLM proxy adds.

One llama-cpp-python server on the tiny GGUF the tests generate, the reconciler's gateway in front of it (run as the
daemon renders it, with a routes file naming that server) and a LiteLLM proxy in front of the same server. Each
repetition sends the same request directly, through the gateway, directly, then directly, through LiteLLM, directly, each on
its own kept-alive connection, and reports each proxy's time less the mean of the direct calls around it: the added latency
(a short completion), and the added time to the first streamed event. Differences of paired calls cancel most of
the engine's own variance; the machine's noise remains, so read ratios, not absolute numbers.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.harness import Scenario
from reconciler.gateway.routes import Backend, Route, RouteState, RouteTable
from reconciler.gateway.routes_file import write_routes
from tests.tiny_gguf import write_tiny_llama

REPO = Path(__file__).resolve().parent.parent
GATEWAY = REPO / "reconciler" / "gateway" / "__main__.py"
COMPLETION = {"model": "tiny", "prompt": "the", "max_tokens": 1, "temperature": 0}
STREAM = {**COMPLETION, "max_tokens": 4, "stream": True}
LITELLM_KEY = "sk-bench-0123456789abcdef"  # the proxy refuses to start without a master key; a throwaway one


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Endpoint:
    """A kept-alive HTTP connection to one server's /v1."""

    def __init__(self, port: int, key: str | None = None) -> None:
        self.port = port
        self.headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def completion(self) -> float:
        """Seconds for a whole short completion."""
        started = time.perf_counter()
        answer = self._post(COMPLETION)
        body = answer.read()
        if answer.status != 200:
            raise RuntimeError(f"port {self.port}: {answer.status} {body[:300]!r}")
        return time.perf_counter() - started

    def first_event(self) -> float:
        """Seconds until the first streamed event arrives (the rest is read, so the connection is reused)."""
        started = time.perf_counter()
        answer = self._post(STREAM)
        first = None
        while chunk := answer.read1(65536):
            if first is None and b"data: " in chunk:
                first = time.perf_counter() - started
        if answer.status != 200 or first is None:
            raise RuntimeError(f"port {self.port}: {answer.status}, no event")
        return first

    def ready(self) -> bool:
        with contextlib.suppress(OSError, http.client.HTTPException, RuntimeError):
            self.completion()
            return True
        self.connection.close()
        return False

    def _post(self, body: dict[str, object]) -> http.client.HTTPResponse:
        self.connection.request("POST", "/v1/completions", json.dumps(body), self.headers)
        return self.connection.getresponse()


class Stack:
    """llama-cpp-python, the gateway and (when installed) a LiteLLM proxy, each its own process group."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
        self.processes: list[subprocess.Popen[bytes]] = []
        self.direct = self.gateway = self.litellm = None  # type: Endpoint | None

    def start(self) -> None:
        model = write_tiny_llama(self.tmp / "tiny.gguf")
        engine = _free_port()
        self._spawn("llama", [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", "tiny",
                              "--host", "127.0.0.1", "--port", str(engine), "--n_ctx", "512"])
        self.direct = self._wait(Endpoint(engine), "llama-cpp-python")
        routes = self.tmp / "state" / "gateway" / "routes.json"
        routes.parent.parent.mkdir()
        write_routes(routes, RouteTable(models={"tiny": Route(state=RouteState.ready, backends=(
            Backend(workload="chat", url=f"http://127.0.0.1:{engine}/v1"),))}))
        port = _free_port()
        self._spawn("gateway", [sys.executable, "-P", "-s", str(GATEWAY), "--port", str(port), "--routes", str(routes)])
        self.gateway = self._wait(Endpoint(port), "the gateway")
        if LITELLM_MISSING is None:
            config = self.tmp / "litellm.yaml"
            config.write_text(json.dumps({"general_settings": {"master_key": LITELLM_KEY}, "model_list": [{
                "model_name": "tiny", "litellm_params": {"model": "openai/tiny", "api_base": f"http://127.0.0.1:{engine}/v1",
                                                         "api_key": "none"}}]}))
            port = _free_port()
            self._spawn("litellm", [str(Path(sys.executable).parent / "litellm"), "--config", str(config), "--host",
                                    "127.0.0.1", "--port", str(port), "--num_workers", "1"],
                        {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"})
            self.litellm = self._wait(Endpoint(port, LITELLM_KEY), "the LiteLLM proxy", timeout=180)
        for endpoint in (self.direct, self.gateway):  # idle while LiteLLM started: servers close such connections
            endpoint.connection.close()
            self._wait(endpoint, "a warm-up call")

    def stop(self) -> None:
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        with open(self.tmp / f"{name}.log", "ab") as log:
            self.processes.append(subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                                   start_new_session=True, env={**os.environ, **(env or {})}))

    def _wait(self, endpoint: Endpoint, what: str, timeout: float = 60) -> Endpoint:
        deadline = time.monotonic() + timeout
        while not endpoint.ready():
            if time.monotonic() > deadline or any(process.poll() is not None for process in self.processes):
                logs = "".join(log.read_text(errors="replace")[-800:] for log in self.tmp.glob("*.log"))
                raise RuntimeError(f"{what} did not answer on port {endpoint.port}: {logs}")
            time.sleep(0.2)
        return endpoint


def _litellm_missing() -> str | None:
    if importlib.util.find_spec("litellm") is None or not (Path(sys.executable).parent / "litellm").exists():
        return "LiteLLM not installed here (pip install 'litellm[proxy]', the bench extra): not run"
    return None


LITELLM_MISSING = _litellm_missing()


def _added(stack: Stack, proxy: Callable[[Stack], Endpoint | None], measure: Callable[[Endpoint], float]) -> float:
    """Milliseconds `proxy` adds over the mean of the direct calls made just before and just after it."""
    through = proxy(stack)
    assert stack.direct is not None and through is not None
    before, proxied, after = measure(stack.direct), measure(through), measure(stack.direct)
    return (proxied - (before + after) / 2) * 1000


def _scenario(name: str, measure: Callable[[Endpoint], float], repetitions: int, target: str) -> Scenario:
    stack = Stack()
    return Scenario(
        name=name, unit="ms", repetitions=repetitions, target=target, setup=stack.start, teardown=stack.stop,
        ours=lambda: _added(stack, lambda s: s.gateway, measure),
        peer=None if LITELLM_MISSING else (lambda: _added(stack, lambda s: s.litellm, measure)),
        peer_name="LiteLLM proxy", reference=LITELLM_MISSING or "",
    )


def scenarios(quick: bool = False) -> list[Scenario]:
    repetitions = 40 if quick else 300
    return [
        _scenario("gateway: added latency, short completion", Endpoint.completion, repetitions,
                  "p50 < 1 ms; ratio < 1"),
        _scenario("gateway: added time to first token, streaming", Endpoint.first_event, repetitions,
                  "p50 < 1 ms; ratio < 1"),
    ]
