"""What the reconciler reports: Kubernetes-style conditions and per-resource status."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from reconciler.api.meta import empty_list


class Report(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class ConditionStatus(str, Enum):
    true = "True"
    false = "False"
    unknown = "Unknown"


class Condition(Report):
    type: str
    status: ConditionStatus
    reason: str = Field(pattern=r"^[A-Z][A-Za-z0-9]*$")
    message: str = ""
    last_transition_time: datetime


class Placement(str, Enum):
    local = "local"
    hosted = "hosted"
    unavailable = "unavailable"


class ExitInfo(Report):
    pid: int
    code: int | None = Field(None, description="None when the process was not our child and its code is lost.")
    signal: int | None = None
    finished_at: datetime
    run: str = Field("", description="Which run ended, in the runtime's own words (a container's id and its engine's "
                     "start and finish times; a pid and its kernel start time): the same exit looked at again.")
    ran_seconds: float
    oom_killed: bool = False
    stopped_by_reconciler: bool = Field(
        False, description="The reconciler stopped it (an idle stop, an eviction, a replacement): not a crash.")

    def describe(self) -> str:
        if self.oom_killed:
            return "process was killed by the kernel for exceeding its memory limit (OOM)"
        if self.signal is not None:
            return f"process was killed by signal {self.signal}"
        if self.code is None:
            return "process exited (exit code unknown: it ended while no reconciler was its parent)"
        return f"process exited with code {self.code}"

    def same_exit(self, other: ExitInfo) -> bool:
        if self.run and other.run:
            return self.run == other.run
        return (self.pid, self.finished_at) == (other.pid, other.finished_at)  # one recorded before runs were named

    @property
    def failed(self) -> bool | None:
        """None when unknown: only the parent of a process can read its exit code."""
        if self.signal is not None or self.oom_killed:
            return True
        return None if self.code is None else self.code != 0


class FailureInfo(Report):
    """Why the last start failed before any process ran (the exit of a process is an ExitInfo)."""

    reason: str
    message: str
    at: datetime
    pid: int | None = None  # the process we stopped for it (an unhealthy one), if any


class RolloutState(str, Enum):
    progressing = "Progressing"  # started, not Ready yet; the progress deadline runs
    soaking = "Soaking"  # Ready; must stay so for the soak period
    proven = "Proven"  # this generation is the known-good one
    failed = "Failed"  # missed its deadline or failed while soaking; nothing restored (rollback Manual, or no known-good)
    rolled_back = "RolledBack"  # failed, and the known-good version runs instead


class RolloutStatus(Report):
    """What `status` shows about the update in progress or just decided."""

    generation: int
    state: RolloutState
    message: str
    known_good_generation: int | None = None
    known_good_spec_hash: str | None = None
    rollback: str = Field("Manual", description="Auto restores the known-good version when an update fails.")


class Listen(Report):
    """A socket a process was seen listening on: a TCP listener, or a UDP socket bound without a peer."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)

    address: str
    port: int
    protocol: Literal["tcp", "udp"]

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}/{self.protocol}"


class Recovered(Report):
    """What a restart found of an action whose outcome a crash kept out of the evidence (its decision was the last
    line): the run it adopted, or that nothing of it runs. Shown while that stays true."""

    action: Literal["create", "update", "recreate", "stop", "delete"]
    result: Literal["adopted", "exited", "stopped", "not started", "not done"] = Field(
        description="adopted, exited, stopped, not started, or not done (what ran before still runs).")
    cause: str
    at: datetime
    pid: int | None = None
    container_id: str | None = None
    started_at: datetime | None = None


class ObservedExposure(Report):
    """A run seen listening where the policy did not allow it: the same launch is judged by it before it starts again."""

    pid: int
    launch_digest: str
    listening: tuple[Listen, ...]


class ResourceStatus(Report):
    kind: str
    name: str
    generation: int
    observed_generation: int | None = None
    phase: str
    placement: Placement | None = None
    message: str = ""
    conditions: list[Condition] = Field(default_factory=empty_list)
    pid: int | None = None
    restart_count: int = 0
    last_exit: ExitInfo | None = None
    next_retry_time: datetime | None = None
    started_at: datetime | None = None
    created_at: datetime | None = None
    log_file: str | None = None
    endpoints: list[str] = Field(default_factory=empty_list)
    command: list[str] | None = None
    gpus: list[int] | None = None
    health: str | None = None
    listening: list[str] | None = Field(
        None, description="The sockets a native workload's processes listen on, as observed on the host this pass.")
    enforcement: dict[str, str] | None = Field(
        None, description="How each limit and the privileges of what runs are enforced on this host, in words.")
    user: str | None = Field(None, description="Whom a native workload's process runs as (observed at its start).")
    container_id: str | None = None
    addresses: list[str] | None = Field(
        None, description="A running container's addresses on its networks: a gateway it uses admits it by them.")
    image: str | None = Field(None, description="A container's image reference, as the spec wrote it.")
    image_id: str | None = Field(None, description="The image it runs (the engine's content digest of it).")
    artifact: dict[str, Any] | None = Field(
        None, description="A Model's chosen variant: source, sha256, where it is, download progress, footprint estimate.")
    acceleration: dict[str, Any] | None = Field(
        None, description="Where an engine given a GPU put its model: GPUs used (UUIDs), layers offloaded of the total, "
                          "GPU memory its processes hold, the footprint estimate beside it.")
    decision_record: dict[str, Any] | None = Field(
        None, description="The Runtime Decision Record: why it runs where it runs, and what that trades off.")
    rollout: RolloutStatus | None = Field(
        None, description="A Workload's update: being proven, proven, failed or rolled back, and its known-good version.")
    recovered: Recovered | None = Field(
        None, description="An action a crash cut short before its outcome was recorded, and what the restart found.")


class HealthState(Report):
    """Probe results for one process (a new pid starts afresh)."""

    pid: int
    ready: bool = False
    ever_ready: bool = False
    consecutive_failures: int = 0
    last_probe_at: datetime | None = None
    message: str = "not checked yet"


