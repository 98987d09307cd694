"""Delete a resource: what runs for it is stopped, its record forgotten, and both are evidence."""

from __future__ import annotations

import logging
from datetime import datetime

from reconciler.api.kinds import Runtime, Workload
from reconciler.api.status import FailureInfo
from reconciler.control.assembly import Parts
from reconciler.control.evidence import decision_record, outcome_record
from reconciler.control.logfmt import about
from reconciler.control.planning import Planned
from reconciler.drive.protocol import StartFailed
from reconciler.observe import clock
from reconciler.observe.docker_engine import EngineUnavailable

log = logging.getLogger("reconciler")


def remove_resource(parts: Parts, planned: Planned, now: datetime) -> str | None:
    """Why it is kept on record, when what runs could not be stopped (the engine is away or refused); else None."""
    key, record = planned.action.key, planned.record
    if record is not None or planned.inputs.process is not None and planned.inputs.process.record is not None:
        log.info("%s: delete (%s)", key, planned.action.cause, **about(key))
    if record is not None:
        parts.recorder.evidence(record.source, decision_record(planned.action, planned.verdict, record, now),
                                before_write=lambda decision: parts.remembered.store.vouch(key, decision))
    ended = None
    if key.kind == "Workload":
        workload = Workload.model_validate(record.resource) if record else None
        try:
            ended = parts.drivers.stop(key.name, workload.spec.termination_grace_period_seconds if workload else 10.0)
        except (EngineUnavailable, StartFailed) as problem:
            if workload is None or workload.spec.runtime is Runtime.container:
                log.warning("%s: cannot remove its container yet: %s", key, problem, **about(key))
                if record is not None:  # the decision's outcome: a decision with none reads as cut short by a crash
                    reason = problem.reason if isinstance(problem, StartFailed) else "EngineUnavailable"
                    failure = FailureInfo(reason=reason, message=problem.message, at=clock.now())
                    parts.recorder.evidence(record.source, outcome_record(planned.action, record.generation, failure,
                                                                          None, failure.at))
                    parts.remembered.store.settled(key)
                return str(problem)  # kept on record until its container is really gone
    if record is not None:
        parts.recorder.evidence(record.source, outcome_record(planned.action, record.generation, None, None, clock.now(),
                                                              stopped_pid=ended.pid if ended else None,
                                                              ran=planned.action.operations))
        parts.remembered.store.delete(key)
        parts.remembered.store.settled(key)
    parts.remembered.forget(key)
    parts.recorder.forget(key)
    if record is not None:
        parts.recorder.flush({record.source})
    return None
