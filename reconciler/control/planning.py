"""Observe and decide, for one resource: what runs, what the desired state asks, the action and its verdict.

Nothing here changes the host: a plan, a status, a seed and a reconcile all start with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from reconciler.api.approval import Approval
from reconciler.api.kinds import Model, Runtime, Workload
from reconciler.api.meta import ResourceKey
from reconciler.api.resource_record import ResourceRecord
from reconciler.control.assembly import Parts
from reconciler.control.holds import last_valid
from reconciler.control.models import ModelView
from reconciler.control.placement import SecretFacts
from reconciler.control.rollout import Rollouts
from reconciler.diff.engines import Rendered
from reconciler.diff.plan import Action, Inputs, is_orphan_kept, next_generation, note_observations, plan_resource
from reconciler.gate.network import ListenFindings
from reconciler.gate.placement import PlacementDecision
from reconciler.gate.verdict import Verdict
from reconciler.load.desired import DesiredEntry, DesiredState


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
    consent: Approval | None = None  # the hosted fallback's answer the placement was judged with (read once a plan)

    @property
    def record(self) -> ResourceRecord | None:
        return self.inputs.record

    @property
    def executed(self) -> bool:
        """Whether the drivers act on this plan: a change the gate approved."""
        return self.action.changes_something and self.verdict is not None and self.verdict.approved


def plan(parts: Parts, desired: DesiredState, key: ResourceKey, now: datetime, probe: bool = False) -> Planned:
    """`desired`: one snapshot for the whole plan, even if a refresh lands meanwhile. `probe`: run a due health
    check (only a reconcile does; a plan, a status or a seed must not wait on one)."""
    entry = desired.resources.get(key)
    record = parts.remembered.get(key)
    holds = parts.holds
    hold = holds.of(desired, key, entry, record) or Rollouts.hold(record, entry)
    if hold is None and entry is None and record is not None and not is_orphan_kept(record):
        hold = holds.prune_block(desired, record.source)
    if hold is not None:
        entry = last_valid(record)  # keeps running as it was: restarted after a crash, never changed
    process = model = listening = demand = None
    rendered = Rendered()
    if key.kind == "Workload":
        process = parts.drivers.observe(key.name, maybe_container(entry, record))
        listening = parts.workloads.listening(process)
        if entry is not None:
            assert isinstance(entry.resource, Workload)
            policy = holds.policy_in_force(desired)
            sharing = policy is not None and policy.spec.resources.gpu_sharing
            pins = Rollouts.restoring(record) if hold is not None else None
            demand = parts.activation.demand(entry.resource)
            rendered = parts.workloads.render(desired, parts.remembered.get, entry.resource, entry.file, process,
                                              sharing, pins)
            if record is not None:
                record = note_observations(record, next_generation(record, entry), process.exit, entry.resource,
                                           demand)
                if probe:
                    record = parts.workloads.probe_if_due(record, rendered, entry.resource, process, now)
    elif entry is not None and isinstance(entry.resource, Model):
        model = parts.models.view(desired, entry.resource, entry.file)
    inputs = Inputs(
        key=key, desired=entry, record=record, process=process, launch=rendered.launch, hold=hold,
        blocked=rendered.blocked, check=rendered.check, health=record.health if record else None, listening=listening,
        demand=demand, room=parts.activation.room_wait(key.name) if demand else None, model=model,
    )
    judged = parts.judge.judge(desired, holds.policy_in_force(desired), inputs, plan_resource(inputs, now), rendered,
                               tighten=holds.policy_settled(desired))
    return Planned(judged.action, judged.verdict, inputs, model, rendered, judged.placement, judged.secret,
                   desired.resources.get(key), desired, judged.listens, judged.consent)


def maybe_container(entry: DesiredEntry | None, record: ResourceRecord | None) -> bool:
    """Whether a workload is or was a container: only then is its state asked of the container engine."""
    runtimes = set()
    if entry is not None and isinstance(entry.resource, Workload):
        runtimes.add(entry.resource.spec.runtime.value)
    if record is not None and record.kind == "Workload":
        runtimes.add(record.resource.get("spec", {}).get("runtime", Runtime.native.value))
    return not runtimes or Runtime.container.value in runtimes
