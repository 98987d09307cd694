"""What the reconciler needs from a workload driver. Drivers execute; they never decide.

The native process driver (processes, llama.cpp and vLLM servers) and the container driver
implement it; `drive.dispatch.Drivers` routes each workload to the one that runs it.
"""

from __future__ import annotations

from typing import Protocol

from reconciler.api.status import ExitInfo
from reconciler.api.launch import ContainerLaunch, LaunchSpec
from reconciler.observe.processes import ProcessObservation


class StartFailed(Exception):
    """A start that could not happen; `reason` is a condition reason (CamelCase). Nothing half-made is left."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class WorkloadDriver(Protocol):
    def owned_names(self) -> list[str]:
        """Every workload this driver holds a record of, whatever the desired state says."""

    def adopt(self) -> dict[str, int]:
        """After a (re)start: take over what is recorded; stop what a crash left unrecorded (the pids, by workload)."""

    def observe(self, name: str) -> ProcessObservation: ...

    def start(self, name: str, launch: LaunchSpec | ContainerLaunch, generation: int) -> ProcessObservation:
        """Start exactly `launch`; raise StartFailed with a CamelCase reason when it cannot."""

    def stop(self, name: str, grace_seconds: float, forget: bool = True) -> ExitInfo | None:
        """End everything the workload's launch made (TERM, grace, KILL); forget it, or keep it as exited."""

    def default_working_dir(self, name: str) -> str: ...

    def log_path(self, name: str) -> str: ...

    def trim_log(self, name: str) -> None: ...
