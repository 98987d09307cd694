"""Diff: (desired, remembered, observed, now) -> one action per resource, each with its cause. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from enum import Enum

from pydantic import ValidationError

from reconciler.api.activation import Demand
from reconciler.api.kinds import KINDS, RestartPolicy, Workload, asked_spec
from reconciler.api.launch import ContainerLaunch, LaunchSpec
from reconciler.api.launch import EXECUTABLE_FIELD as _EXECUTABLE
from reconciler.api.meta import PRUNE_ANNOTATION, ResourceKey
from reconciler.api.resource_record import ResourceRecord
from reconciler.api.status import ExitInfo, HealthState
from reconciler.api.checks import HealthCheck
from reconciler.base.redact import redact
from reconciler.diff.activation import on_demand_step, restarts_on_exit
from reconciler.diff.engines import Blocked
from reconciler.diff.footprint import ModelView
from reconciler.diff.health import unhealthy_cause
from reconciler.load.desired import DesiredEntry, DesiredState
from reconciler.observe.listening import ObservedListens
from reconciler.observe.processes import ProcessObservation, ProcessState


class Verb(str, Enum):
    create = "create"
    update = "update"
    recreate = "recreate"
    stop = "stop"  # ends an unhealthy process; its restart policy and back-off decide the next start
    delete = "delete"
    none = "none"


class OpKind(str, Enum):
    fetch = "fetch"  # a Model's chosen variant is not on this host: its bytes are fetched into the cache, verified
    pull = "pull"  # a container image not on this host is fetched by the engine
    stop = "stop"  # what runs ends; a stop before a start also clears what an ended run left
    start = "start"
    remove = "remove"  # stopped and forgotten: the resource is deleted


@dataclass(frozen=True)
class Operation:
    """One step a driver executes, and why: an action is the operations it takes, in order."""

    kind: OpKind
    cause: str
    keep: bool = False  # a stop that leaves the ended run on record (its restart policy and back-off take over)

    def describe(self) -> dict[str, str]:
        return {"op": self.kind.value, "cause": self.cause}


@dataclass(frozen=True)
class Hold:
    """Why a resource is left exactly as it runs: the reason is a condition reason (CamelCase)."""

    reason: str
    message: str


@dataclass(frozen=True)
class Action:
    key: ResourceKey
    verb: Verb
    cause: str
    generation: int | None = None
    launch: LaunchSpec | ContainerLaunch | None = None
    retry_at: datetime | None = None
    hold: Hold | None = None
    orphaned: bool = False  # gone from the desired state but kept running on purpose
    blocked: Blocked | None = None  # it cannot start on this host, and why
    failure_reason: str | None = None  # a stop for a failed health check: Unhealthy or StartupTimeout
    idle: bool = False  # an on-demand workload that activation leaves (or stops) not running
    replaces: bool = False  # a start ends (or clears what is left of) the run observed first
    fetch: str | None = None  # a Model's chosen variant is fetched: which, from where, why it is absent

    @property
    def changes_something(self) -> bool:
        return self.verb is not Verb.none

    @property
    def operations(self) -> tuple[Operation, ...]:
        """What the drivers do for this action, each step with its cause (a hold or a refusal does none)."""
        if self.verb is Verb.delete:
            return (Operation(OpKind.remove, self.cause),) if self.key.kind == "Workload" else ()
        if self.verb is Verb.stop:
            return (Operation(OpKind.stop, self.cause, keep=True),)
        if self.fetch is not None:
            return (Operation(OpKind.fetch, self.fetch),)
        if self.verb not in (Verb.create, Verb.recreate) or self.launch is None:
            return ()
        steps = []
        if self.replaces:
            steps.append(Operation(OpKind.stop, "replaced by the new start" if self.verb is Verb.recreate
                                   else "what the ended run left is cleared before the new start"))
        if isinstance(self.launch, ContainerLaunch) and self.launch.pull:
            steps.append(Operation(OpKind.pull, f"image {self.launch.image} is not on this host"))
        steps.append(Operation(OpKind.start, self.cause))
        return tuple(steps)


@dataclass(frozen=True)
class Inputs:
    """Everything the diff knows about one resource."""

    key: ResourceKey
    desired: DesiredEntry | None
    record: ResourceRecord | None
    process: ProcessObservation | None = None
    launch: LaunchSpec | ContainerLaunch | None = None
    # Why the desired state's new version of this resource is not used. The caller then passes the last
    # valid version as `desired`, so it keeps being reconciled (restarted after a crash) as it was.
    hold: Hold | None = None
    blocked: Blocked | None = None  # what stops it from starting here (then `launch` is None)
    check: HealthCheck | None = None
    health: HealthState | None = None  # probe results so far, for the running process
    listening: ObservedListens | None = None  # what the running native process tree listens on
    demand: Demand | None = None  # an on-demand workload: the requests the gateway has for it
    room: str | None = None  # an on-demand start waits: why (memory or GPUs that busy on-demand workloads hold)
    model: ModelView | None = None  # a Model: the variant this host uses, and whether its bytes are here


def next_generation(record: ResourceRecord | None, desired: DesiredEntry) -> int:
    if record is None:
        return 1
    return record.generation if record.spec_hash == desired.spec_hash else record.generation + 1


def prerequisites(keys: Iterable[ResourceKey], desired: DesiredState,
                  records: Mapping[ResourceKey, ResourceRecord]) -> dict[ResourceKey, frozenset[ResourceKey]]:
    """The plan's edges: the keys each key is reconciled after, within one round. A Workload comes after the
    Model it serves (made present and verified first, so it starts on it in the same pass) and after the Policy
    (whose new version, or removal, judges it). Its model is the desired version's, else the one on record."""
    keys = set(keys)
    policies = {key for key in keys if key.kind == "Policy"}
    edges = {}
    for key in keys:
        if key.kind != "Workload":
            continue
        entry, record = desired.resources.get(key), records.get(key)
        if entry is not None and isinstance(entry.resource, Workload):
            model = entry.resource.spec.model
        else:
            model = record.resource.get("spec", {}).get("model") if record is not None else None
        served = {ResourceKey("Model", model)} & keys if isinstance(model, str) else set()
        edges[key] = frozenset(policies | served)
    return edges


