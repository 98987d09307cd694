"""The reconciler's memory of each resource it owns, in its state directory (0700, atomic writes).

This, not the status files, is what later passes trust: status files are output only.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel

from reconciler.api.meta import ResourceKey
from reconciler.api.rollout import KnownGood, RolledBack, RolloutClock
from reconciler.api.status import Condition, ExitInfo, FailureInfo, HealthState, ObservedExposure
from reconciler.record.atomic import write_atomic


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
    endpoint: str | None = None  # where the process last started serves (an update waiting for approval may move it)
    last_decision: str | None = None  # so a refusal repeated by every resync is recorded once
    decision_record_digest: str | None = None  # the Runtime Decision Record last put in evidence
    known_good: KnownGood | None = None  # what a rollback restores
    rollout: RolloutClock | None = None  # the generation being proven
    rolled_back: RolledBack | None = None  # the generation not retried until the spec changes
    exposure: ObservedExposure | None = None  # the last run seen listening where the policy did not allow

    @property
    def key(self) -> ResourceKey:
        return ResourceKey(self.kind, self.name)


class StateStore:
    def __init__(self, state_dir: Path) -> None:
        self.directory = state_dir / "resources"

    def _path(self, key: ResourceKey) -> Path:
        return self.directory / f"{key.kind}.{key.name}.json"

    def load_all(self) -> dict[ResourceKey, ResourceRecord]:
        records: dict[ResourceKey, ResourceRecord] = {}
        if not self.directory.is_dir():
            return records
        for path in sorted(self.directory.glob("*.json")):
            try:
                record = ResourceRecord.model_validate_json(path.read_bytes())
            except (OSError, ValidationError):
                continue  # written atomically, so only a foreign or hand-edited file lands here
            records[record.key] = record
        return records

    def save(self, record: ResourceRecord) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(self._path(record.key), record.model_dump_json(by_alias=True), mode=0o600)

    def delete(self, key: ResourceKey) -> None:
        self._path(key).unlink(missing_ok=True)
