"""Record a pass: the decision before anything is done, then its outcome, the Runtime Decision Record, the
status, the record kept, and the gateway's routes.

Three evidence lines, never confused: the *decision* (written before acting, so a crash mid-action leaves it
on record), the *outcome* of an executed change, and a *change of the Runtime Decision Record* (the document
that says where and why a workload runs, written only when it differs from the last one).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from reconciler.api.kinds import Workload
from reconciler.api.meta import ResourceKey
from reconciler.api.resource_record import ResourceRecord
from reconciler.api.status import FailureInfo, Placement, ResourceStatus
from reconciler.control.assembly import Parts
from reconciler.control.evidence import (acceleration_record, decision_digest, decision_record, exposure_record,
                                         outcome_record)
from reconciler.control.execution import Executed, proven_pins
from reconciler.control.logfmt import about
from reconciler.control.loop import STORAGE_ERRORS
from reconciler.control.placement import consented, model_facts, workload_decision_record
from reconciler.control.planning import Planned, maybe_container
from reconciler.diff.plan import Operation
from reconciler.gate.verdict import Decision
from reconciler.load.desired import DesiredState
from reconciler.observe import clock
from reconciler.record.decision_record import record_digest
from reconciler.record.recorder import sibling
from reconciler.record.status import PassOutcome, conclude

log = logging.getLogger("reconciler")


@dataclass(frozen=True)
class Recorded:
    record: ResourceRecord
    status: ResourceStatus
    rollout_look: float | None  # seconds until the rollout wants another look
    rolled_back: bool  # this pass rolled a generation back: the known-good version is restored next


def record_decision_before_acting(parts: Parts, planned: Planned, now: datetime) -> str | None:
    """Write the decision before acting, so a crash mid-action still leaves it on record; returns its digest
    (None when there is no decision: nothing to change, hold or keep)."""
    action = planned.action
    if not (action.changes_something or action.hold or action.orphaned):
        return None
    digest = decision_digest(action, planned.verdict)
    record = planned.record
    if already_on_record(planned, digest):
        return digest
    source = _evidence_file(planned)
    if source is not None:
        line = decision_record(action, planned.verdict, record, now, parts.host.digest)
        if planned.model is not None and planned.model.selection is not None:
            line["modelSelection"] = planned.model.selection.message  # what was chosen, and why not the others
        # vouched for before its line is written: a kill between the two leaves a vouch naming no line (settled at
        # restart), never a decision the state directory does not vouch for, which no restart would close
        refused: list[OSError] = []

        def vouch(decision: str) -> None:
            try:
                parts.remembered.store.vouch(action.key, decision)
            except OSError as error:  # the state directory is full or gone: the decision is recorded as failed
                refused.append(error)

        parts.recorder.evidence(source, line, before_write=vouch if planned.executed else None)
        if refused:
            record_failed_acting(parts, planned, [], refused[0])
            raise refused[0]
    return digest


def _evidence_file(planned: Planned) -> str | None:
    record = planned.record
    return planned.inputs.desired.file if planned.inputs.desired else (record.source if record else None)


def record_failed_acting(parts: Parts, planned: Planned, ran: list[Operation], error: Exception) -> None:
    """The outcome of an action whose pass raised once acting began (its state could not be written, a driver's
    record was refused): an outcome always follows a decision acted on, and this one is a failure, not a crash.
    If this line cannot be written either, the next start closes the decision as cut short."""
    source = _evidence_file(planned)
    if not planned.executed or source is None:
        return
    storage = isinstance(error, OSError) and error.errno in STORAGE_ERRORS
    failure = FailureInfo(reason="StorageUnavailable" if storage else "ReconcileError",
                          message=str(error) or type(error).__name__, at=clock.now())
    try:
        generation = planned.action.generation or (planned.record.generation if planned.record else 1)
        parts.recorder.evidence(source, outcome_record(planned.action, generation, failure, None, failure.at, ran=ran))
        parts.remembered.store.settled(planned.action.key)
    except OSError as unwritten:
        log.error("%s: the outcome of its failed action is not on record either: %s", planned.action.key, unwritten,
                  **about(planned.action.key))


def already_on_record(planned: Planned, digest: str | None) -> bool:
    """Whether this plan's decision is the same refusal or hold already on record (seen again by a resync)."""
    return digest is not None and not planned.executed and planned.record is not None and digest == planned.record.last_decision


def log_decision(planned: Planned, digest: str | None, executed: Executed) -> None:
    """A change (or its refusal) in the daemon's log: a refusal seen again (each resync) is news once."""
    action, failure = planned.action, executed.failure
    if not action.changes_something:
        return
    outcome = f"failed: {failure.message}" if failure else ("done" if planned.executed else "not done")
    log.log(logging.DEBUG if already_on_record(planned, digest) else logging.INFO, "%s: %s (%s) -> %s, %s", action.key,
            action.verb.value, action.cause, planned.verdict.decision.value if planned.verdict else "-", outcome,
            **about(action.key))