def plan_resource(inputs: Inputs, now: datetime) -> Action:
    hold, record = inputs.hold, inputs.record
    if hold is None:
        return _plan(inputs, now)
    if record is None:
        return Action(inputs.key, Verb.none, hold.message, hold=hold)
    kept = f"{hold.message}; generation {record.generation} stays in force"
    if inputs.desired is None:
        return Action(inputs.key, Verb.none, kept, record.generation, hold=hold)
    action = _plan(inputs, now)
    return replace(action, cause=f"{action.cause} ({kept})", hold=hold)


def _plan(inputs: Inputs, now: datetime) -> Action:
    key, desired, record = inputs.key, inputs.desired, inputs.record
    if desired is None:
        return _plan_removal(inputs)
    generation = next_generation(record, desired)
    if not isinstance(desired.resource, Workload):
        fetch = _fetch_cause(inputs.model) if inputs.hold is None else None
        if record is None:
            return Action(key, Verb.create, "new resource", generation, fetch=fetch)
        if generation != record.generation:
            return Action(key, Verb.update, _spec_change(record, desired), generation, fetch=fetch)
        if fetch is not None:  # made present again, as a workload that ended is started again
            return Action(key, Verb.create, fetch, generation, fetch=fetch)
        return Action(key, Verb.none, "up to date", generation)
    return _plan_workload(inputs, desired.resource, generation, now)


def _fetch_cause(view: ModelView | None) -> str | None:
    """Which variant is fetched, from where, and why it is absent; None when nothing is to be fetched now."""
    if view is None or view.absent is None or view.variant is None:
        return None
    return f"variant {view.variant.name} from {redact(view.variant.source)}: {view.absent}"


