"""One reconcile of one resource: observe -> diff -> gate -> drive -> record.

`Reconciler.reconcile(key)` is the single entry point (controller-runtime's Reconcile); the
daemon's work queue guarantees it never runs twice at once for the same key.
"""

from __future__ import annotations

import logging
import platform
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

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
from reconciler.control.judge import Judge
from reconciler.api.approval import Answer
from reconciler.control.placement import SecretFacts, workload_decision_record
from reconciler.record.decision_record import record_digest
from reconciler.gate.placement import PlacementDecision
from reconciler.gate.verdict import Verdict
from reconciler.load.desired import DesiredEntry, DesiredState, load_desired
from reconciler.observe.docker_engine import DockerEngine, EngineUnavailable
from reconciler.api.host import HostProfile, host_profile_document
from reconciler.observe.host_profile import observe_host_profile
from reconciler.observe.host import ModelPresence, observe_model
from reconciler.observe.processes import ProcessObservation
from reconciler.record.approvals import ApprovalStore
from reconciler.record.recorder import Recorder, sibling
from reconciler.record.status import PassOutcome, conclude
from reconciler.record.store import ResourceRecord, StateStore

log = logging.getLogger("reconciler")


ENGINE_RETRY_SECONDS = 15.0
PROFILE_SECONDS = 30.0  # how stale the host profile may get: free memory and disk move, capabilities rarely do


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
    placement: PlacementDecision | None = None
    secret: SecretFacts | None = None

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
        self.workloads = WorkloadRenderer(self.root, self.drivers, engine, self._remembered)
        self.judge = Judge(self.workloads, self.approvals)
        self.engine = engine
        self.state_dir = state_dir
        self.host_profile: HostProfile | None = None
        self._profiled_at: float | None = None
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
        self._profile_host()
        if self.readonly:
            return self.desired
        if not self._seeded:
            self._seed()
        spec_files = {file for file in {*previous.files, *self.desired.files} if not file.endswith("/")}
        changed = {file for file in spec_files
                   if self.recorder.set_file_errors(file, [str(error) for error in self.desired.errors.get(file, [])])}
        self.recorder.flush(changed)
        return self.desired

    def _profile_host(self, force: bool = False) -> None:
        """Observe what this host offers (at most every PROFILE_SECONDS unless forced) and publish it."""
        if not force and self._profiled_at is not None and time.monotonic() - self._profiled_at < PROFILE_SECONDS:
            return
        self.host_profile, self._profiled_at = observe_host_profile(self.state_dir, self.engine), time.monotonic()
        self.workloads.memory_total = self.host_profile.memory.total
        if not self.readonly:
            self.recorder.host_profile(host_profile_document(self.host_profile, platform.node() or "localhost",
                                                               datetime.now(timezone.utc)))

    @property
    def host_digest(self) -> str | None:
        return self.host_profile.capability_digest() if self.host_profile else None

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
                policy = self._policy_in_force(desired)
                sharing = policy is not None and policy.spec.resources.gpu_sharing
                rendered = self.workloads.render(desired, self._remembered, entry.resource, entry.file, process, sharing)
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
        judged = self.judge.judge(desired, self._policy_in_force(desired), inputs, plan_resource(inputs, now), rendered)
        return Planned(judged.action, judged.verdict, inputs, model, rendered, judged.placement, judged.secret)

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
                              planned.inputs.process, planned.model, planned.rendered, planned.placement)
        concluded = conclude(planned.record, planned.inputs.desired, outcome, now, self._log_file(planned.action.key))
        if concluded is None:
            return None
        decided = self._decision_record(planned)
        return concluded[0], concluded[1].model_copy(update={"decision_record": decided})

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
                              planned.model, planned.rendered, planned.placement)
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
        decided = self._decision_record(planned)
        if decided is not None:
            status = status.model_copy(update={"decision_record": decided})
            record = self._record_changed_decision(record, decided, now)
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

    def _decision_record(self, planned: Planned) -> dict[str, Any] | None:
        """The Runtime Decision Record of a workload, from the facts this plan observed."""
        entry = planned.inputs.desired
        if planned.placement is None or entry is None or not isinstance(entry.resource, Workload):
            return None
        workload = entry.resource
        presence = self.workloads.model_presence(self.desired, workload)
        model = (workload.spec.model, str(presence.path), presence.size) if workload.spec.model and presence else None
        approval = self.approvals.get(workload.name)
        return workload_decision_record(
            workload, planned.placement, planned.secret, self._policy_in_force(self.desired), self.host_profile, model,
            channel=f"folder {self.root}", state_dir=self.store.directory.parent,
            evidence_file=self.root / sibling(entry.file, ".evidence.jsonl"), log_file=self._log_file(planned.action.key),
            endpoint=planned.rendered.endpoint,
            consented=approval is not None and approval.covers(entry.spec_hash) and approval.answer is Answer.approve,
        )

    def _record_changed_decision(self, record: ResourceRecord, decided: dict[str, Any], now: datetime) -> ResourceRecord:
        """Each change of a decision record is evidence; an unchanged one is not written again."""
        digest = record_digest(decided)
        if digest == record.decision_record_digest:
            return record
        self.recorder.evidence(record.source, {
            "time": now.isoformat(), "resource": str(record.key), "generation": record.generation,
            "event": "decision-record", "digest": digest, "hostProfile": self.host_digest, "record": decided,
        })
        return record.model_copy(update={"decision_record_digest": digest})

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
            self.recorder.evidence(source, decision_record(action, planned.verdict, record, now, self.host_digest))
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
