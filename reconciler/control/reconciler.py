"""One reconcile of one resource: observe -> diff -> gate -> drive -> record.

`Reconciler.reconcile(key)` is the single entry point (controller-runtime's Reconcile); the
daemon's work queue guarantees it never runs twice at once for the same key.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from reconciler.api.kinds import KINDS, Model, Workload
from reconciler.api.meta import ResourceKey
from reconciler.diff.plan import Action, Inputs, Verb, account_exit, plan_resource, schedule_retry
from reconciler.drive.launch import render_launch
from reconciler.drive.process import ProcessDriver, ProcessObservation, ProcessState, StartFailed, terminate_group
from reconciler.gate.verdict import Verdict, decide
from reconciler.load.desired import DesiredState, load_desired
from reconciler.observe.host import observe_model, resolve_executable
from reconciler.record.recorder import Recorder
from reconciler.record.status import Failure, PassOutcome, next_record_status, render_status
from reconciler.record.store import ResourceRecord, StateStore

log = logging.getLogger("reconciler")


class DesiredStateUnreadable(Exception):
    pass


@dataclass(frozen=True)
class Planned:
    """A plan for one resource, with the verdict on it and the record the plan was made against."""

    action: Action
    verdict: Verdict | None
    inputs: Inputs
    record: ResourceRecord | None


class Reconciler:
    def __init__(
        self, root: Path, state_dir: Path, *, allow_empty: bool = False,
        on_exit: Callable[[str], None] | None = None, readonly: bool = False,
    ) -> None:
        self.root = root.resolve()
        self.shown_root = root  # as the user typed it: error messages name files this way
        self.store = StateStore(state_dir)
        self.processes = ProcessDriver(state_dir, on_exit=on_exit, readonly=readonly)
        self.recorder = Recorder(self.root)
        self.allow_empty = allow_empty
        self.desired = DesiredState(files=(), resources={})
        self.records = self.store.load_all()
        self._lock = threading.Lock()

    # -- load -------------------------------------------------------------------------------

    def refresh(self) -> DesiredState:
        """Take a new snapshot of the desired state; file-level errors go straight to status files."""
        if not self.root.is_dir():
            raise DesiredStateUnreadable(f"{self.root}: not a readable folder")
        previous = set(self.desired.files)
        self.desired = load_desired(self.shown_root)
        for file in previous | set(self.desired.files):
            self.recorder.set_file_errors(file, [str(error) for error in self.desired.errors.get(file, [])])
        self.recorder.flush(previous | set(self.desired.files))
        return self.desired

    def adopt(self) -> list[int]:
        """After a (re)start: end processes whose start was cut short, and watch the ones we own."""
        stray_pids = []
        for stray in self.processes.stray_processes():
            log.warning("stopping pid %d: started by an interrupted reconcile and never recorded", stray.pid)
            terminate_group(stray.pid, grace_seconds=5.0)
            stray_pids.append(stray.pid)
        for name in self.processes.owned_names():
            self.processes.watch(name)
        return stray_pids

    def keys(self) -> list[ResourceKey]:
        with self._lock:
            owned = set(self.records)
        return sorted(set(self.desired.resources) | set(self.desired.rejected) | owned)

    # -- observe, diff, gate (no changes to the host) ---------------------------------------

    def plan(self, key: ResourceKey, now: datetime) -> Planned:
        desired = self.desired.resources.get(key)
        with self._lock:
            record = self.records.get(key)
        source = desired.file if desired else (record.source if record else None)
        process = launch = None
        if key.kind == "Workload":
            process = self.processes.observe(key.name)
            if desired is not None:
                assert isinstance(desired.resource, Workload)
                launch = render_launch(desired.resource.spec, (self.root / desired.file).parent)
                if record is not None and process.state is ProcessState.exited and process.exit:
                    record = account_exit(record, process.exit, desired.resource)
        inputs = Inputs(
            key=key, desired=desired, record=record, process=process, launch=launch,
            rejected=tuple(self.desired.rejected.get(key, ())),
            source_errors=tuple(self.desired.errors.get(source, ())) if source else (),
        )
        allow_prune = self.allow_empty or bool(self.desired.resources)
        action = plan_resource(inputs, now, allow_prune)
        verdict = None
        if action.changes_something:
            executable = action.launch.argv[0] if action.launch else None
            verdict = decide(action, self.desired.policy, resolve_executable(executable) if executable else None)
        return Planned(action, verdict, inputs, record)

    # -- the whole reconcile ----------------------------------------------------------------

    def reconcile(self, key: ResourceKey) -> float | None:
        """Converge one resource; returns seconds until it wants another look (back-off), or None."""
        now = datetime.now(timezone.utc)
        planned = self.plan(key, now)
        action = planned.action
        if action.verb is Verb.delete:
            self._delete(planned, now)
            return None
        failure, observed = self._drive(planned)
        if action.changes_something:
            decision = planned.verdict.decision.value if planned.verdict else "-"
            outcome = f"failed: {failure.message}" if failure else ("done" if _executed(planned) else "not done")
            log.info("%s: %s (%s) -> %s, %s", key, action.verb.value, action.cause, decision, outcome)
        record = self._record(planned, failure, observed, now)
        retry_at = record.next_retry_at if record and record.status and record.status.next_retry_time else None
        return max(0.0, (retry_at - now).total_seconds()) if retry_at else None

    def _drive(self, planned: Planned) -> tuple[Failure | None, ProcessObservation | None]:
        action, inputs = planned.action, planned.inputs
        observed = inputs.process
        if action.key.kind != "Workload" or action.verb not in (Verb.create, Verb.recreate):
            return None, observed
        if not _executed(planned):
            return None, observed
        assert action.launch is not None and inputs.desired is not None
        workload = inputs.desired.resource
        assert isinstance(workload, Workload)
        if action.verb is Verb.recreate:
            self.processes.stop(action.key.name, workload.spec.termination_grace_period_seconds)
        try:
            return None, self.processes.start(action.key.name, action.launch, action.generation or 1)
        except StartFailed as failed:
            return Failure(failed.reason, failed.message), self.processes.observe(action.key.name)

    def _record(
        self, planned: Planned, failure: Failure | None, observed: ProcessObservation | None, now: datetime
    ) -> ResourceRecord | None:
        action, inputs = planned.action, planned.inputs
        key, desired = action.key, inputs.desired
        record = planned.record
        if desired is None and record is None:
            return None  # a rejected resource that never ran: its errors are in the status file already
        if record is None:
            assert desired is not None
            record = ResourceRecord(
                kind=key.kind, name=key.name, source=desired.file, generation=action.generation or 1,
                spec_hash=desired.spec_hash, resource=desired.resource.model_dump(mode="json", by_alias=True),
                created_at=now,
            )
        if desired is not None and not action.held:
            record = record.model_copy(update={
                "source": desired.file, "generation": action.generation, "spec_hash": desired.spec_hash,
                "resource": desired.resource.model_dump(mode="json", by_alias=True),
                "observed_generation": action.generation,
            })
        executed = _executed(planned) and failure is None
        if executed and inputs.process is not None and inputs.process.state is ProcessState.exited:
            record = record.model_copy(update={"restart_count": record.restart_count + 1, "next_retry_at": None})
        if failure is not None and desired is not None and isinstance(desired.resource, Workload):
            record = schedule_retry(record, now, 0.0, desired.resource)
        model = None
        if key.kind == "Model" and desired is not None:
            assert isinstance(desired.resource, Model)
            model = observe_model((self.root / desired.file).parent / desired.resource.spec.source)
        outcome = PassOutcome(action, planned.verdict, failure, observed, model)
        record = next_record_status(record, outcome, KINDS[key.kind], now)
        record = self._evidence(record, planned, failure, observed, now)
        log_file = str(self.processes.logs.path(key.name)) if key.kind == "Workload" else None
        record = record.model_copy(update={"status": render_status(record, outcome, log_file)})
        with self._lock:
            self.records[key] = record
        self.store.save(record)
        assert record.status is not None
        self.recorder.set_status(record.source, record.status)
        self.recorder.flush({record.source})
        return record

    def remove(self, key: ResourceKey, cause: str) -> None:
        """Stop and forget a resource whatever the desired state says (`reconciler down`)."""
        with self._lock:
            record = self.records.get(key)
        action = Action(key, Verb.delete, cause, record.generation if record else None)
        self._delete(Planned(action, None, Inputs(key, None, record), record), datetime.now(timezone.utc))

    def _delete(self, planned: Planned, now: datetime) -> None:
        key, record = planned.action.key, planned.record
        log.info("%s: delete (%s)", key, planned.action.cause)
        ended = None
        if key.kind == "Workload":
            grace = Workload.model_validate(record.resource).spec.termination_grace_period_seconds if record else 10.0
            ended = self.processes.stop(key.name, grace)
        if record is not None:
            detail = {"stoppedPid": ended.pid} if ended else {}
            self._write_evidence(record.source, key, record.generation, planned, now, detail)
            self.store.delete(key)
        with self._lock:
            self.records.pop(key, None)
        self.recorder.forget(key)
        if record is not None:
            self.recorder.flush({record.source})

    def _evidence(
        self, record: ResourceRecord, planned: Planned, failure: Failure | None,
        observed: ProcessObservation | None, now: datetime,
    ) -> ResourceRecord:
        """One line per decision and per action; a no-op pass writes nothing."""
        action = planned.action
        noteworthy = action.changes_something or action.held or action.orphaned or failure is not None
        if not noteworthy:
            return record
        decision = _decision_digest(planned)
        if not _executed(planned) and decision == record.last_decision:
            return record  # the same refusal or hold, seen again by a resync: already on record
        detail: dict[str, object] = {}
        if action.launch is not None and action.verb in (Verb.create, Verb.recreate):
            detail["command"] = list(action.launch.argv)
        if failure is not None:
            detail["failure"] = {"reason": failure.reason, "message": failure.message}
        elif observed is not None and observed.state is ProcessState.running and observed.record:
            detail["pid"] = observed.record.pid
        self._write_evidence(record.source, action.key, record.generation, planned, now, detail)
        return record.model_copy(update={"last_decision": decision})

    def _write_evidence(
        self, source: str, key: ResourceKey, generation: int, planned: Planned, now: datetime, detail: dict[str, object],
    ) -> None:
        verdict = planned.verdict
        self.recorder.evidence(source, {
            "time": now.isoformat(),
            "resource": str(key),
            "generation": generation,
            "event": "hold" if planned.action.held else "orphan" if planned.action.orphaned else planned.action.verb.value,
            "cause": planned.action.cause,
            "decision": verdict.decision.value if verdict else None,
            "reasons": [str(reason) for reason in verdict.reasons] if verdict else [],
            **detail,
        })


def _executed(planned: Planned) -> bool:
    """Whether the drivers act on this plan: a change the gate approved."""
    return planned.action.changes_something and planned.verdict is not None and planned.verdict.approved


def _decision_digest(planned: Planned) -> str:
    verdict = planned.verdict
    reasons = [str(reason) for reason in verdict.reasons] if verdict else []
    return f"{planned.action.verb.value}|{planned.action.cause}|{verdict.decision.value if verdict else ''}|{reasons}"
