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
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, TextIO

from reconciler.api.kinds import Model, Runtime, Workload, WorkloadSpec
from reconciler.api.meta import ResourceKey
from reconciler.api.resource_record import ResourceRecord
from reconciler.api.rollout import Pins
from reconciler.api.status import FailureInfo, Placement, ResourceStatus
from reconciler.control.evidence import decision_digest, decision_record, exposure_record, outcome_record
from reconciler.control.gateway_routes import RoutesPublisher
from reconciler.control.gitops import local_revision
from reconciler.control.holds import Holds, last_valid
from reconciler.control.host import HostWatch
from reconciler.control.judge import Judge
from reconciler.control.logfmt import about
from reconciler.control.metrics import Metrics
from reconciler.control.models import ModelStore, ModelView
from reconciler.control.pins import pins_of
from reconciler.control.placement import SecretFacts, consented, model_facts, workload_decision_record
from reconciler.control.result import Result
from reconciler.control.rollout import Rollouts
from reconciler.control.workloads import WorkloadRenderer
from reconciler.diff.engines import Rendered
from reconciler.diff.health import next_probe_in
from reconciler.diff.plan import (
    Action, Inputs, Verb, is_orphan_kept, next_generation, note_observations, plan_resource,
)
from reconciler.drive.containers import ContainerDriver
from reconciler.drive.dispatch import Drivers
from reconciler.drive.process import ProcessDriver, owner_id
from reconciler.drive.protocol import StartFailed
from reconciler.gate.network import ListenFindings
from reconciler.gate.placement import PlacementDecision
from reconciler.gate.verdict import DEFAULT_POLICY, Decision, Verdict
from reconciler.gateway.routes_file import routes_path
from reconciler.load.desired import DesiredEntry, DesiredState, load_desired
from reconciler.observe import clock
from reconciler.observe.docker_engine import DockerEngine, EngineUnavailable
from reconciler.observe.git import GitError
from reconciler.observe.host import boot_id
from reconciler.observe.processes import ProcessObservation
from reconciler.record.approvals import ApprovalStore
from reconciler.record.decision_record import record_digest
from reconciler.record.evidence import HOST_EVIDENCE_FILE
from reconciler.record.recorder import Recorder, sibling
from reconciler.record.status import PassOutcome, conclude
from reconciler.record.store import StateStore

log = logging.getLogger("reconciler")


ENGINE_RETRY_SECONDS = 15.0
REVISION_SECONDS = 30.0  # a commit that changes no spec shows in status within this (a spec change at once)


class DesiredStateUnreadable(Exception):
    pass


