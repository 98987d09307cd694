"""What a driver reports about a workload's process or container (plain data: the pure stages read it)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from reconciler.api.status import ExitInfo
from reconciler.api.launch import AnyLaunch


class RunAs(BaseModel):
    """Whom a native workload's processes run as (a user other than the reconciler's, which is root)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)

    uid: int
    gid: int
    name: str
    home: str
    groups: tuple[int, ...] = ()
    dynamic: bool = False

    def describe(self) -> str:
        kind = "dynamic user" if self.dynamic else "user"
        groups = f", groups {','.join(map(str, self.groups))}" if self.groups else ""
        return f"{kind} {self.name} (uid {self.uid}, gid {self.gid}{groups})"


class ProcessRecord(BaseModel):
    """Proof of ownership: pid + kernel start ticks (immune to clock steps) + the launch nonce.

    For a container, the engine's labels prove ownership: `container_id` names it, `pid` is its main
    process on the host (0 once it has ended and the reconciler never saw it run).
    """

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    name: str
    pid: int
    start_ticks: int
    nonce: str
    launch: AnyLaunch
    generation: int
    started_at: datetime
    enforcement: dict[str, str] = {}  # resource -> how its limit is enforced, in words
    cgroups: dict[str, str] = {}  # controller -> the cgroup made for this run
    user: str | None = None  # whom it runs as, in words (None: recorded by a version that did not say)
    run_as: RunAs | None = None  # None: as the reconciler itself
    exit: ExitInfo | None = None
    container_id: str | None = None
    addresses: tuple[str, ...] = ()  # a container's on its networks: how a gateway tells its requests apart


class ProcessState(str, Enum):
    running = "running"
    exited = "exited"
    absent = "absent"
    unknown = "unknown"  # its driver cannot see it now (the container engine is unreachable)


@dataclass(frozen=True)
class ProcessObservation:
    state: ProcessState
    record: ProcessRecord | None = None
    problem: str | None = None  # why the state is unknown
    vanished: str | None = None  # absent, though the driver started it and never removed it: what it was

    @property
    def exit(self) -> ExitInfo | None:
        return self.record.exit if self.record else None

    @property
    def running_pid(self) -> int | None:
        return self.record.pid if self.state is ProcessState.running and self.record else None
