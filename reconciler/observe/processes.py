"""What the process driver reports about a workload's process (plain data: the pure stages read it)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from reconciler.api.status import ExitInfo
from reconciler.api.launch import LaunchSpec


class ProcessRecord(BaseModel):
    """Proof of ownership: pid + kernel start ticks (immune to clock steps) + the launch nonce."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    name: str
    pid: int
    start_ticks: int
    nonce: str
    launch: LaunchSpec
    generation: int
    started_at: datetime
    enforcement: dict[str, str] = {}  # resource -> how its limit is enforced, in words
    cgroups: dict[str, str] = {}  # controller -> the cgroup made for this run
    exit: ExitInfo | None = None


class ProcessState(str, Enum):
    running = "running"
    exited = "exited"
    absent = "absent"


@dataclass(frozen=True)
class ProcessObservation:
    state: ProcessState
    record: ProcessRecord | None = None

    @property
    def exit(self) -> ExitInfo | None:
        return self.record.exit if self.record else None

    @property
    def running_pid(self) -> int | None:
        return self.record.pid if self.state is ProcessState.running and self.record else None
