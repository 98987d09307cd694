"""One reconcile of one resource, in four steps: observe and decide (`planning`), record the decision
(`recording`), execute it (`execution`, `removal`), record the outcome (`recording`).

The collaborators of every step are built once (`assembly.assemble`) and handed over; this module only
composes the steps and keeps the desired-state snapshot they share.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path
from typing import TextIO

from reconciler.api.kinds import Workload, WorkloadSpec
from reconciler.api.meta import ResourceKey
from reconciler.api.resource_record import ResourceRecord
from reconciler.api.status import ResourceStatus
from reconciler.control.assembly import assemble
from reconciler.control.execution import Executed, execute, fetch_model
from reconciler.control.holds import last_valid
from reconciler.control.metrics import Metrics
from reconciler.control.planning import Planned, plan
from reconciler.control.recording import (
    Recorded, conclude_pass, describe, log_decision, measure, record_decision_before_acting, record_failed_acting,
    record_outcome,
)
from reconciler.control.recovery import close_cut_short
from reconciler.control.removal import remove_resource
from reconciler.control.result import Result
from reconciler.control.gateway_routes import judged_specs
from reconciler.diff.health import next_probes_in
from reconciler.diff.uses import WAITING_FOR_DEPENDENCIES
from reconciler.diff.plan import Action, Inputs, Operation, Verb, prerequisites
from reconciler.gate.verdict import DEFAULT_POLICY
from reconciler.load.desired import DesiredState, LoadedFiles, load_desired
from reconciler.observe import clock
from reconciler.observe.git import GitError

log = logging.getLogger("reconciler")

ENGINE_RETRY_SECONDS = 15.0
DEPENDENCY_LOOK_SECONDS = 1.0  # how soon a workload waiting for the ones it uses looks again
REVISION_SECONDS = 30.0  # a commit that changes no spec shows in status within this (a spec change at once)


class DesiredStateUnreadable(Exception):
    pass


class Reconciler:
    """Converges the resources of one desired-state folder on this host, one key at a time (`reconcile`), and
    answers what a pass would do (`plan`) and what is true now (`status`) without changing anything.

    `refresh` takes the snapshot of the desired state every step of a pass reads; a reconcile never runs
    before the first one (no evidence from a partial view). The work queue (`control/loop.py`) guarantees
    that one key is never reconciled twice at once; an admission lock makes the judging and starting of
    workloads that commit GPUs or memory one step, so nothing is given twice."""

    def __init__(
        self, root: Path, state_dir: Path, *, allow_empty: bool = False,
        on_exit: Callable[[str], None] | None = None, readonly: bool = False,
        on_engine_back: Callable[[], None] | None = None, metrics: Metrics | None = None,
        on_model_fetched: Callable[[], None] | None = None, terminal: TextIO | None = None,
        revision: Callable[[], str | None] | None = None, channel: str | None = None, offline: bool = False,
    ) -> None:
        """`allow_empty`: an empty desired state prunes everything (else it is held as a likely mistake).
        `on_exit`: told the name of each workload whose process or container ended. `readonly`: nothing is
        written (plan, status, describe). `on_engine_back`: the container engine is reachable again.
        `metrics`: what passes are counted in. `on_model_fetched`: models are fetched in the background (the
        daemon) and this is called when one is done; without it a pass fetches what it needs before it ends
        (`apply`). `terminal`: where a fetch shows its progress. `revision`: which revision of its source the
        desired state is (by default the HEAD of the git repository the folder is in, if any); `channel`:
        where that source is, for the decision records (by default the folder). `offline`: no request leaves
        the host (status, describe): remote model headers are what the daemon recorded."""
        self.parts = parts = assemble(
            root, state_dir, allow_empty=allow_empty, on_exit=on_exit, readonly=readonly,
            on_engine_back=on_engine_back, metrics=metrics, on_model_fetched=on_model_fetched, terminal=terminal,
            revision=revision, channel=channel, offline=offline)
        self.root, self.approvals, self.models, self.workloads = parts.root, parts.approvals, parts.models, parts.workloads
        self.metrics = metrics
        self.desired = DesiredState(files=(), resources={})
        self._loaded = LoadedFiles()  # what the files' bytes gave at the last refresh
        self._seeded = False
        self._stopped_spawns: dict[str, int] | None = None  # what adopt() stopped, by workload (None: not yet run)
        self._admission_lock = threading.Lock()
        self._revision_seen_at: float | None = None
        parts.workloads.statuses = self._statuses_of  # a start waits for the workloads it uses to be Ready

    @property
    def records(self) -> dict[ResourceKey, ResourceRecord]:
        """What each resource was last reconciled to (a copy)."""
        return self.parts.remembered.snapshot()

    # -- load -------------------------------------------------------------------------------

    def refresh(self, writing: frozenset[str] = frozenset()) -> DesiredState:
        """Take a new snapshot. Files in `writing` are mid-save: what they define is held as it runs."""
        parts = self.parts
        if not parts.root.is_dir():
            raise DesiredStateUnreadable(f"{parts.shown_root}: not a readable folder")
        previous = self.desired
        self.desired, parts.holds.writing = load_desired(parts.shown_root, self._loaded), writing
        parts.workloads.observe_host()
        parts.workloads.memory_total = parts.host.refresh(parts.workloads.inventory, self.desired).memory.total
        self._model_capacity()
        if parts.readonly:
            return self.desired
        seen = self._revision_seen_at
        if seen is None or self.desired != previous or time.monotonic() - seen >= REVISION_SECONDS:
            self.revision_changed()  # a git subprocess or five: not on every pass
        if not self._seeded:
            self._seed()
        spec_files = {file for file in {*previous.files, *self.desired.files} if not file.endswith("/")}
        changed = {file for file in spec_files
                   if parts.recorder.set_file_errors(file, [str(error) for error in self.desired.errors.get(file, [])])}
        parts.recorder.flush(changed)
        self._publish_routes()
        return self.desired

    def revision_changed(self) -> None:
        """Status and evidence written from now on name the revision in force."""
        recorder = self.parts.recorder
        try:
            recorder.revision = self.parts.revision()
        except (GitError, OSError) as error:  # e.g. git's "dubious ownership" as root over a user's checkout
            if recorder.revision is not None or self._revision_seen_at is None:
                log.warning("the desired state's revision is unknown: %s", error)
            recorder.revision = None
        self._revision_seen_at = time.monotonic()

    def _model_capacity(self) -> None:
        """What the variants of a Model are fitted to: this host's profile, the policy's reserve, the engines here."""
        policy = self.parts.holds.policy_in_force(self.desired)
        facts = self.workloads.facts
        engines = {name for name, found in (("llama.cpp", facts.llama_server or facts.llama_cpp_python),
                                            ("vllm", facts.vllm)) if found}
        rules = policy.spec if policy else DEFAULT_POLICY
        self.models.capacity_inputs = (self.parts.host.profile, rules.resources, frozenset(engines))
        self.models.rules = rules.models

    def _seed(self) -> None:
        """Give the status writer every known resource before the first flush, so no status file is partial; first,
        the outcome of any action a crash cut short (control/recovery.py), once adopt() has run (the daemon's order)."""
        now, keys = clock.now(), self.keys()
        if self._stopped_spawns is not None:
            close_cut_short(self.parts, self.desired, now, self._stopped_spawns)
        for key in keys:
            described = describe(self.parts, self.plan(key, now), self.desired, now)
            if described:
                self.parts.recorder.set_status(described[0].source, described[1])
        self.parts.recorder.sweep_orphans()
        self._seeded = True
        self._publish_routes()

    def keys(self, fresh: bool = True) -> list[ResourceKey]:
        """`fresh`: from a new container listing (a pass's); else from the last one and the engine's events since,
        while they are subscribed (`apply`'s round, which follows its seed's listing at once)."""
        owned = set(self.parts.remembered.snapshot())
        drivers = self.parts.drivers
        processes = {ResourceKey("Workload", name) for name in (drivers.owned_names() if fresh else drivers.seen_names())}
        if fresh:
            drivers.tidy()  # what a replacement left, as this listing shows it (an old one whose removal failed)
        return sorted(set(self.desired.resources) | set(self.desired.rejected) | owned | processes)

    def prerequisites(self, keys: list[ResourceKey]) -> dict[ResourceKey, frozenset[ResourceKey]]:
        """The plan's edges between `keys`: which each is reconciled after within one round."""
        return prerequisites(keys, self.desired, self.parts.remembered.snapshot())

    def adopt(self) -> dict[str, int]:
        """Take over what runs; stop what a crash spawned and left unrecorded. What a crash cut short is judged only
        after that (at the first snapshot, or now if it was taken first: `apply`), so its outcome names what was
        stopped rather than saying nothing runs."""
        stopped = self._stopped_spawns = self.parts.drivers.adopt()
        for name, pid in stopped.items():
            log.warning("%s: stopped pid %d: spawned by a start that a crash cut short, never recorded", name, pid)
        if self._seeded:
            now = clock.now()
            for key in close_cut_short(self.parts, self.desired, now, stopped):
                described = describe(self.parts, self.plan(key, now), self.desired, now)
                if described:
                    self.parts.recorder.set_status(described[0].source, described[1])
        return stopped

    # -- observe and decide (no changes to the host) ----------------------------------------

    def plan(self, key: ResourceKey, now: datetime, probe: bool = False) -> Planned:
        """`probe`: run a due health check (only a reconcile does; a plan, a status or a seed must not wait on one)."""
        return plan(self.parts, self.desired, key, now, probe)

    def status(self, key: ResourceKey) -> ResourceStatus | None:
        """What `reconciler status` shows: the remembered record judged against what is observed now."""
        now = clock.now()
        described = describe(self.parts, self.plan(key, now), self.desired, now)
        return described[1] if described else None

    def _statuses_of(self, names: list[str]) -> dict[str, ResourceStatus | None]:
        """Workloads' statuses as the daemon wrote them; a read-only reconciler (status, plan) writes none, and judges
        them now instead."""
        keys = [ResourceKey("Workload", name) for name in names]
        written = {} if self.parts.readonly else self.parts.recorder.statuses()
        return {key.name: self.status(key) if self.parts.readonly else written.get(key) for key in keys}

    # -- the whole reconcile ----------------------------------------------------------------

    def reconcile(self, key: ResourceKey) -> Result:
        """Converge one resource; says when it wants another look (raises if it failed). A pass that rolled a
        generation back is followed at once by the pass that restores the known-good version."""
        if not self._seeded:  # no evidence may be written from a partial view
            raise RuntimeError(f"{key}: reconciled before the desired state and this host's facts were first loaded")
        while True:
            # judged and started as one step: no GPU given twice, no memory committed twice; an on-demand start
            # first stops the idle on-demand workloads it needs the room of
            with self._admission_lock if self._needs_admission(key) else nullcontext():
                self.parts.activation.make_room(self.desired, key, self.parts.holds.policy_in_force(self.desired))
                look, rolled_back = self._reconcile(key)
            if not rolled_back:
                return look

    def _needs_admission(self, key: ResourceKey) -> bool:
        """Whether the version asked for, or the one on record, commits GPUs, memory or a model."""
        entry, record = self.desired.resources.get(key), self.parts.remembered.get(key)
        # the version on record may be the one started (a held or rolled-back spec): either may need admission.
        # Validated only when it differs from the desired one: this runs on every reconcile.
        differs = record is not None and (entry is None or record.spec_hash != entry.spec_hash)
        on_record = last_valid(record) if key.kind == "Workload" and differs else None
        return any(isinstance(version.resource, Workload) and _needs_admission(version.resource.spec,
                                                                               self._memory_always_fits)
                   for version in (entry, on_record) if version is not None)

    def _memory_always_fits(self) -> bool:
        policy = self.parts.holds.policy_in_force(self.desired)
        return self.workloads.memory_always_fits(self.desired, self.parts.remembered.all(),
                                                 (policy.spec if policy else DEFAULT_POLICY).resources)

    def _reconcile(self, key: ResourceKey) -> tuple[Result, bool]:
        parts, started, now, desired = self.parts, time.monotonic(), clock.now(), self.desired
        planned = plan(parts, desired, key, now, probe=True)
        if planned.action.verb is Verb.delete:
            kept = remove_resource(parts, planned, now)
            self._publish_routes()
            measure(parts, planned, None, None, started)
            return Result.after(ENGINE_RETRY_SECONDS) if kept else Result.until_event(), False
        digest = record_decision_before_acting(parts, planned, now)
        ran: list[Operation] = []
        try:
            planned, fetched = fetch_model(parts, planned, self.desired, now)
            executed = fetched or execute(parts, planned, now, ran)
        except Exception as error:
            record_failed_acting(parts, planned, ran, error)
            raise
        log_decision(planned, digest, executed)
        concluded = conclude_pass(parts, planned, executed, now)
        measure(parts, planned, executed.failure, concluded[1] if concluded else None, started)
        if concluded is None:
            return Result.until_event(), False
        recorded = record_outcome(parts, planned, executed, concluded, digest, self.desired, now)
        self._publish_routes()
        idle_look = self.parts.activation.next_look(planned.inputs.desired, executed.after)
        return (Result.soonest(self._next_look(planned, executed, recorded, now), recorded.rollout_look, idle_look),
                recorded.rolled_back)

    def _next_look(self, planned: Planned, executed: Executed, recorded: Recorded, now: datetime) -> float | None:
        after, record = executed.after, recorded.record
        running = after.record if after and after.running_pid else None
        probes = [(check, state) for check, state in ((planned.rendered.check, record.health),
                                                      (planned.rendered.readiness, record.readiness)) if check]
        if running is not None and probes:
            return next_probes_in(probes, running.pid, running.started_at, now)
        if planned.model is not None and planned.model.problem is not None:
            return self.models.next_look(planned.model)
        if planned.action.blocked is not None and planned.action.blocked.reason == WAITING_FOR_DEPENDENCIES:
            return DEPENDENCY_LOOK_SECONDS  # their Ready is another resource's pass: looked at, not waited on
        # Only a back-off still ahead is worth a look: one already past was this pass's to act on, and a start
        # it did not make (refused by the gate, awaiting an answer, placed elsewhere) waits for an input to change.
        retry_at = recorded.record.next_retry_at if recorded.status.pid is None else None
        return (retry_at - now).total_seconds() if retry_at is not None and retry_at > now else None

    def remove(self, key: ResourceKey, cause: str) -> str | None:
        """Stop and forget a resource whatever the desired state says (`reconciler down`); why not, if it could not."""
        record = self.parts.remembered.get(key)
        action = Action(key, Verb.delete, cause, record.generation if record else None)
        kept = remove_resource(self.parts, Planned(action, None, Inputs(key, None, record)), clock.now())
        self._publish_routes()
        return kept

    def _publish_routes(self) -> None:
        """The gateway's routes follow every status written (a read-only reconciler writes nothing)."""
        if not self.parts.readonly:
            self.parts.routes.publish(lambda: self.desired, lambda keys: (
                self.parts.recorder.statuses(keys),
                judged_specs({key: record for key in keys if (record := self.parts.remembered.get(key)) is not None})))


def _needs_admission(spec: WorkloadSpec, memory_always_fits: Callable[[], bool]) -> bool:
    """Whether judging and starting it must not overlap another's: GPUs and models are placed one at a time, and
    a memory limit is committed one at a time unless every workload's fits at once (then starts overlap)."""
    return bool(spec.resources.gpus.wanted or spec.model or (spec.resources.memory and not memory_always_fits()))