def runtime_decision_record(parts: Parts, planned: Planned, desired: DesiredState) -> dict[str, Any] | None:
    """The Runtime Decision Record of a workload, from the facts this plan observed."""
    entry = planned.inputs.desired
    if planned.placement is None or entry is None or not isinstance(entry.resource, Workload):
        return None
    workload, snapshot = entry.resource, planned.snapshot or desired
    model = model_facts(workload, parts.workloads.model_view(snapshot, workload))
    placement, verdict, process = planned.placement, planned.verdict, planned.inputs.process
    if placement.placement is Placement.local and verdict is not None and verdict.decision is Decision.deny \
            and (process is None or process.running_pid is None):  # as its status says: it may not run here
        reasons = "; ".join(str(reason) for reason in verdict.reasons)
        placement = replace(placement, placement=Placement.unavailable, reason="PolicyDenied",
                            message=f"the policy does not allow it to run here: {reasons}")
    return workload_decision_record(
        workload, placement, planned.secret, parts.holds.policy_in_force(snapshot), parts.host.profile, model,
        channel=parts.channel, state_dir=parts.state_dir,
        evidence_file=parts.root / sibling(entry.file, ".evidence.jsonl"), log_file=parts.log_file(planned.action.key),
        endpoint=planned.rendered.endpoint, consented=consented(planned.consent, entry.spec_hash),
    )


def _digested_record(parts: Parts, key: ResourceKey, document: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The record and its digest; while it equals, as data, the last one of this resource, that one (the same object:
    the status file's comparison with what it holds is then an identity check) and its digest. Every reconcile makes
    the record anew: serialising and hashing an unchanged one was 4 % of an idle resync, comparing it deeply 3 %."""
    last = parts.decision_records.get(key)
    if last is not None and last[0] == document:
        return last
    digested = parts.decision_records[key] = (document, record_digest(document))
    return digested


def record_runtime_decision_change(parts: Parts, record: ResourceRecord, document: dict[str, Any],
                                   now: datetime) -> ResourceRecord:
    """Each change of a Runtime Decision Record is evidence; an unchanged one is not written again."""
    digest = _digested_record(parts, record.key, document)[1]
    if digest == record.decision_record_digest:
        return record
    parts.recorder.evidence(record.source, {
        "time": now.isoformat(), "resource": str(record.key), "generation": record.generation,
        "event": "decision-record", "digest": digest, "hostProfile": parts.host.digest, "record": document,
    })
    return record.model_copy(update={"decision_record_digest": digest})


def describe(parts: Parts, planned: Planned, desired: DesiredState,
             now: datetime) -> tuple[ResourceRecord, ResourceStatus] | None:
    """The remembered record judged against what this plan observed, nothing done: a status, a seed."""
    concluded = conclude_pass(parts, planned, None, now)
    if concluded is None:
        return None
    document = runtime_decision_record(parts, planned, desired)
    rollout = parts.rollouts.on_record(planned.asked, planned.record)
    return concluded[0], concluded[1].model_copy(update={"decision_record": document, "rollout": rollout})


def conclude_pass(parts: Parts, planned: Planned, executed: Executed | None,
                  now: datetime) -> tuple[ResourceRecord, ResourceStatus] | None:
    """The record and status this pass leads to (None: nothing is kept, e.g. a resource never recorded);
    `executed` None: nothing was done, what was observed stands."""
    before = planned.inputs.process
    failure, after = (executed.failure, executed.after) if executed is not None else (None, before)
    outcome = PassOutcome(planned.action, planned.verdict, executed is not None and planned.executed, failure, before,
                          after, planned.model, planned.rendered, planned.placement, planned.listens)
    return conclude(planned.record, planned.inputs.desired, outcome, now, parts.log_file(planned.action.key))


def record_outcome(parts: Parts, planned: Planned, executed: Executed, concluded: tuple[ResourceRecord, ResourceStatus],
                   digest: str | None, desired: DesiredState, now: datetime) -> Recorded:
    """Evidence of what was done and seen, then the record kept and the status written (both atomically)."""
    action, (record, status) = planned.action, concluded
    if planned.executed:
        parts.recorder.evidence(record.source, outcome_record(action, record.generation, executed.failure, executed.after,
                                                              clock.now(), ran=executed.ran,
                                                              under_way=executed.under_way))
        parts.remembered.store.settled(action.key)
    if digest is not None:
        record = record.model_copy(update={"last_decision": digest})
    if planned.listens is not None and record.exposure != (planned.record.exposure if planned.record else None):
        parts.recorder.evidence(record.source, exposure_record(action, record.generation, planned.listens, now))
    if (placed := acceleration_record(planned.record, record, status, now)) is not None:
        parts.recorder.evidence(record.source, placed)
    document = runtime_decision_record(parts, planned, desired)
    if document is not None:
        document = _digested_record(parts, record.key, document)[0]
        status = status.model_copy(update={"decision_record": document})
        record = record_runtime_decision_change(parts, record, document, now)
    waiting = planned.verdict is not None and planned.verdict.decision is Decision.needs_approval
    record, status, rollout_look = parts.rollouts.after_pass(
        planned.asked, record, status, action.hold, waiting, now, lambda: proven_pins(parts, planned, desired, executed.after))
    rolled_back = record.rolled_back is not None and (planned.record is None or planned.record.rolled_back != record.rolled_back)
    # the status first: a route published between the two (another worker's pass) must never pair a new spec's hash
    # with a status judged for the old one, which would send to a provider under a spec nobody consented to
    parts.recorder.set_status(record.source, status)
    parts.remembered.remember(record)
    parts.recorder.flush({record.source} | ({planned.record.source} if planned.record else set()))
    if action.key.kind == "Workload":
        parts.drivers.trim_log(action.key.name, maybe_container(planned.inputs.desired, planned.record))
    return Recorded(record, status, rollout_look, rolled_back)


def measure(parts: Parts, planned: Planned, failure: FailureInfo | None, status: ResourceStatus | None,
            started: float) -> None:
    if parts.metrics is not None:
        parts.metrics.reconciled(planned.action, planned.verdict, planned.executed, failure is not None, status,
                                 time.monotonic() - started)
