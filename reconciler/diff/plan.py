"""Diff: (desired, remembered, observed, now) -> one action per resource, each with its cause. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum

from reconciler.api.kinds import RestartPolicy, Workload
from reconciler.api.meta import PRUNE_ANNOTATION, ResourceKey
from reconciler.api.status import ExitInfo
from reconciler.drive.launch import LaunchSpec
from reconciler.drive.process import ProcessObservation, ProcessState
from reconciler.load.desired import DesiredEntry
from reconciler.load.validate import LoadError
from reconciler.record.store import ResourceRecord


class Verb(str, Enum):
    create = "create"
    update = "update"
    recreate = "recreate"
    delete = "delete"
    none = "none"


@dataclass(frozen=True)
class Action:
    key: ResourceKey
    verb: Verb
    cause: str
    generation: int | None = None
    launch: LaunchSpec | None = None
    retry_at: datetime | None = None
    held: bool = False  # an invalid or unreadable newer version is being ignored
    orphaned: bool = False  # gone from the desired state but kept running on purpose

    @property
    def changes_something(self) -> bool:
        return self.verb is not Verb.none


@dataclass(frozen=True)
class Inputs:
    """Everything the diff knows about one resource."""

    key: ResourceKey
    desired: DesiredEntry | None
    record: ResourceRecord | None
    process: ProcessObservation | None = None
    launch: LaunchSpec | None = None
    rejected: tuple[LoadError, ...] = ()
    source_errors: tuple[LoadError, ...] = ()  # errors of the file the record came from


def next_generation(record: ResourceRecord | None, desired: DesiredEntry) -> int:
    if record is None:
        return 1
    return record.generation if record.spec_hash == desired.spec_hash else record.generation + 1


def plan_resource(inputs: Inputs, now: datetime, allow_prune: bool) -> Action:
    key, desired, record = inputs.key, inputs.desired, inputs.record
    if desired is None:
        return _plan_removal(inputs, allow_prune)
    generation = next_generation(record, desired)
    if not isinstance(desired.resource, Workload):
        if record is None:
            return Action(key, Verb.create, "new resource", generation)
        if generation != record.generation:
            return Action(key, Verb.update, _spec_change(record, desired), generation)
        return Action(key, Verb.none, "up to date", generation)
    return _plan_workload(inputs, generation, now)


def _plan_workload(inputs: Inputs, generation: int, now: datetime) -> Action:
    key, record, observed, launch = inputs.key, inputs.record, inputs.process, inputs.launch
    assert launch is not None and observed is not None
    running = observed.record
    waiting = _backing_off(record, generation, now)
    if observed.state is ProcessState.absent or running is None:
        if waiting:
            return Action(key, Verb.none, f"back-off after a failed start; next start in {waiting:.1f}s", generation, retry_at=record.next_retry_at if record else None)
        return Action(key, Verb.create, "not running", generation, launch)
    changed = launch.changed_fields(running.launch)
    if observed.state is ProcessState.running:
        if changed:
            return Action(key, Verb.recreate, f"{', '.join(changed)} changed", generation, launch)
        if record is not None and generation != record.generation:
            return Action(key, Verb.update, _spec_change(record, inputs.desired), generation)
        return Action(key, Verb.none, "running", generation)
    exit_info = observed.exit
    assert exit_info is not None
    if changed:
        return Action(key, Verb.create, f"{', '.join(changed)} changed; the old process had ended", generation, launch)
    workload = inputs.desired.resource
    assert isinstance(workload, Workload)
    policy = workload.spec.restart.policy
    if policy is RestartPolicy.never or (policy is RestartPolicy.on_failure and not exit_info.failed):
        return Action(key, Verb.none, f"{exit_info.describe()}; restart policy {policy.value}", generation)
    if waiting:
        retry_at = record.next_retry_at if record else None
        return Action(key, Verb.none, f"back-off: {exit_info.describe()}; next start in {waiting:.1f}s", generation, retry_at=retry_at)
    return Action(key, Verb.create, exit_info.describe(), generation, launch)


def _backing_off(record: ResourceRecord | None, generation: int, now: datetime) -> float:
    """Seconds left to wait before the next start; a changed spec never waits."""
    if record is None or record.next_retry_at is None or generation != record.generation:
        return 0.0
    return max(0.0, (record.next_retry_at - now).total_seconds())


def _plan_removal(inputs: Inputs, allow_prune: bool) -> Action:
    key, record = inputs.key, inputs.record
    if inputs.rejected:
        return _hold(key, record, f"new version rejected: {inputs.rejected[0]}")
    if inputs.source_errors:
        return _hold(key, record, f"its file cannot be read: {inputs.source_errors[0]}")
    annotations = (record.resource.get("metadata", {}) if record else {}).get("annotations", {})
    if annotations.get(PRUNE_ANNOTATION) == "disabled":
        cause = f"orphaned: removed from the desired state, but {PRUNE_ANNOTATION}: disabled keeps it"
        return Action(key, Verb.none, cause, record.generation if record else None, orphaned=True)
    if not allow_prune:
        return Action(key, Verb.none, "the desired state is empty; nothing is pruned without --allow-empty", held=True)
    return Action(key, Verb.delete, "removed from the desired state", record.generation if record else None)


def _hold(key: ResourceKey, record: ResourceRecord | None, why: str) -> Action:
    keeping = f"; generation {record.generation} stays in force" if record else ""
    return Action(key, Verb.none, why + keeping, record.generation if record else None, held=True)


def _spec_change(record: ResourceRecord, desired: DesiredEntry | None) -> str:
    assert desired is not None
    before = record.resource.get("spec", {})
    after = desired.resource.model_dump(mode="json", by_alias=True)["spec"]
    fields = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
    return ", ".join(f"spec.{name}" for name in fields) + " changed" if fields else "spec changed"


def account_exit(record: ResourceRecord, exit_info: ExitInfo, workload: Workload) -> ResourceRecord:
    """Count a newly seen exit once and schedule the next start."""
    seen = record.last_exit
    if seen is not None and (seen.pid, seen.finished_at) == (exit_info.pid, exit_info.finished_at):
        return record
    scheduled = schedule_retry(record, exit_info.finished_at, exit_info.ran_seconds, workload)
    return scheduled.model_copy(update={"last_exit": exit_info})


def schedule_retry(record: ResourceRecord, failed_at: datetime, ran_seconds: float, workload: Workload) -> ResourceRecord:
    """Exponential back-off: initial * 2^(n-1), capped; a run longer than resetAfter starts the count afresh."""
    backoff = workload.spec.restart.backoff
    failures = 0 if ran_seconds >= backoff.reset_after_seconds else record.consecutive_failures
    failures += 1
    delay = min(backoff.max_seconds, backoff.initial_seconds * 2 ** (failures - 1))
    return record.model_copy(update={
        "consecutive_failures": failures, "next_retry_at": failed_at + timedelta(seconds=delay),
    })