def _plan_workload(inputs: Inputs, workload: Workload, generation: int, now: datetime) -> Action:
    key, record, observed, launch, blocked = inputs.key, inputs.record, inputs.process, inputs.launch, inputs.blocked
    assert observed is not None and (launch is not None or blocked is not None)
    waiting = _backing_off(record, generation, now)
    running = observed.record
    if observed.state is ProcessState.unknown:  # it may well run: neither start a second nor call it gone
        problem = observed.problem or "its state cannot be observed"
        cause = f"left as it is: {problem}" if record is not None else problem
        return Action(key, Verb.none, cause, generation, blocked=Blocked("EngineUnavailable", problem))
    step = on_demand_step(workload, inputs.demand, observed, inputs.room, blocked, now)
    if step is not None:
        return Action(key, Verb.stop if step.stop else Verb.none, step.cause, generation, idle=True)
    ended = observed.exit if observed.state is ProcessState.exited else None
    if blocked is not None and ended is not None and record is not None and generation == record.generation \
            and not restarts(workload, ended, stopped_as_failed(record, ended)):
        policy = workload.spec.restart.policy.value  # ended for good: what a start would need is moot
        return Action(key, Verb.none, f"{ended.describe()}; restart policy {policy} does not restart it", generation)
    if blocked is not None and (observed.state is not ProcessState.running or running is None):
        return Action(key, Verb.none, blocked.message, generation, blocked=blocked)
    if blocked is not None:
        return Action(key, Verb.none, f"running; a new start would fail: {blocked.message}", generation, blocked=blocked)
    assert launch is not None
    if observed.state is ProcessState.absent or running is None:
        if waiting and record is not None:
            failure = record.last_failure.message if record.last_failure else "a failed start"
            return Action(key, Verb.none, f"back-off: {failure}; {_next_start(record)}", generation, retry_at=record.next_retry_at)
        return Action(key, Verb.create, _why_absent(observed), generation, launch, replaces=running is not None)
    changed = launch.changed_fields(running.launch)
    if observed.state is ProcessState.running:
        if changed == [_EXECUTABLE] and launch.executable is None:
            return Action(key, Verb.none, f"running; {launch.command[0]} is not found now, so the running process is kept", generation)
        if changed:
            return Action(key, Verb.recreate, _why_relaunch(record, inputs.desired, changed), generation, launch,
                          replaces=True)
        if inputs.check is not None:
            unhealthy = unhealthy_cause(inputs.check, inputs.health, running.pid, running.started_at, now)
            if unhealthy is not None:
                return Action(key, Verb.stop, unhealthy[1], generation, failure_reason=unhealthy[0])
        if record is not None and generation != record.generation:
            return Action(key, Verb.update, _spec_change(record, inputs.desired), generation)
        return Action(key, Verb.none, "running", generation)
    exit_info = observed.exit
    assert exit_info is not None
    if changed:
        return Action(key, Verb.create, f"{_why_relaunch(record, inputs.desired, changed)}; the old process had ended",
                      generation, launch, replaces=True)
    if not restarts(workload, exit_info, stopped_as_failed(record, exit_info)):
        return Action(key, Verb.none, f"{exit_info.describe()}; restart policy {workload.spec.restart.policy.value} does not restart it", generation)
    ended = exit_info.describe()
    if stopped_as_failed(record, exit_info) and record is not None and record.last_failure is not None:
        ended = f"stopped by the reconciler: {record.last_failure.message}"
    if waiting and record is not None:
        return Action(key, Verb.none, f"back-off: {ended}; {_next_start(record)}", generation, retry_at=record.next_retry_at)
    return Action(key, Verb.create, ended, generation, launch, replaces=True)


def _next_start(record: ResourceRecord) -> str:
    """When, as a time: a countdown made each pass's cause (and so its decision) new, and a hold seen by every
    resync during a back-off wrote a fresh evidence line each time; in a status file it went stale at once."""
    assert record.next_retry_at is not None
    return f"next start at {record.next_retry_at.astimezone(timezone.utc):%H:%M:%S} UTC"


def _why_absent(observed: ProcessObservation) -> str:
    if observed.vanished:  # ours are kept until the reconciler replaces or removes them
        return f"{observed.vanished} is gone: removed outside the reconciler"
    return "not running"


def restarts(workload: Workload, exit_info: ExitInfo, stopped_as_failed: bool = False) -> bool:
    """Always restarts; OnFailure only after a known failure (an unknown exit code is not one, a process we
    stopped for failing its health check is, whatever code it exited with); Never never."""
    policy = workload.spec.restart.policy
    failed = exit_info.failed is True or stopped_as_failed
    return policy is RestartPolicy.always or (policy is RestartPolicy.on_failure and failed)


