"""The shape of evidence lines: a decision before anything is done, its outcome after."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from reconciler.api.launch import ContainerLaunch
from reconciler.api.resource_record import ResourceRecord
from reconciler.api.status import FailureInfo, Recovered, ResourceStatus
from reconciler.diff.plan import Action, Operation, Verb
from reconciler.gate.network import ListenFindings, at_most
from reconciler.gate.verdict import EXPOSURE_OBSERVED, Verdict
from reconciler.observe.processes import ProcessObservation
from reconciler.record.conditions import condition
from reconciler.record.status import ACCELERATED


_ACTED_VERBS = frozenset(verb.value for verb in Verb if verb is not Verb.none)  # a hold, an orphan: nothing done


def _action_name(action: Action) -> str:
    if action.hold is not None:
        return "hold"
    return "orphan" if action.orphaned else action.verb.value


def decision_digest(action: Action, verdict: Verdict | None) -> str:
    """Identifies a decision, so one repeated by every resync is recorded once."""
    reasons = [str(reason) for reason in (*verdict.reasons, *verdict.audited)] if verdict else []
    return f"{_action_name(action)}|{action.cause}|{verdict.decision.value if verdict else ''}|{reasons}"


def decision_record(
    action: Action, verdict: Verdict | None, record: ResourceRecord | None, now: datetime, host: str | None = None
) -> dict[str, Any]:
    """`host`: the capability digest of the host profile the decision was made on."""
    line: dict[str, Any] = {
        "time": now.isoformat(),
        "resource": str(action.key),
        "generation": action.generation or (record.generation if record else None),
        "event": "decision",
        "action": _action_name(action),
        "cause": action.cause,
        "decision": verdict.decision.value if verdict else None,
        "reasons": [str(reason) for reason in verdict.reasons] if verdict else [],
    }
    if action.operations:
        line["operations"] = [op.describe() for op in action.operations]  # what the drivers are to do, in order
    if host is not None:
        line["hostProfile"] = host
    if verdict is not None and verdict.audited:
        line["auditedDenials"] = [str(reason) for reason in verdict.audited]
    launch = action.launch
    if launch is not None and action.verb in (Verb.create, Verb.recreate):
        line["command"] = list(launch.argv)
        if isinstance(launch, ContainerLaunch):  # what the gate judged: the image, and the one it names here now
            line["image"], line["imageId"], line["configHash"] = launch.image, launch.image_id, launch.digest
        else:
            line["executable"] = launch.executable
    return line


def exposure_record(action: Action, generation: int, listens: ListenFindings, now: datetime) -> dict[str, Any]:
    """A run seen listening where the policy does not allow: where, why not, and whether it was stopped."""
    stopped = action.failure_reason == EXPOSURE_OBSERVED
    return {
        "time": now.isoformat(), "resource": str(action.key), "generation": generation, "event": "exposure-observed",
        "pid": listens.pid, "listening": at_most(listens.listening), "reasons": listens.reasons,
        "result": "stopped" if stopped else "recorded (audit mode)" if not listens.enforced else "recorded",
    }


def acceleration_record(before: ResourceRecord | None, after: ResourceRecord, status: ResourceStatus,
                        now: datetime) -> dict[str, Any] | None:
    """Where a run that asked for a GPU put its model, once each time that changes (loaded, off the GPU, ...):
    the estimate beside what its processes hold, so estimates can be trusted or corrected."""
    seen = condition(after.conditions, ACCELERATED)
    if seen is None or status.acceleration is None:
        return None
    earlier = condition(before.conditions, ACCELERATED) if before is not None else None
    if earlier is not None and (earlier.status, earlier.reason) == (seen.status, seen.reason):
        return None  # the memory held moves a little while it serves: not news
    return {
        "time": now.isoformat(), "resource": str(after.key), "generation": after.generation, "event": "acceleration",
        "pid": status.pid, "result": seen.reason, "message": seen.message, "acceleration": status.acceleration,
    }


def outcome_record(
    action: Action, generation: int, failure: FailureInfo | None, after: ProcessObservation | None, now: datetime,
    stopped_pid: int | None = None, ran: Sequence[Operation] = (), under_way: bool = False,
) -> dict[str, Any]:
    """`ran`: the operations that were done, in order; when it failed, the next one is the one that failed.
    `under_way`: the last of them goes on in the background (its end shows in the status, not here)."""
    line: dict[str, Any] = {
        "time": now.isoformat(),
        "resource": str(action.key),
        "generation": generation,
        "event": "action",
        "action": action.verb.value,
        "result": "failed" if failure else "started" if under_way else "done",
    }
    if ran:
        line["operations"] = [op.describe() for op in ran]
    if failure is not None:
        line["failure"] = {"reason": failure.reason, "message": failure.message}
        if len(ran) < len(action.operations):
            line["failedOperation"] = action.operations[len(ran)].describe()
    elif after is not None and after.running_pid is not None:
        line["pid"] = after.running_pid
        if after.record is not None and after.record.container_id:
            line["containerId"] = after.record.container_id
    if stopped_pid is not None:
        line["stoppedPid"] = stopped_pid
    return line


def acted_on(line: dict[str, Any]) -> bool:
    """Whether an evidence line is a decision the drivers were to carry out (an outcome line always follows one)."""
    operations = line.get("operations")
    approved = line.get("decision") == "approve" or line.get("decision") is None and line.get("action") == "delete"
    return line.get("event") == "decision" and approved and isinstance(operations, list) and bool(operations) \
        and isinstance(line.get("action"), str) and line["action"] in _ACTED_VERBS


def cut_short_outcome(decision: dict[str, Any], decision_hash: str, observed: ProcessObservation,
                      now: datetime, stopped_spawn: int | None = None) -> tuple[dict[str, Any], Recovered]:
    """The outcome line of an action a crash kept from its own (`decision`: its last line), from what runs now; and
    the note its status carries while that stays so. `closes` names the decision line by its hash.
    `stopped_spawn`: the pid its start spawned, never recorded, that the restart stopped."""
    operations = [op.get("op") for op in decision["operations"] if isinstance(op, dict)]
    run = observed.record
    try:
        decided = datetime.fromisoformat(str(decision.get("time")))
        started_by_it = "start" in operations and run is not None and run.started_at >= decided
    except (TypeError, ValueError):
        started_by_it = False
    running = observed.running_pid
    if running is not None:
        result, found = ("adopted", f"pid {running} runs as it started it, and is adopted") if started_by_it \
            else ("not done", f"what ran before still runs (pid {running}); the next pass decides again")
    elif started_by_it and run is not None and run.exit is not None:
        result, found = "exited", f"pid {run.pid} started and has since ended: {run.exit.describe()}"
    elif "start" in operations and stopped_spawn is not None:
        result, found = "not started", f"pid {stopped_spawn} it spawned was never recorded, and is stopped"
    elif "start" in operations:
        result, found = "not started", "nothing it would have started runs"
    else:
        result, found = "stopped", "nothing of it runs now"
    what = "start" if "start" in operations else "stop"
    cause = f"the {what}'s record was cut short by a crash (no outcome followed its decision); on restart: {found}"
    note = Recovered(action=str(decision["action"]), result=result, cause=cause, at=now, pid=running,
                     container_id=run.container_id if running is not None and run else None,
                     started_at=run.started_at if started_by_it and run else None)
    line: dict[str, Any] = {"time": now.isoformat(), "resource": decision.get("resource"),
                            "generation": generation if isinstance(generation := decision.get("generation"), int) else None,
                            "event": "action", "action": note.action,
                            "result": result, "cause": cause, "closes": decision_hash}
    line |= note.model_dump(mode="json", by_alias=True, include={"pid", "container_id", "started_at"}, exclude_none=True)
    if started_by_it and run is not None:
        line["pid"] = run.pid  # the run the start made, even one that has ended since
    if stopped_spawn is not None and running is None:
        line["stoppedPid"] = stopped_spawn
    return line, note
