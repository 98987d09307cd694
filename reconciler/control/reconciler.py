"""One reconcile of one resource: observe -> diff -> gate -> drive -> record.

`Reconciler.reconcile(key)` is the single entry point (controller-runtime's Reconcile); the
daemon's work queue guarantees it never runs twice at once for the same key.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from reconciler.api.kinds import Model, Policy, Runtime, Workload
from reconciler.api.meta import ResourceKey
from reconciler.api.status import FailureInfo, ResourceStatus
from reconciler.control.logfmt import about
from reconciler.control.metrics import Metrics
from reconciler.control.evidence import decision_digest, decision_record, outcome_record
from reconciler.api.kinds import KINDS, spec_hash
from reconciler.diff.plan import (
    Action, Hold, Inputs, Verb, is_orphan_kept, next_generation, note_observations, plan_resource,
)
from reconciler.control.workloads import WorkloadRenderer
from reconciler.diff.engines import Rendered
from reconciler.diff.health import next_probe_in
from reconciler.drive.containers import ContainerDriver
from reconciler.drive.dispatch import Drivers
from reconciler.drive.process import ProcessDriver, owner_id
from reconciler.drive.protocol import StartFailed
from reconciler.gate.verdict import POLICY_DENIED, Decision, Facts, Reason, Verdict, decide, running_denial
from reconciler.load.desired import DesiredEntry, DesiredState, load_desired
from reconciler.observe.docker_engine import DockerEngine, EngineUnavailable
from reconciler.observe.host import ModelPresence, file_sha256, observe_model
from reconciler.observe.processes import ProcessObservation, ProcessState
from reconciler.record.approvals import ApprovalStore
from reconciler.record.recorder import Recorder
from reconciler.record.status import PassOutcome, conclude
from reconciler.record.store import ResourceRecord, StateStore

log = logging.getLogger("reconciler")


ENGINE_RETRY_SECONDS = 15.0


class DesiredStateUnreadable(Exception):
    pass


@dataclass(frozen=True)
class Planned:
    """A plan for one resource, the verdict on it, and what it was made from."""

    action: Action
    verdict: Verdict | None
    inputs: Inputs
    model: ModelPresence | None = None
    rendered: Rendered = Rendered()

    @property
    def record(self) -> ResourceRecord | None:
        return self.inputs.record

    @property
    def executed(self) -> bool:
        """Whether the drivers act on this plan: a change the gate approved."""
        return self.action.changes_something and self.verdict is not None and self.verdict.approved


class Reconciler:
    def __init__(
        self, root: Path, state_dir: Path, *, allow_empty: bool = False,
        on_exit: Callable[[str], None] | None = None, readonly: bool = False,
        on_engine_back: Callable[[], None] | None = None, metrics: Metrics | None = None,
    ) -> None:
        self.root = root.resolve()
        self.shown_root = root  # as the user typed it: error messages name files this way
        state_dir = state_dir.resolve()  # paths derived from it (working dirs) must not depend on how it was typed
        self.store = StateStore(state_dir)
        self.approvals = ApprovalStore(state_dir)
        engine = DockerEngine()
        self.drivers = Drivers(
            ProcessDriver(state_dir, on_exit=on_exit, readonly=readonly),
            ContainerDriver(state_dir, owner_id(state_dir), engine, on_exit=on_exit, readonly=readonly,
                            on_engine_back=on_engine_back),
        )
        self.workloads = WorkloadRenderer(self.root, self.drivers, engine)
        self.recorder = Recorder(self.root)
        self.allow_empty = allow_empty
        self.metrics = metrics
        self.readonly = readonly
        self.desired = DesiredState(files=(), resources={})
        self.writing: frozenset[str] = frozenset()
        self.records = self.store.load_all()
        self._seeded = False
        self._lock = threading.Lock()
        self._admission_lock = threading.Lock()

    # -- load -------------------------------------------------------------------------------

    def refresh(self, writing: frozenset[str] = frozenset()) -> DesiredState:
        """Take a new snapshot. Files in `writing` are mid-save: what they define is held as it runs."""
        if not self.root.is_dir():
            raise DesiredStateUnreadable(f"{self.shown_root}: not a readable folder")
        previous = self.desired
        self.desired, self.writing = load_desired(self.shown_root), writing
        self.workloads.observe_host()
        if self.readonly:
            return self.desired
        if not self._seeded:
            self._seed()
        spec_files = {file for file in {*previous.files, *self.desired.files} if not file.endswith("/")}
        changed = {file for file in spec_files
                   if self.recorder.set_file_errors(file, [str(error) for error in self.desired.errors.get(file, [])])}
        self.recorder.flush(changed)
        return self.desired

    def _seed(self) -> None:
        """Give the status writer every known resource before the first flush, so no status file is partial."""
        now = datetime.now(timezone.utc)
        for key in self.keys():
            described = self._describe(self.plan(key, now), now)
            if described:
                self.recorder.set_status(described[0].source, described[1])
        self.recorder.sweep_orphans()
        self._seeded = True

    def keys(self) -> list[ResourceKey]:
        with self._lock:
            owned = set(self.records)
        processes = {ResourceKey("Workload", name) for name in self.drivers.owned_names()}
        return sorted(set(self.desired.resources) | set(self.desired.rejected) | owned | processes)

    def adopt(self) -> list[int]:
        stopped = self.drivers.adopt()
        for pid in stopped:
            log.warning("stopped pid %d: spawned by a start that a crash cut short, never recorded", pid)
        return stopped

    # -- observe, diff, gate (no changes to the host) ---------------------------------------

    def plan(self, key: ResourceKey, now: datetime, probe: bool = False) -> Planned:
        """`probe`: run a due health check (only a reconcile does; a plan, a status or a seed must not wait on one)."""
        desired = self.desired  # one snapshot for the whole plan, even if a refresh lands meanwhile
        entry = desired.resources.get(key)
        with self._lock:
            record = self.records.get(key)
        hold = self._hold(desired, key, entry, record)
        if hold is None and entry is None and record is not None and not is_orphan_kept(record):
            hold = self._prune_block(desired, record.source)
        if hold is not None:
            entry = _last_valid(record)  # keeps running as it was: restarted after a crash, never changed
        process = model = None
        rendered = Rendered()
        if key.kind == "Workload":
            process = self.drivers.observe(key.name, _maybe_container(entry, record))
            if entry is not None:
                assert isinstance(entry.resource, Workload)
                rendered = self.workloads.render(desired, self._remembered, entry.resource, entry.file, process)
                if record is not None:
                    record = note_observations(record, next_generation(record, entry), process.exit, entry.resource)
                    if probe:
                        record = self.workloads.probe_if_due(record, rendered, entry.resource, process, now)
        elif entry is not None and isinstance(entry.resource, Model):
            model = observe_model((self.root / entry.file).parent / entry.resource.spec.source)
        inputs = Inputs(
            key=key, desired=entry, record=record, process=process, launch=rendered.launch, hold=hold,
            blocked=rendered.blocked, check=rendered.check, health=record.health if record else None,
        )
        action = plan_resource(inputs, now)
        policy = self._policy_in_force(desired)
        workload = entry.resource if entry is not None and isinstance(entry.resource, Workload) else None
        verdict = None
        if action.changes_something:
            starts = action.verb in (Verb.create, Verb.recreate)
            verdict = decide(action, policy, self._facts(desired, rendered, workload, entry) if starts else Facts())
        if process is not None and record is not None and (verdict is None or not verdict.approved):
            action, verdict = self._tightened(action, verdict, policy, process, record)
        return Planned(action, verdict, inputs, model, rendered)

    def _facts(self, desired: DesiredState, rendered: Rendered, workload: Workload | None,
               entry: DesiredEntry | None) -> Facts:
        """What the gate judges a start by, beside the launch: observed only when a start is planned."""
        launch = rendered.launch
        if workload is None or entry is None:
            return Facts()
        executables = (launch.executable, os.path.realpath(launch.executable)) if launch and launch.executable else ()
        memory = self.workloads.memory_use(desired, self._remembered, workload)
        return Facts(executables, self.workloads.check_executables(rendered, workload),
                     self._pinned_digests(desired, executables), entry.spec_hash, self.approvals.get(workload.name), memory)

    def _pinned_digests(self, desired: DesiredState, executables: tuple[str, ...]) -> dict[str, str]:
        policy = self._policy_in_force(desired)
        if not executables or policy is None or not any(e.sha256 for e in policy.spec.native.trusted_executables):
            return {}
        digest = file_sha256(executables[-1])
        return {executables[-1]: digest} if digest else {}

    def _tightened(self, action: Action, verdict: Verdict | None, policy: Policy | None,
                   process: ProcessObservation, record: ResourceRecord) -> tuple[Action, Verdict | None]:
        """A running workload that the policy in force refuses now (it was tightened) is stopped, with the reason."""
        running = process.record
        if process.state is not ProcessState.running or running is None or action.verb is Verb.stop or action.orphaned:
            return action, verdict  # an orphan is out of the desired state on purpose: what governs it left with it
        executable = running.launch.executable
        executables = (executable, os.path.realpath(executable)) if executable else ()
        reasons = running_denial(running.launch, policy, Facts(executables, digests=self._pinned_digests(self.desired, executables)))
        if not reasons:
            return action, verdict
        source = f"Policy/{policy.name}" if policy else "the default policy"
        cause = f"stopped: {source} no longer allows what runs: " + "; ".join(str(reason) for reason in reasons)
        stop = Action(action.key, Verb.stop, cause, action.generation or record.generation, failure_reason=POLICY_DENIED)
        return stop, Verdict(Decision.approve, (Reason("policy.tightened", cause),))

    def _remembered(self, key: ResourceKey) -> ResourceRecord | None:
        with self._lock:
            return self.records.get(key)

    def _hold(
        self, desired: DesiredState, key: ResourceKey, entry: DesiredEntry | None, record: ResourceRecord | None
    ) -> Hold | None:
        rejected = desired.rejected.get(key)
        if rejected:
            return Hold("Rejected", f"new version rejected: {rejected[0]}")
        files = {entry.file if entry else None, record.source if record else None} & self.writing
        if files:
            return Hold("BeingWritten", f"{sorted(files)[0]} is being written; it is read once its writer closes it")
        return None

    def _prune_block(self, desired: DesiredState, source: str) -> Hold | None:
        """Why a resource missing from the desired state must not be removed yet, if it must not."""
        problem = desired.source_problem(source)
        if problem is not None:
            return Hold("SourceUnreadable", f"its file cannot be read: {problem}")
        elsewhere = desired.unattributed_error()
        if elsewhere is not None:
            return Hold("LoadErrorsElsewhere", f"nothing is removed while a spec fails to load: {elsewhere}")
        if not desired.resources and not self.allow_empty:
            return Hold("DesiredStateEmpty", "the desired state is empty; nothing is pruned without --allow-empty")
        return None

    def _policy_in_force(self, desired: DesiredState) -> Policy | None:
        """The valid Policy; if its new version is held (invalid, mid-save, unreadable), the last valid one."""
        if desired.policy is not None:
            return desired.policy
        with self._lock:
            policies = [record for key, record in self.records.items() if key.kind == "Policy"]
        for record in policies:
            if self._hold(desired, record.key, None, record) or self._prune_block(desired, record.source):
                return Policy.model_validate(record.resource)
        return None

    def status(self, key: ResourceKey) -> ResourceStatus | None:
        """What `reconciler status` shows: the remembered record judged against what is observed now."""
        now = datetime.now(timezone.utc)
        described = self._describe(self.plan(key, now), now)
        return described[1] if described else None

    def _describe(self, planned: Planned, now: datetime) -> tuple[ResourceRecord, ResourceStatus] | None:
        outcome = PassOutcome(planned.action, planned.verdict, False, None, planned.inputs.process,
                              planned.inputs.process, planned.model, planned.rendered)
        return conclude(planned.record, planned.inputs.desired, outcome, now, self._log_file(planned.action.key))

    # -- the whole reconcile ----------------------------------------------------------------

    def reconcile(self, key: ResourceKey) -> float | None:
        """Converge one resource; returns seconds until it wants another look (back-off), or None."""
        entry = self.desired.resources.get(key)
        spec = entry.resource.spec if entry is not None and isinstance(entry.resource, Workload) else None
        admitted = spec is not None and bool(spec.resources.gpus.wanted or spec.resources.memory or spec.model)
        with self._admission_lock if admitted else nullcontext():  # judged and started as one step: no GPU given
            return self._reconcile(key)                            # twice, no memory committed twice

    def _reconcile(self, key: ResourceKey) -> float | None:
        started, now = time.monotonic(), datetime.now(timezone.utc)
        planned = self.plan(key, now, probe=True)
        action = planned.action
        if action.verb is Verb.delete:
            kept = self._delete(planned, now)
            self._measure(planned, None, None, started)
            return ENGINE_RETRY_SECONDS if kept else None
        digest = self._record_decision(planned, now)
        failure, after = self._drive(planned, now)
        if action.changes_something:
            outcome_text = f"failed: {failure.message}" if failure else ("done" if planned.executed else "not done")
            log.info("%s: %s (%s) -> %s, %s", key, action.verb.value, action.cause,
                     planned.verdict.decision.value if planned.verdict else "-", outcome_text, **about(key))
        outcome = PassOutcome(action, planned.verdict, planned.executed, failure, planned.inputs.process, after,
                              planned.model, planned.rendered)
        concluded = conclude(planned.record, planned.inputs.desired, outcome, now, self._log_file(key))
        self._measure(planned, failure, concluded[1] if concluded else None, started)
        if concluded is None:
            return None
        record, status = concluded
        if planned.executed:
            done = datetime.now(timezone.utc)
            self.recorder.evidence(record.source, outcome_record(planned.action, record.generation, failure, after, done))
        if digest is not None:
            record = record.model_copy(update={"last_decision": digest})
        self._remember(record)
        self.recorder.set_status(record.source, status)
        self.recorder.flush({record.source} | ({planned.record.source} if planned.record else set()))
        if key.kind == "Workload":
            self.drivers.trim_log(key.name, _maybe_container(planned.inputs.desired, planned.record))
        check, running = planned.rendered.check, after.record if after and after.running_pid else None
        if running is not None and check is not None:
            return next_probe_in(check, record.health, running.pid, running.started_at, now)
        retry_at = record.next_retry_at if status.pid is None else None
        return max(0.0, (retry_at - now).total_seconds()) if retry_at else None

    def _measure(self, planned: Planned, failure: FailureInfo | None, status: ResourceStatus | None, started: float) -> None:
        if self.metrics is not None:
            self.metrics.reconciled(planned.action, planned.verdict, planned.executed, failure is not None, status,
                                    time.monotonic() - started)

    def _record_decision(self, planned: Planned, now: datetime) -> str | None:
        """Write the decision before acting, so a crash mid-action still leaves it on record."""
        action = planned.action
        if not (action.changes_something or action.hold or action.orphaned):
            return None
        digest = decision_digest(action, planned.verdict)
        record = planned.record
        if not planned.executed and record is not None and digest == record.last_decision:
            return digest  # the same refusal or hold, seen again by a resync: already on record
        source = planned.inputs.desired.file if planned.inputs.desired else (record.source if record else None)
        if source is not None:
            self.recorder.evidence(source, decision_record(action, planned.verdict, record, now))
        return digest

    def _drive(self, planned: Planned, now: datetime) -> tuple[FailureInfo | None, ProcessObservation | None]:
        action, inputs = planned.action, planned.inputs
        if not planned.executed or action.key.kind != "Workload":
            return None, inputs.process
        assert inputs.desired is not None and isinstance(inputs.desired.resource, Workload)
        grace = inputs.desired.resource.spec.termination_grace_period_seconds
        containers = _maybe_container(inputs.desired, planned.record)
        try:
            if action.verb is Verb.stop:  # kept on record as exited: its restart policy and back-off take over
                self.drivers.stop(action.key.name, grace, forget=False)
                return None, self.drivers.observe(action.key.name, containers)
            if action.launch is None:
                return None, inputs.process
            if inputs.process is not None and inputs.process.record is not None:
                self.drivers.stop(action.key.name, grace)
            return None, self.drivers.start(action.key.name, action.launch, action.generation or 1)
        except StartFailed as failed:
            return FailureInfo(reason=failed.reason, message=failed.message, at=now), self.drivers.observe(action.key.name, containers)
        except EngineUnavailable as unavailable:
            return FailureInfo(reason="EngineUnavailable", message=unavailable.message, at=now), inputs.process

    def remove(self, key: ResourceKey, cause: str) -> str | None:
        """Stop and forget a resource whatever the desired state says (`reconciler down`); why not, if it could not."""
        with self._lock:
            record = self.records.get(key)
        action = Action(key, Verb.delete, cause, record.generation if record else None)
        return self._delete(Planned(action, None, Inputs(key, None, record)), datetime.now(timezone.utc))

    def _delete(self, planned: Planned, now: datetime) -> str | None:
        """Why it is kept on record, when what runs could not be stopped (the engine is away or refused); else None."""
        key, record = planned.action.key, planned.record
        if record is not None or planned.inputs.process is not None and planned.inputs.process.record is not None:
            log.info("%s: delete (%s)", key, planned.action.cause, **about(key))
        if record is not None:
            self.recorder.evidence(record.source, decision_record(planned.action, planned.verdict, record, now))
        ended = None
        if key.kind == "Workload":
            workload = Workload.model_validate(record.resource) if record else None
            try:
                ended = self.drivers.stop(key.name, workload.spec.termination_grace_period_seconds if workload else 10.0)
            except (EngineUnavailable, StartFailed) as problem:
                if workload is None or workload.spec.runtime is Runtime.container:
                    log.warning("%s: cannot remove its container yet: %s", key, problem, **about(key))
                    return str(problem)  # kept on record until its container is really gone
        if record is not None:
            self.recorder.evidence(record.source, outcome_record(planned.action, record.generation, None, None,
                                                                 datetime.now(timezone.utc), stopped_pid=ended.pid if ended else None))
            self.store.delete(key)
        with self._lock:
            self.records.pop(key, None)
        self.recorder.forget(key)
        if record is not None:
            self.recorder.flush({record.source})
        return None

    def _remember(self, record: ResourceRecord) -> None:
        with self._lock:
            unchanged = self.records.get(record.key) == record
            self.records[record.key] = record
        if not unchanged:
            self.store.save(record)

    def _log_file(self, key: ResourceKey) -> str | None:
        return self.drivers.log_path(key.name) if key.kind == "Workload" else None


def _maybe_container(entry: DesiredEntry | None, record: ResourceRecord | None) -> bool:
    """Whether a workload is or was a container: only then is its state asked of the container engine."""
    runtimes = set()
    if entry is not None and isinstance(entry.resource, Workload):
        runtimes.add(entry.resource.spec.runtime.value)
    if record is not None and record.kind == "Workload":
        runtimes.add(record.resource.get("spec", {}).get("runtime", Runtime.native.value))
    return not runtimes or Runtime.container.value in runtimes


def _last_valid(record: ResourceRecord | None) -> DesiredEntry | None:
    """The version a record was last reconciled to, as if it were still the desired one."""
    if record is None:
        return None
    resource = KINDS[record.kind].model_validate(record.resource)
    return DesiredEntry(resource, record.source, spec_hash(resource))
