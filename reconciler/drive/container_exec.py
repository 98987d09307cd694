"""Exec health checks inside a workload's running container: one at a time per workload, killed at their timeout."""

from __future__ import annotations

import os
import signal
import threading

from reconciler.base.sdk_errors import docker_errors
from reconciler.observe.docker_engine import DockerEngine, EngineUnavailable
from reconciler.observe.probes import ProbeResult


class ExecChecks:
    def __init__(self, engine: DockerEngine, owner: str) -> None:
        self.engine = engine
        self._owner = owner
        self._probing: set[str] = set()
        self._probing_lock = threading.Lock()

    def run(self, name: str, command: list[str], timeout: float) -> ProbeResult:
        with self._probing_lock:
            if name in self._probing:
                return ProbeResult(False, f"{command[0]}: the previous check has not finished")
            self._probing.add(name)
        try:
            return self._exec(name, command, timeout)
        finally:
            with self._probing_lock:
                self._probing.discard(name)

    def _exec(self, name: str, command: list[str], timeout: float) -> ProbeResult:
        outcome: list[bytes] = []
        try:
            with self.engine.reach() as client:
                running = [c for c in self.engine.owned(self._owner, name) if c.status == "running"]
                if not running:
                    return ProbeResult(False, "no running container")
                exec_id = client.api.exec_create(running[0].id, command)["Id"]
                worker = threading.Thread(target=lambda: outcome.append(client.api.exec_start(exec_id)), daemon=True)
                worker.start()
                worker.join(timeout)
                if worker.is_alive():
                    pid = client.api.exec_inspect(exec_id).get("Pid")
                    if pid:
                        os.kill(pid, signal.SIGKILL)  # a hung check must not pile up inside the container
                    return ProbeResult(False, f"{command[0]}: no answer within {timeout}s")
                code = client.api.exec_inspect(exec_id).get("ExitCode")
        except (EngineUnavailable, docker_errors.APIError, OSError) as error:
            return ProbeResult(False, f"{command[0]}: {error}")
        tail = (outcome[0] if outcome else b"").decode("utf-8", "replace").strip()[-200:]
        return ProbeResult(code == 0, f"{command[0]} exited {code}" + (f": {tail}" if tail else ""))