@dataclass(frozen=True)
class Planned:
    """A plan for one resource, the verdict on it, and what it was made from."""

    action: Action
    verdict: Verdict | None
    inputs: Inputs
    model: ModelView | None = None
    rendered: Rendered = Rendered()
    placement: PlacementDecision | None = None
    secret: SecretFacts | None = None
    asked: DesiredEntry | None = None  # the desired state's version, from the plan's snapshot (even when held)
    snapshot: DesiredState | None = None  # the desired state the plan was made from
    listens: ListenFindings | None = None  # what the running process was seen listening on, judged

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
        on_model_fetched: Callable[[], None] | None = None, terminal: TextIO | None = None,
        revision: Callable[[], str | None] | None = None, channel: str | None = None, offline: bool = False,
    ) -> None:
        """`on_model_fetched`: models are fetched in the background (the daemon) and this is called when one is
        done; without it a pass fetches what it needs before it ends (`apply`). `revision`: which revision of
        its source the desired state is (by default the HEAD of the git repository the folder is in, if any);
        `channel`: where that source is, for the decision records (by default the folder). `offline`: no request
        leaves the host (status, describe): remote model headers are what the daemon recorded."""
        # Absolute, but not resolved: a GitOps root is a path through a link that each new revision replaces,
        # and every path derived from it must stay the same across revisions.
        self.root = Path(os.path.abspath(root))
        self.shown_root = root  # as the user typed it: error messages name files this way
        state_dir = state_dir.resolve()  # paths derived from it (working dirs) must not depend on how it was typed
        clock.adopt(state_dir, readonly=readonly)
        self.store = StateStore(state_dir)
        self.approvals = ApprovalStore(state_dir)
        engine = DockerEngine()
        self.drivers = Drivers(
            ProcessDriver(state_dir, on_exit=on_exit, readonly=readonly),
            ContainerDriver(state_dir, owner_id(state_dir), engine, on_exit=on_exit, readonly=readonly,
                            on_engine_back=on_engine_back),
        )
        self.models = ModelStore(self.root, state_dir, background=on_model_fetched is not None, on_fetched=on_model_fetched,
                                 terminal=terminal, network=not offline, record=not readonly)
        self.routes = RoutesPublisher(routes_path(state_dir))
        self.workloads = WorkloadRenderer(self.root, self.drivers, engine, self._remembered, self.models,
                                          str(self.routes.path))
        self.judge = Judge(self.workloads, self.approvals)
        self.recorder = Recorder(self.root, state_dir / HOST_EVIDENCE_FILE)
        self.host = HostWatch(state_dir, engine, None if readonly else self.recorder)
        self.holds = Holds(self._all_records, allow_empty)
        self.metrics = metrics
        self.readonly = readonly
        self.desired = DesiredState(files=(), resources={})
        self.records = self.store.load_all()
        self._seeded = False
        self._lock = threading.Lock()
        self._admission_lock = threading.Lock()
        self.rollouts = Rollouts(self.approvals, self.recorder.evidence, self.drivers.log_path, boot_id())
        self._revision = revision or (lambda: local_revision(self.root))
        self.channel = channel or f"folder {self.root}"
        self._revision_seen_at: float | None = None

    # -- load -------------------------------------------------------------------------------

    def refresh(self, writing: frozenset[str] = frozenset()) -> DesiredState:
        """Take a new snapshot. Files in `writing` are mid-save: what they define is held as it runs."""
        if not self.root.is_dir():
            raise DesiredStateUnreadable(f"{self.shown_root}: not a readable folder")
        previous = self.desired
        self.desired, self.holds.writing = load_desired(self.shown_root), writing
        self.workloads.observe_host()
        self.workloads.memory_total = self.host.refresh().memory.total
        self._model_capacity()
        if self.readonly:
            return self.desired
        seen = self._revision_seen_at
        if seen is None or self.desired != previous or time.monotonic() - seen >= REVISION_SECONDS:
            self.revision_changed()  # a git subprocess or five: not on every pass
        if not self._seeded:
            self._seed()
        spec_files = {file for file in {*previous.files, *self.desired.files} if not file.endswith("/")}
        changed = {file for file in spec_files
                   if self.recorder.set_file_errors(file, [str(error) for error in self.desired.errors.get(file, [])])}
        self.recorder.flush(changed)
        self._publish_routes()
        return self.desired

    def revision_changed(self) -> None:
        """Status and evidence written from now on name the revision in force."""
        try:
            self.recorder.revision = self._revision()
        except (GitError, OSError) as error:  # e.g. git's "dubious ownership" as root over a user's checkout
            if self.recorder.revision is not None or self._revision_seen_at is None:
                log.warning("the desired state's revision is unknown: %s", error)
            self.recorder.revision = None
        self._revision_seen_at = time.monotonic()

    def _model_capacity(self) -> None:
        """What the variants of a Model are fitted to: this host's profile, the policy's reserve, the engines here."""
        policy = self.holds.policy_in_force(self.desired)
        facts = self.workloads.facts
        engines = {name for name, found in (("llama.cpp", facts.llama_server or facts.llama_cpp_python),
                                            ("vllm", facts.vllm)) if found}
        rules = policy.spec if policy else DEFAULT_POLICY
        self.models.capacity_inputs = (self.host.profile, rules.resources, frozenset(engines))
        self.models.rules = rules.models

    def _seed(self) -> None:
        """Give the status writer every known resource before the first flush, so no status file is partial."""
        now = clock.now()
        for key in self.keys():
            described = self._describe(self.plan(key, now), now)
            if described:
                self.recorder.set_status(described[0].source, described[1])
        self.recorder.sweep_orphans()
        self._seeded = True
        self._publish_routes()

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
        hold = self.holds.of(desired, key, entry, record) or Rollouts.hold(record, entry)
        if hold is None and entry is None and record is not None and not is_orphan_kept(record):
            hold = self.holds.prune_block(desired, record.source)
        if hold is not None:
            entry = last_valid(record)  # keeps running as it was: restarted after a crash, never changed
        process = model = listening = None
        rendered = Rendered()
        if key.kind == "Workload":
            process = self.drivers.observe(key.name, _maybe_container(entry, record))
            listening = self.workloads.listening(process)
            if entry is not None:
                assert isinstance(entry.resource, Workload)
                policy = self.holds.policy_in_force(desired)
                sharing = policy is not None and policy.spec.resources.gpu_sharing
                pins = Rollouts.restoring(record) if hold is not None else None
                rendered = self.workloads.render(desired, self._remembered, entry.resource, entry.file, process,
                                                 sharing, pins)
                if record is not None:
                    record = note_observations(record, next_generation(record, entry), process.exit, entry.resource)
                    if probe:
                        record = self.workloads.probe_if_due(record, rendered, entry.resource, process, now)
        elif entry is not None and isinstance(entry.resource, Model):
            model = self.models.view(desired, entry.resource, entry.file)
        inputs = Inputs(
            key=key, desired=entry, record=record, process=process, launch=rendered.launch, hold=hold,
            blocked=rendered.blocked, check=rendered.check, health=record.health if record else None, listening=listening,
        )
        judged = self.judge.judge(desired, self.holds.policy_in_force(desired), inputs, plan_resource(inputs, now), rendered,
                                  tighten=self.holds.policy_settled(desired))
        return Planned(judged.action, judged.verdict, inputs, model, rendered, judged.placement, judged.secret,
                       desired.resources.get(key), desired, judged.listens)

    def _memory_always_fits(self) -> bool:
        policy = self.holds.policy_in_force(self.desired)
        return self.workloads.memory_always_fits(self.desired, self._all_records(),
                                                 (policy.spec if policy else DEFAULT_POLICY).resources)

    def _remembered(self, key: ResourceKey) -> ResourceRecord | None:
        with self._lock:
            return self.records.get(key)

    def _all_records(self) -> list[ResourceRecord]:
        with self._lock:
            return list(self.records.values())

    def status(self, key: ResourceKey) -> ResourceStatus | None:
        """What `reconciler status` shows: the remembered record judged against what is observed now."""
        now = clock.now()
        described = self._describe(self.plan(key, now), now)
        return described[1] if described else None

    def _describe(self, planned: Planned, now: datetime) -> tuple[ResourceRecord, ResourceStatus] | None:
        outcome = PassOutcome(planned.action, planned.verdict, False, None, planned.inputs.process,
                              planned.inputs.process, planned.model, planned.rendered, planned.placement, planned.listens)
        concluded = conclude(planned.record, planned.inputs.desired, outcome, now, self._log_file(planned.action.key))
        if concluded is None:
            return None
        decided = self._decision_record(planned)
        rollout = self.rollouts.on_record(planned.asked, planned.record)
        return concluded[0], concluded[1].model_copy(update={"decision_record": decided, "rollout": rollout})

    # -- the whole reconcile ----------------------------------------------------------------

    def reconcile(self, key: ResourceKey) -> Result:
        """Converge one resource; says when it wants another look (raises if it failed). A pass that rolled a
        generation back is followed at once by the pass that restores the known-good version."""
        if not self._seeded:  # no evidence may be written from a partial view
            raise RuntimeError(f"{key}: reconciled before the desired state and this host's facts were first loaded")
        while True:
            look, rolled_back = self._admitted(key)
            if not rolled_back:
                return look

    def _admitted(self, key: ResourceKey) -> tuple[Result, bool]:
        entry = self.desired.resources.get(key)
        with self._lock:
            record = self.records.get(key)
        # the version on record may be the one started (a held or rolled-back spec): either may need admission.
        # Validated only when it differs from the desired one: this runs on every reconcile.
        differs = record is not None and (entry is None or record.spec_hash != entry.spec_hash)
        on_record = last_valid(record) if key.kind == "Workload" and differs else None
        versions = [version.resource.spec for version in (entry, on_record)
                    if version is not None and isinstance(version.resource, Workload)]
        admitted = any(_needs_admission(spec, self._memory_always_fits) for spec in versions)
        with self._admission_lock if admitted else nullcontext():  # judged and started as one step: no GPU given
            return self._reconcile(key)                            # twice, no memory committed twice

    def _reconcile(self, key: ResourceKey) -> tuple[Result, bool]:
        started, now = time.monotonic(), clock.now()
        planned = self.plan(key, now, probe=True)
        action = planned.action
        if action.verb is Verb.delete:
            kept = self._delete(planned, now)
            self._measure(planned, None, None, started)
            return Result.after(ENGINE_RETRY_SECONDS) if kept else Result.until_event(), False
        digest = self._record_decision(planned, now)
        planned = self._fetch_model(planned)
        failure, after = self._drive(planned, now)
        if action.changes_something:  # a refusal seen again (apply --wait's polls, each resync) is news once
            outcome_text = f"failed: {failure.message}" if failure else ("done" if planned.executed else "not done")
            log.log(logging.DEBUG if _on_record(planned, digest) else logging.INFO, "%s: %s (%s) -> %s, %s", key,
                    action.verb.value, action.cause, planned.verdict.decision.value if planned.verdict else "-",
                    outcome_text, **about(key))
        outcome = PassOutcome(action, planned.verdict, planned.executed, failure, planned.inputs.process, after,
                              planned.model, planned.rendered, planned.placement, planned.listens)
        concluded = conclude(planned.record, planned.inputs.desired, outcome, now, self._log_file(key))
        self._measure(planned, failure, concluded[1] if concluded else None, started)
        if concluded is None:
            return Result.until_event(), False
        record, status = concluded
        if planned.executed:
            done = clock.now()
            self.recorder.evidence(record.source, outcome_record(planned.action, record.generation, failure, after, done))
        if digest is not None:
            record = record.model_copy(update={"last_decision": digest})
        if planned.listens is not None and record.exposure != (planned.record.exposure if planned.record else None):
            self.recorder.evidence(record.source, exposure_record(action, record.generation, planned.listens, now))
        decided = self._decision_record(planned)
        if decided is not None:
            status = status.model_copy(update={"decision_record": decided})
            record = self._record_changed_decision(record, decided, now)
        waiting = planned.verdict is not None and planned.verdict.decision is Decision.needs_approval
        record, status, rollout_look = self.rollouts.after_pass(planned.asked, record, status, action.hold, waiting, now,
                                                                lambda: self._pins(planned, after))
        rolled_back = record.rolled_back is not None and (planned.record is None or planned.record.rolled_back != record.rolled_back)
        self._remember(record)
        self.recorder.set_status(record.source, status)
        self.recorder.flush({record.source} | ({planned.record.source} if planned.record else set()))
        self._publish_routes()
        if key.kind == "Workload":
            self.drivers.trim_log(key.name, _maybe_container(planned.inputs.desired, planned.record))
        return Result.soonest(self._next_look(planned, record, status, after, now), rollout_look), rolled_back

    def _next_look(self, planned: Planned, record: ResourceRecord, status: ResourceStatus,
                   after: ProcessObservation | None, now: datetime) -> float | None:
        check, running = planned.rendered.check, after.record if after and after.running_pid else None
        if running is not None and check is not None:
            return next_probe_in(check, record.health, running.pid, running.started_at, now)
        if planned.model is not None and planned.model.problem is not None:
            return self.models.next_look(planned.model)
        # Only a back-off still ahead is worth a look: one already past was this pass's to act on, and a start
        # it did not make (refused by the gate, awaiting an answer, placed elsewhere) waits for an input to change.
        retry_at = record.next_retry_at if status.pid is None else None
        return (retry_at - now).total_seconds() if retry_at is not None and retry_at > now else None

    def _pins(self, planned: Planned, after: ProcessObservation | None) -> Pins:
        """What the version proven on this pass runs: its executable's digest, its image ID, its model's digest."""
        entry, desired = planned.inputs.desired, planned.snapshot or self.desired
        view = self.workloads.model_view(desired, entry.resource) if entry and isinstance(entry.resource, Workload) else None
        return pins_of(after.record.launch if after and after.record else None, view)

    def _fetch_model(self, planned: Planned) -> Planned:
        """A Model whose chosen variant is not on this host yet is fetched (the daemon: in the background)."""
        entry = planned.inputs.desired
        if planned.model is None or entry is None or planned.action.hold is not None or not isinstance(entry.resource, Model):
            return planned
        self.models.ensure(planned.model)
        return replace(planned, model=self.models.view(self.desired, entry.resource, entry.file))

    def _decision_record(self, planned: Planned) -> dict[str, Any] | None:
        """The Runtime Decision Record of a workload, from the facts this plan observed."""
        entry = planned.inputs.desired
        if planned.placement is None or entry is None or not isinstance(entry.resource, Workload):
            return None
        workload, desired = entry.resource, planned.snapshot or self.desired
        model = model_facts(workload, self.workloads.model_view(desired, workload))
        consent = self.approvals.get(workload.name, hosted=True)
        placement, verdict, process = planned.placement, planned.verdict, planned.inputs.process
        if placement.placement is Placement.local and verdict is not None and verdict.decision is Decision.deny \
                and (process is None or process.running_pid is None):  # as its status says: it may not run here
            reasons = "; ".join(str(reason) for reason in verdict.reasons)
            placement = replace(placement, placement=Placement.unavailable, reason="PolicyDenied",
                                message=f"the policy does not allow it to run here: {reasons}")
        return workload_decision_record(
            workload, placement, planned.secret, self.holds.policy_in_force(desired), self.host.profile, model,
            channel=self.channel, state_dir=self.store.directory.parent,
            evidence_file=self.root / sibling(entry.file, ".evidence.jsonl"), log_file=self._log_file(planned.action.key),
            endpoint=planned.rendered.endpoint,
            consented=consented(consent, entry.spec_hash),
        )

    def _record_changed_decision(self, record: ResourceRecord, decided: dict[str, Any], now: datetime) -> ResourceRecord:
        """Each change of a decision record is evidence; an unchanged one is not written again."""
        digest = record_digest(decided)
        if digest == record.decision_record_digest:
            return record
        self.recorder.evidence(record.source, {
            "time": now.isoformat(), "resource": str(record.key), "generation": record.generation,
            "event": "decision-record", "digest": digest, "hostProfile": self.host.digest, "record": decided,
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
        if _on_record(planned, digest):
            return digest
        source = planned.inputs.desired.file if planned.inputs.desired else (record.source if record else None)
        if source is not None:
            line = decision_record(action, planned.verdict, record, now, self.host.digest)
            if planned.model is not None and planned.model.selection is not None:
                line["modelSelection"] = planned.model.selection.message  # what was chosen, and why not the others
            self.recorder.evidence(source, line)
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
            presence = planned.rendered.model
            changed = self.models.verify_before_start(presence) if presence is not None and presence.present else None
            if changed is not None:  # never started on unverified bytes
                return FailureInfo(reason="InvalidArtifact", message=changed, at=now), inputs.process
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
        return self._delete(Planned(action, None, Inputs(key, None, record)), clock.now())

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
                                                                 clock.now(), stopped_pid=ended.pid if ended else None))
            self.store.delete(key)
        with self._lock:
            self.records.pop(key, None)
        self.recorder.forget(key)
        if record is not None:
            self.recorder.flush({record.source})
        self._publish_routes()
        return None

    def _publish_routes(self) -> None:
        """The gateway's routes follow every status written (a read-only reconciler writes nothing)."""
        if not self.readonly:
            self.routes.publish(lambda: (self.desired, self.recorder.statuses()))

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


def _on_record(planned: Planned, digest: str | None) -> bool:
    """Whether this plan's decision is the same refusal or hold already on record (seen again by a resync)."""
    return digest is not None and not planned.executed and planned.record is not None and digest == planned.record.last_decision


def _needs_admission(spec: WorkloadSpec, memory_always_fits: Callable[[], bool]) -> bool:
    """Whether judging and starting it must not overlap another's: GPUs and models are placed one at a time, and
    a memory limit is committed one at a time unless every workload's fits at once (then starts overlap)."""
    return bool(spec.resources.gpus.wanted or spec.model or (spec.resources.memory and not memory_always_fits()))
