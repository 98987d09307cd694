"""The reconciler's memory of one resource it owns: what later passes trust, where status files are output only.
The state directory keeps it (record/store.py); the diff reads it as an input."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from reconciler.api.meta import ResourceKey
from reconciler.api.rollout import KnownGood, RolledBack, RolloutClock
from reconciler.api.status import Condition, ExitInfo, FailureInfo, HealthState, ObservedExposure, Recovered


class ResourceRecord(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    kind: str
    name: str
    source: str
    generation: int
    spec_hash: str
    resource: dict[str, Any]
    created_at: datetime
    observed_generation: int | None = None
    conditions: list[Condition] = []
    restart_count: int = 0
    consecutive_failures: int = 0
    last_exit: ExitInfo | None = None
    next_retry_at: datetime | None = None
    last_failure: FailureInfo | None = None
    health: HealthState | None = None
    readiness: HealthState | None = None  # spec.readiness's results: Ready, never restarts
    endpoint: str | None = None  # where the process last started serves (an update waiting for approval may move it)
    last_decision: str | None = None  # so a refusal repeated by every resync is recorded once
    decision_record_digest: str | None = None  # the Runtime Decision Record last put in evidence
    known_good: KnownGood | None = None  # what a rollback restores
    rollout: RolloutClock | None = None  # the generation being proven
    rolled_back: RolledBack | None = None  # the generation not retried until the spec changes
    exposure: ObservedExposure | None = None  # the last run seen listening where the policy did not allow
    recovered: Recovered | None = None  # an action a crash cut short, as the restart found it (while still so)

    @property
    def key(self) -> ResourceKey:
        return ResourceKey(self.kind, self.name)
