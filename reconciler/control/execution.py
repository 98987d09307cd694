"""Execute an approved plan: a Model is fetched, a Workload's operations run in order, one driver call each."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime

from reconciler.api.kinds import Model, Workload
from reconciler.api.launch import ContainerLaunch
from reconciler.api.rollout import Pins
from reconciler.api.status import FailureInfo
from reconciler.base.crash_points import crash_point
from reconciler.control.assembly import Parts
from reconciler.control.models import DOWNLOADING
from reconciler.control.pins import pins_of
from reconciler.control.planning import Planned, maybe_container
from reconciler.diff.plan import OpKind, Operation
from reconciler.drive.protocol import StartFailed
from reconciler.load.desired import DesiredState
from reconciler.observe.docker_engine import EngineUnavailable
from reconciler.observe.processes import ProcessObservation


@dataclass(frozen=True)
class Executed:
    """What executing a plan did: the failure (if any), what runs after, and the operations that ran."""

    failure: FailureInfo | None
    after: ProcessObservation | None
    ran: list[Operation] = field(default_factory=list)
    under_way: bool = False  # the last operation goes on in the background (the daemon's fetch)


def fetch_model(parts: Parts, planned: Planned, desired: DesiredState, now: datetime) -> tuple[Planned, Executed | None]:
    """A Model's fetch operation, when the approved plan has one (the daemon's runs in the background; `apply`
    waits for it). Returns the plan with the Model as it is after, and what was done (None: no fetch)."""
    entry, fetches = planned.inputs.desired, [op for op in planned.action.operations if op.kind is OpKind.fetch]
    if not planned.executed or not fetches or planned.model is None or entry is None \
            or not isinstance(entry.resource, Model):
        return planned, None
    problem = parts.models.ensure(planned.model)
    planned = replace(planned, model=parts.models.view(desired, entry.resource, entry.file))
    if problem is None:
        return planned, Executed(None, None, fetches)
    if problem.reason == DOWNLOADING:
        return planned, Executed(None, None, fetches, under_way=True)
    return planned, Executed(FailureInfo(reason=problem.reason, message=problem.message, at=now), None)


def execute(parts: Parts, planned: Planned, now: datetime, ran: list[Operation]) -> Executed:
    """Run the approved action's operations in order, each by one driver call. `ran`: the caller's list the operations
    done are added to as they end, so a pass that raises midway can still say which ran."""
    action, inputs = planned.action, planned.inputs
    if not planned.executed or action.key.kind != "Workload":
        return Executed(None, inputs.process)
    assert inputs.desired is not None and isinstance(inputs.desired.resource, Workload)
    name, drivers = action.key.name, parts.drivers
    grace = inputs.desired.resource.spec.termination_grace_period_seconds
    containers = maybe_container(inputs.desired, planned.record)
    operations, launch, after = action.operations, action.launch, inputs.process
    presence = planned.rendered.model
    if any(op.kind is OpKind.start for op in operations) and presence is not None and presence.present:
        changed = parts.models.verify_before_start(presence)
        if changed is not None:  # never started on unverified bytes (and what runs is not stopped for it)
            return Executed(FailureInfo(reason="InvalidArtifact", message=changed, at=now), inputs.process)
    kinds = [op.kind for op in operations]
    if OpKind.stop in kinds and OpKind.start in kinds[kinds.index(OpKind.stop):]:
        drivers.check_room()  # a replacement the state cannot record is not begun: what runs is not stopped for it
    # A container launch replacing what runs: the driver makes the new container before it stops the old one (the
    # stop is carried out by that one call, with the start). Not across a pull: a pull that fails ends what runs as
    # the stop before it did (nothing left, backing off), and only the plan's order says so in the evidence.
    replaced = next((op for op in operations if op.kind is OpKind.stop and not op.keep), None) \
        if isinstance(launch, ContainerLaunch) and OpKind.start in kinds and OpKind.pull not in kinds else None
    try:
        for op in operations:
            if op.kind is OpKind.stop and replaced is not None:
                continue  # carried out by the replacement's start
            if op.kind is OpKind.stop:  # `keep`: on record as exited, its restart policy and back-off take over
                drivers.stop(name, grace, forget=not op.keep)
                after = drivers.observe(name, containers) if op.keep else after
            elif op.kind is OpKind.pull:
                assert isinstance(launch, ContainerLaunch)
                launch = drivers.pull(launch)
            elif op.kind is OpKind.start:
                assert launch is not None
                if replaced is not None:
                    assert isinstance(launch, ContainerLaunch)
                    # a failed replacement still ends what ran, but a stop that failed: it runs on
                    after = drivers.replace(name, launch, action.generation or 1, grace, lambda: ran.append(replaced))
                else:
                    after = drivers.start(name, launch, action.generation or 1)
                crash_point("started")  # started and recorded by its driver; its outcome line is not yet written
            ran.append(op)
    except StartFailed as failed:
        return Executed(FailureInfo(reason=failed.reason, message=failed.message, at=now),
                        drivers.observe(name, containers), ran)
    except EngineUnavailable as unavailable:
        return Executed(FailureInfo(reason="EngineUnavailable", message=unavailable.message, at=now), inputs.process, ran)
    return Executed(None, after, ran)


def proven_pins(parts: Parts, planned: Planned, desired: DesiredState, after: ProcessObservation | None) -> Pins:
    """What the version proven on this pass runs: its executable's digest, its image ID, its model's digest."""
    entry, snapshot = planned.inputs.desired, planned.snapshot or desired
    view = parts.workloads.model_view(snapshot, entry.resource) if entry and isinstance(entry.resource, Workload) else None
    return pins_of(after.record.launch if after and after.record else None, view)
