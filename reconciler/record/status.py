"""A resource's reported status, computed from what the pass planned, decided and observed. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from reconciler.api.kinds import Model, Policy
from reconciler.api.status import ConditionStatus, Placement, ResourceStatus
from reconciler.diff.plan import Action
from reconciler.drive.process import ProcessObservation, ProcessState
from reconciler.gate.verdict import Decision, Verdict
from reconciler.observe.host import ModelPresence
from reconciler.record.conditions import set_condition
from reconciler.record.store import ResourceRecord


@dataclass(frozen=True)
class Failure:
    reason: str
    message: str


@dataclass(frozen=True)
class PassOutcome:
    """Everything one reconcile of one resource produced."""

    action: Action
    verdict: Verdict | None
    failure: Failure | None
    process: ProcessObservation | None = None
    model: ModelPresence | None = None


def next_record_status(record: ResourceRecord, outcome: PassOutcome, kind: type, now: datetime) -> ResourceRecord:
    """The record with its conditions brought up to date (transition times kept where nothing flipped)."""
    conditions = list(record.conditions)
    action, verdict = outcome.action, outcome.verdict
    if action.held:
        conditions = set_condition(conditions, "Accepted", False, "Rejected", action.cause, now)
    else:
        conditions = set_condition(conditions, "Accepted", True, "Valid", "", now)
    if verdict is not None:
        reasons = "; ".join(str(reason) for reason in verdict.reasons)
        status = {Decision.approve: True, Decision.deny: False}.get(verdict.decision, ConditionStatus.false)
        reason = {Decision.approve: "Approved", Decision.deny: "Denied"}.get(verdict.decision, "PendingApproval")
        conditions = set_condition(conditions, "PolicyApproved", status, reason, reasons, now)
    ready, reason, message = _readiness(outcome, kind)
    conditions = set_condition(conditions, "Ready", ready, reason, message, now)
    return record.model_copy(update={"conditions": conditions})


def _readiness(outcome: PassOutcome, kind: type) -> tuple[bool, str, str]:
    if kind is Model:
        presence = outcome.model
        if presence is not None and presence.present:
            return True, "Present", f"{presence.path} ({presence.size} bytes)"
        return False, "ModelMissing", f"{presence.path if presence else 'model'}: no such file"
    if kind is Policy:
        return True, "InForce", "governs this host"
    if outcome.failure is not None:
        return False, outcome.failure.reason, outcome.failure.message
    if outcome.verdict is not None and not outcome.verdict.approved:
        return False, "PolicyDenied", "; ".join(str(reason) for reason in outcome.verdict.reasons)
    observed = outcome.process
    if observed is None or observed.state is ProcessState.absent or observed.record is None:
        return False, "NotRunning", outcome.action.cause
    if observed.state is ProcessState.running:
        return True, "Running", f"pid {observed.record.pid}"
    exit_info = observed.exit
    assert exit_info is not None
    if outcome.action.retry_at is not None:
        return False, "BackOff", outcome.action.cause
    return False, "Completed" if not exit_info.failed else "Failed", outcome.action.cause


def render_status(record: ResourceRecord, outcome: PassOutcome, log_file: str | None) -> ResourceStatus:
    ready = next(c for c in record.conditions if c.type == "Ready")
    observed = outcome.process
    running = observed is not None and observed.state is ProcessState.running and observed.record is not None
    denied = outcome.verdict is not None and not outcome.verdict.approved
    if record.kind == "Workload":
        placement = Placement.unavailable if denied or (outcome.failure and not running) else Placement.local
    else:
        placement = None
    return ResourceStatus(
        kind=record.kind,
        name=record.name,
        generation=record.generation,
        observed_generation=record.observed_generation,
        phase="Orphaned" if outcome.action.orphaned else _phase(ready.reason, ready.status is ConditionStatus.true),
        placement=placement,
        message=outcome.action.cause if outcome.action.held or outcome.action.orphaned else ready.message,
        conditions=record.conditions,
        pid=observed.record.pid if running and observed and observed.record else None,
        restart_count=record.restart_count,
        last_exit=record.last_exit,
        next_retry_time=None if running else record.next_retry_at,
        started_at=observed.record.started_at if running and observed and observed.record else None,
        created_at=record.created_at,
        log_file=log_file,
    )


def _phase(reason: str, ready: bool) -> str:
    if ready:
        return {"Present": "Available", "InForce": "InForce"}.get(reason, "Running")
    return {"BackOff": "BackOff", "Completed": "Succeeded", "PolicyDenied": "Denied", "NotRunning": "Pending",
            "ModelMissing": "Missing"}.get(reason, "Failed")