def stopped_as_failed(record: ResourceRecord | None, exit_info: ExitInfo) -> bool:
    failure = record.last_failure if record else None
    return failure is not None and failure.pid == exit_info.pid


def _backing_off(record: ResourceRecord | None, generation: int, now: datetime) -> float:
    """Seconds left to wait before the next start; a changed spec never waits."""
    if record is None or record.next_retry_at is None or generation != record.generation:
        return 0.0
    return max(0.0, (record.next_retry_at - now).total_seconds())


def _plan_removal(inputs: Inputs) -> Action:
    key, record = inputs.key, inputs.record
    if is_orphan_kept(record):
        cause = f"removed from the desired state, but {PRUNE_ANNOTATION}: disabled keeps it running"
        return Action(key, Verb.none, cause, record.generation if record else None, orphaned=True)
    return Action(key, Verb.delete, "removed from the desired state", record.generation if record else None)


def is_orphan_kept(record: ResourceRecord | None) -> bool:
    annotations = (record.resource.get("metadata", {}) if record else {}).get("annotations", {})
    return annotations.get(PRUNE_ANNOTATION) == "disabled"


def _spec_change(record: ResourceRecord, desired: DesiredEntry | None) -> str:
    assert desired is not None
    try:
        before = asked_spec(KINDS[record.kind].model_validate(record.resource))
    except ValidationError:  # written by a version that allowed what this one refuses
        return "spec changed"
    paths = _changed_paths(before, asked_spec(desired.resource), "spec")
    return ", ".join(paths) + " changed" if paths else "spec changed"


def _why_relaunch(record: ResourceRecord | None, desired: DesiredEntry | None, changed: list[str]) -> str:
    """Name the spec fields the user edited; if none (a PATH lookup, a GPU reassignment), what changed instead."""
    if record is not None and desired is not None and record.spec_hash != desired.spec_hash:
        return _spec_change(record, desired)
    return f"{', '.join(changed)} changed"


def _changed_paths(before: object, after: object, prefix: str) -> list[str]:
    if isinstance(before, dict) or isinstance(after, dict):  # an absent section is an all-default one
        before = before if isinstance(before, dict) else {} if before is None else before
        after = after if isinstance(after, dict) else {} if after is None else after
    if isinstance(before, dict) and isinstance(after, dict):
        return [path for name in sorted(before.keys() | after.keys())
                for path in _changed_paths(before.get(name), after.get(name), f"{prefix}.{name}")]
    return [] if before == after else [prefix]


def note_observations(
    record: ResourceRecord, generation: int, exit_info: ExitInfo | None, workload: Workload, demand: Demand | None = None
) -> ResourceRecord:
    """Bring a record up to what was observed: a new generation starts its back-off afresh; a new exit is counted once.
    `demand`: an on-demand workload's requests (one that ended with none waiting is idle, not failed)."""
    if generation != record.generation:
        record = record.model_copy(update={"consecutive_failures": 0, "next_retry_at": None, "last_failure": None})
    if exit_info is None:
        return record
    seen = record.last_exit
    if seen is not None and seen.same_exit(exit_info):
        return record
    record = record.model_copy(update={"last_exit": exit_info})
    if stopped_as_failed(record, exit_info):
        return record  # we stopped it for failing its checks: its retry was scheduled then
    if not restarts(workload, exit_info) or not restarts_on_exit(workload, demand, exit_info):
        return record.model_copy(update={"next_retry_at": None})
    return schedule_retry(record, exit_info.finished_at, exit_info.ran_seconds, workload)


def schedule_retry(record: ResourceRecord, failed_at: datetime, ran_seconds: float, workload: Workload) -> ResourceRecord:
    """Exponential back-off: initial * 2^(n-1), capped; a run longer than resetAfter starts the count afresh."""
    backoff = workload.spec.restart.backoff
    failures = 0 if ran_seconds >= backoff.reset_after_seconds else record.consecutive_failures
    failures += 1
    delay = min(backoff.max_seconds, backoff.initial_seconds * 2 ** (failures - 1))
    return record.model_copy(update={
        "consecutive_failures": failures, "next_retry_at": failed_at + timedelta(seconds=delay),
    })
