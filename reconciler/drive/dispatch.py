"""One driver interface over both runtimes: each workload goes to the driver that runs it.

A workload is the native driver's while it holds a process record for it, else the container
driver's. A start goes by its launch, so a spec that switches runtime stops the old one (both
drivers are asked to stop) and starts the new one in the right place.
"""

from __future__ import annotations

from collections.abc import Callable

from reconciler.api.launch import ContainerLaunch, LaunchSpec
from reconciler.api.status import ExitInfo
from reconciler.drive.containers import ContainerDriver
from reconciler.drive.process import ProcessDriver
from reconciler.observe.processes import ProcessObservation, ProcessState


class Drivers:
    def __init__(self, native: ProcessDriver, containers: ContainerDriver) -> None:
        self.native = native
        self.containers = containers

    def owned_names(self) -> list[str]:
        return sorted({*self.native.owned_names(), *self.containers.owned_names()})

    def seen_names(self) -> list[str]:
        """As owned_names, with the containers as this pass saw them (no listing per look)."""
        return sorted({*self.native.owned_names(), *self.containers.seen_names()})

    def adopt(self) -> dict[str, int]:
        return {**self.native.adopt(), **self.containers.adopt()}

    def observe(self, name: str, containers: bool = True) -> ProcessObservation:
        """`containers`: whether the workload is, or was, a container (the engine is asked only then)."""
        native = self.native.observe(name)
        return native if native.state is not ProcessState.absent or not containers else self.containers.observe(name)

    def start(self, name: str, launch: LaunchSpec | ContainerLaunch, generation: int) -> ProcessObservation:
        if isinstance(launch, ContainerLaunch):
            return self.containers.start(name, launch, generation)
        return self.native.start(name, launch, generation)

    def replace(self, name: str, launch: ContainerLaunch, generation: int, grace_seconds: float,
                stopped: Callable[[], None]) -> ProcessObservation:
        """Start a container launch in place of what the workload runs: a native process is stopped first, a
        container is replaced by the container driver, which makes the new one before it stops the old one.
        `stopped`: called once what ran has stopped (never when a stop fails)."""
        self.native.stop(name, grace_seconds)
        return self.containers.start(name, launch, generation, grace_seconds, stopped)

    def tidy(self) -> None:
        """End what a container replacement left, as the latest listing shows it."""
        self.containers.tidy()

    def check_room(self) -> None:
        """Raise OSError unless the state directory takes a new run's records (one store for both drivers)."""
        self.native.check_room()

    def pull(self, launch: ContainerLaunch) -> ContainerLaunch:
        return self.containers.pull(launch)

    def stop(self, name: str, grace_seconds: float, forget: bool = True) -> ExitInfo | None:
        native = self.native.stop(name, grace_seconds, forget)
        if native is not None:
            return native
        return self.containers.stop(name, grace_seconds, forget)

    def default_working_dir(self, name: str) -> str:
        return self.native.default_working_dir(name)

    def log_path(self, name: str) -> str:
        return self.native.log_path(name)  # one log store: both drivers write the same file for a name

    def trim_log(self, name: str, containers: bool = True) -> None:
        if self.native.owned(name) or not containers:
            self.native.trim_log(name)
        else:
            self.containers.trim_log(name)
