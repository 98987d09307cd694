"""The record stage's arithmetic: next remembered record and reported status of one resource. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from reconciler.api.activation import IDLE_PHASE
from reconciler.api.kinds import RestartPolicy, Workload
from reconciler.api.launch import ContainerLaunch
from reconciler.api.resource_record import ResourceRecord
from reconciler.api.status import ConditionStatus, ExitInfo, FailureInfo, ObservedExposure, Placement, ResourceStatus
from reconciler.base.redact import redact
from reconciler.diff.acceleration import Acceleration
from reconciler.diff.engines import Rendered
from reconciler.diff.health import NOT_READY
from reconciler.diff.footprint import ModelView
from reconciler.diff.plan import Action, schedule_retry
from reconciler.diff.rollout import ROLLED_BACK
from reconciler.gate.network import ListenFindings, at_most
from reconciler.gate.placement import PlacementDecision
from reconciler.gate.verdict import EXPOSURE_OBSERVED, POLICY_DENIED, Decision, Verdict, refused_only_for_listening
from reconciler.load.desired import DesiredEntry
from reconciler.observe.processes import ProcessObservation, ProcessState
from reconciler.record.conditions import set_condition

ENGINE_UNAVAILABLE = "EngineUnavailable"
REFUSED_WHILE_RUNNING = frozenset({POLICY_DENIED, EXPOSURE_OBSERVED})
LISTENING = "Listening"  # the condition on what a native workload was seen listening on
ACCELERATED = "Accelerated"  # the condition on whether an engine given a GPU really uses it
DEGRADED = "Degraded"  # runs, but not as asked: on the CPU instead of its GPU

# How `apply --wait` reads a workload's phase.
FAILED_PHASES = frozenset({"Failed", "BackOff", "Denied", "Exited", "Blocked", ROLLED_BACK, DEGRADED})
SUCCEEDED_PHASES = frozenset({"Succeeded", IDLE_PHASE})  # Idle: an on-demand workload waits for a request


@dataclass(frozen=True)
class PassOutcome:
    """Everything one reconcile of one resource planned, decided, did and saw."""

    action: Action
    verdict: Verdict | None
    executed: bool
    failure: FailureInfo | None = None
    before: ProcessObservation | None = None
    after: ProcessObservation | None = None
    model: ModelView | None = None
    rendered: Rendered = Rendered()
    placement: PlacementDecision | None = None
    listens: ListenFindings | None = None


@dataclass(frozen=True)
class _Assessment:
    ready: bool
    reason: str
    message: str
    phase: str


def conclude(
    record: ResourceRecord | None, desired: DesiredEntry | None, outcome: PassOutcome, now: datetime, log_file: str | None
) -> tuple[ResourceRecord, ResourceStatus] | None:
    """The record to remember after this pass and the status to report; None for what was never ours."""
    action = outcome.action
    if record is None:
        if desired is None or action.hold is not None:
            return None  # a rejected resource that never ran: its errors are in its file's status already
        record = ResourceRecord(
            kind=action.key.kind, name=action.key.name, source=desired.file, generation=action.generation or 1,
            spec_hash=desired.spec_hash, resource=desired.document, created_at=now,
        )
    if desired is not None and action.hold is None:
        record = record.model_copy(update={
            "source": desired.file, "generation": action.generation, "spec_hash": desired.spec_hash,
            "resource": desired.document, "observed_generation": action.generation,
        })
    record = _count_start(record, desired, outcome, now)
    running = outcome.after.running_pid if outcome.after is not None else None
    if record.recovered is not None and record.recovered.pid != running:  # what the restart found is no longer so
        record = record.model_copy(update={"recovered": None})
    assessment = _assess(record, outcome, now)
    conditions = record.conditions
    if action.hold is not None:
        conditions = set_condition(conditions, "Accepted", False, action.hold.reason, action.cause, now)
    else:
        conditions = set_condition(conditions, "Accepted", True, "Valid", "", now)
    if outcome.verdict is not None:
        conditions = _policy_condition(conditions, outcome.verdict, now)
    conditions = set_condition(conditions, "Ready", assessment.ready, assessment.reason, assessment.message, now)
    accelerated = _serving_acceleration(outcome)
    if accelerated is not None:
        status = ConditionStatus.unknown if accelerated.ok is None else accelerated.ok
        conditions = set_condition(conditions, ACCELERATED, status, accelerated.reason, accelerated.message, now)
    record = record.model_copy(update={"conditions": conditions})
    if outcome.listens is not None:
        record = _note_listening(record, outcome, outcome.listens, now)
    return record, _render(record, outcome, assessment, log_file)


def _count_start(record: ResourceRecord, desired: DesiredEntry | None, outcome: PassOutcome, now: datetime) -> ResourceRecord:
    action = outcome.action
    if outcome.executed and action.failure_reason is not None and outcome.before and outcome.before.record:
        assert desired is not None and isinstance(desired.resource, Workload)
        before = outcome.before.record
        failure = FailureInfo(reason=action.failure_reason, message=action.cause, at=now, pid=before.pid)
        record = record.model_copy(update={"last_failure": failure, "next_retry_at": None})
        if desired.resource.spec.restart.policy is RestartPolicy.never or action.failure_reason in REFUSED_WHILE_RUNNING:
            return record  # a refused workload waits for the policy (or a new spec), not for a back-off
        return schedule_retry(record, now, (now - before.started_at).total_seconds(), desired.resource)
    if not outcome.executed or action.launch is None:
        return record
    if outcome.failure is not None:
        assert desired is not None and isinstance(desired.resource, Workload)
        record = record.model_copy(update={"last_failure": outcome.failure})
        if outcome.failure.reason == ENGINE_UNAVAILABLE:
            return record  # not the workload's failure: no back-off; the engine's return triggers the next pass
        return schedule_retry(record, now, 0.0, desired.resource)
    restarted = outcome.before is not None and outcome.before.state is ProcessState.exited
    return record.model_copy(update={
        "restart_count": record.restart_count + int(restarted), "next_retry_at": None, "last_failure": None,
        "endpoint": outcome.rendered.endpoint,
    })


def _policy_condition(conditions: list, verdict: Verdict, now: datetime) -> list:
    reasons = "; ".join(str(reason) for reason in verdict.reasons)
    if verdict.decision is Decision.approve and verdict.audited:
        would = "; ".join(str(reason) for reason in verdict.audited)
        return set_condition(conditions, "PolicyApproved", True, "Audited", f"applied in audit mode; enforce would refuse: {would}", now)
    if verdict.decision is Decision.approve:
        return set_condition(conditions, "PolicyApproved", True, "Approved", reasons, now)
    reason = "Denied" if verdict.decision is Decision.deny else "PendingApproval"
    return set_condition(conditions, "PolicyApproved", False, reason, reasons, now)


def _assess(record: ResourceRecord, outcome: PassOutcome, now: datetime) -> _Assessment:
    if record.kind == "Model":
        view = outcome.model
        selection = view.selection if view is not None else None  # when nothing is chosen, the problem says why
        chosen = f"; {selection.message}" if selection is not None and selection.chosen is not None else ""
        if view is not None and view.problem is not None:
            phase = {"Downloading": "Downloading", "NoVariantFits": "Unavailable"}.get(view.problem.reason, "Failed")
            return _Assessment(False, view.problem.reason, view.problem.message + chosen, phase)
        presence = view.presence if view else None
        if presence is not None and presence.present:
            return _Assessment(True, "Present", f"{presence.path} ({presence.size} bytes){chosen}", "Available")
        return _Assessment(False, "ModelMissing", f"{presence.path if presence else 'model'}: no such file", "Missing")
    if record.kind == "Policy":
        return _Assessment(True, "InForce", "governs this host", "InForce")
    action, observed = outcome.action, outcome.after
    if outcome.failure is not None:
        return _Assessment(False, outcome.failure.reason, outcome.failure.message, "BackOff" if record.next_retry_at else "Failed")
    decided = outcome.placement
    if decided is not None and decided.placement is Placement.hosted:
        return _Assessment(True, decided.reason, decided.message, "Hosted")
    serving = observed.record.pid if observed is not None and observed.state is ProcessState.running \
        and observed.record is not None else None
    if serving is None and outcome.verdict is not None and refused_only_for_listening(outcome.verdict):
        return _Assessment(False, EXPOSURE_OBSERVED, "; ".join(str(r) for r in outcome.verdict.reasons), "Denied")
    if outcome.verdict is not None and not outcome.verdict.approved:
        pending = outcome.verdict.decision is Decision.needs_approval
        reasons = "; ".join(str(r) for r in outcome.verdict.reasons)
        if serving is not None:  # the version before keeps serving: Ready is about it, PolicyApproved about the update
            kept = _running(record, outcome, serving)
            waits = "the update waits for approval" if pending else "the update is denied"
            return _Assessment(kept.ready, kept.reason, f"{kept.message}; {waits}: {reasons}",
                               "PendingApproval" if pending else "Denied")
        if pending:
            return _Assessment(False, "PendingApproval", reasons, "PendingApproval")
        return _Assessment(False, "PolicyDenied", reasons, "Denied")
    if decided is not None and decided.provider is not None and decided.placement is Placement.unavailable:
        return _Assessment(False, decided.reason, decided.message, "Blocked")  # the fallback was weighed: say why not
    if serving is not None:
        return _running(record, outcome, serving)
    if action.idle:  # on demand, not running: not a failure, and a request starts it
        return _Assessment(False, IDLE_PHASE, action.cause, IDLE_PHASE)
    if action.blocked is not None:
        return _Assessment(False, action.blocked.reason, action.blocked.message, "Blocked")
    if observed is not None and observed.state is ProcessState.exited and observed.exit is not None:
        stopped = record.last_failure if record.last_failure and record.last_failure.pid == observed.exit.pid else None
        if stopped is not None and stopped.reason in REFUSED_WHILE_RUNNING:  # refused, not failed: no update failure
            return _Assessment(False, stopped.reason, stopped.message, "Denied")
        if stopped is not None:  # we stopped it for failing its checks
            return _Assessment(False, stopped.reason, action.cause, "BackOff" if record.next_retry_at else "Failed")
        return _exited(observed.exit, action)
    if action.retry_at is not None and record.last_failure is not None:
        return _Assessment(False, record.last_failure.reason, action.cause, "BackOff")
    return _Assessment(False, "NotRunning", action.cause, "Pending")


def _note_listening(record: ResourceRecord, outcome: PassOutcome, listens: ListenFindings, now: datetime) -> ResourceRecord:
    """The Listening condition; a run seen listening where the policy does not allow is remembered with its launch,
    so the gate judges that launch by it before starting it again."""
    if listens.refused:
        stopped = outcome.action.failure_reason == EXPOSURE_OBSERVED
        done = "stopped" if stopped else "recorded, not stopped (audit mode)" if not listens.enforced else "not allowed"
        condition = (False, EXPOSURE_OBSERVED, f"{done}: {'; '.join(listens.reasons)}")
    elif listens.undeclared:
        condition = (False, "ListenUndeclared", f"pid {listens.pid} listens on {', '.join(at_most(listens.undeclared))}"
                                                ", which spec.host/port do not declare")
    else:
        seen = ", ".join(at_most(listens.listening)) or "nothing"
        condition = (True, "AsDeclared" if listens.listening else "NotListening", f"pid {listens.pid} listens on {seen}")
    update: dict[str, object] = {"conditions": set_condition(record.conditions, LISTENING, *condition, now)}
    before = outcome.before.record if outcome.before is not None else None
    if listens.refused and before is not None and before.pid == listens.pid:
        update["exposure"] = ObservedExposure(pid=listens.pid, launch_digest=before.launch.digest,
                                              listening=listens.refused_listens)
    return record.model_copy(update=update)


def _serving_acceleration(outcome: PassOutcome) -> Acceleration | None:
    """Where the running engine put its model, while it runs."""
    running = outcome.after is not None and outcome.after.running_pid is not None
    return outcome.rendered.acceleration if running else None


def _running(record: ResourceRecord, outcome: PassOutcome, pid: int) -> _Assessment:
    later = f"; {outcome.action.blocked.message}" if outcome.action.blocked else ""
    accelerated = _serving_acceleration(outcome)
    if accelerated is not None and accelerated.off_the_gpu:  # serving, but not as asked: no client is sent to it
        return _Assessment(False, accelerated.reason, f"pid {pid}: {accelerated.message}{later}", DEGRADED)
    health = record.health if record.health is not None and record.health.pid == pid else None
    if outcome.rendered.check is None or health is not None and health.ready:
        live = f"pid {pid}: {health.message}" if outcome.rendered.check and health else f"pid {pid}"
        return _ready(record, outcome, pid, "Healthy" if outcome.rendered.check else "Running", live + later)
    if health is not None and health.ever_ready:
        return _Assessment(False, "Unhealthy", f"pid {pid}: {health.message}{later}", "Unhealthy")
    waiting = health.message if health else "waiting for the first health check"
    return _Assessment(False, "Starting", f"pid {pid}: {waiting}{later}", "Starting")


def _ready(record: ResourceRecord, outcome: PassOutcome, pid: int, reason: str, message: str) -> _Assessment:
    """A live process is Ready unless its readiness check (spec.readiness) has not passed: then it is NotReady, still
    Running (it is not restarted for it)."""
    if outcome.rendered.readiness is None:
        return _Assessment(True, reason, message, "Running")
    readiness = record.readiness if record.readiness is not None and record.readiness.pid == pid else None
    if readiness is not None and readiness.ready:
        return _Assessment(True, reason, f"{message}; ready: {readiness.message}", "Running")
    why = readiness.message if readiness else "waiting for the first readiness check"
    return _Assessment(False, NOT_READY, f"{message}; not ready: {why}", "Running")


def _exited(exit_info: ExitInfo, action: Action) -> _Assessment:
    if exit_info.oom_killed:
        return _Assessment(False, "OOMKilled", action.cause, "BackOff" if action.retry_at else "Failed")
    if action.retry_at is not None:
        return _Assessment(False, "BackOff", action.cause, "BackOff")
    if exit_info.failed is False:
        return _Assessment(False, "Completed", action.cause, "Succeeded")
    if exit_info.failed is None:
        return _Assessment(False, "ExitCodeUnknown", action.cause, "Exited")
    return _Assessment(False, "Failed", action.cause, "Failed")


def _render(record: ResourceRecord, outcome: PassOutcome, assessment: _Assessment, log_file: str | None) -> ResourceStatus:
    action, observed = outcome.action, outcome.after
    pid = observed.running_pid if observed else None
    placement = None
    if outcome.placement is not None and outcome.placement.placement is not Placement.local:
        placement = outcome.placement.placement
    elif record.kind == "Workload":
        cannot_run = pid is None and assessment.phase != IDLE_PHASE and (
            assessment.phase in ("Denied", "Blocked") or outcome.failure or record.last_failure)
        placement = Placement.unavailable if cannot_run else Placement.local
    # RolledBack only while the known-good version may run: one waiting for approval or refused says so instead
    rolled_back = action.hold is not None and action.hold.reason == ROLLED_BACK \
        and assessment.phase not in ("PendingApproval", "Denied")
    phase = "Orphaned" if action.orphaned else ROLLED_BACK if rolled_back else assessment.phase
    running = observed.record if pid and observed else None
    image = running.launch if running and isinstance(running.launch, ContainerLaunch) else None
    endpoint = (record.endpoint or outcome.rendered.endpoint) if pid else outcome.rendered.endpoint
    if placement is Placement.hosted and outcome.placement is not None:
        endpoint = outcome.placement.endpoint
    return ResourceStatus(
        kind=record.kind,
        name=record.name,
        generation=record.generation,
        observed_generation=record.observed_generation,
        phase=phase,
        placement=placement,
        message=action.cause if action.hold or action.orphaned else assessment.message,
        conditions=record.conditions,
        pid=pid,
        restart_count=record.restart_count,
        last_exit=record.last_exit,
        next_retry_time=None if pid or phase == "Denied" else record.next_retry_at,
        started_at=running.started_at if running else None,
        created_at=record.created_at,
        log_file=log_file,
        endpoints=[endpoint] if endpoint and assessment.ready else [],
        command=list(running.launch.argv) if running and running.launch.argv else None,
        gpus=list(running.launch.gpus) if running else None,
        health=record.health.message if running and record.health and record.health.pid == pid else None,
        listening=at_most(outcome.listens.listening) if pid and outcome.listens and outcome.listens.pid == pid else None,
        enforcement=running.enforcement or None if running else None,
        user=running.user if running else None,
        container_id=running.container_id if running else None,
        addresses=list(running.addresses) or None if running else None,
        image=image.image if image else None,
        image_id=image.image_id if image else None,
        artifact=_artifact(outcome.model) if record.kind == "Model" and outcome.model else None,
        acceleration=accelerated.report if pid and (accelerated := _serving_acceleration(outcome)) else None,
        recovered=record.recovered,
    )


def _artifact(view: ModelView) -> dict[str, object] | None:
    """Which variant, from where, verified by what, and how far its download is."""
    variant = view.variant
    if variant is None:
        return None
    shown: dict[str, object] = {"variant": variant.name, "source": redact(variant.source)}
    if variant.sha256:
        shown["sha256"] = variant.sha256
    if view.presence is not None and view.presence.present:
        shown |= {"path": str(view.presence.path), "size": view.presence.size}
    if view.progress is not None:
        shown["progress"] = {"done": view.progress[0], "total": view.progress[1]}
    if view.selection is not None and view.selection.estimate is not None:
        shown["estimate"] = view.selection.estimate.explanation
    return shown
