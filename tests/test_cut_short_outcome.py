"""What a restart writes for a decision left without its outcome, by what it observes: pure, every branch; and
that it leaves no named decision behind that nothing can close."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError

from reconciler.api.meta import ResourceKey
from reconciler.api.status import Recovered
from reconciler.control.reconciler import Reconciler
from reconciler.control.evidence import acted_on, cut_short_outcome
from reconciler.observe.processes import ProcessObservation, ProcessState
from reconciler.record.store import StateStore
from tests.conftest import Workspace, workload_yaml
from tests.test_plan import NOW, ended, process, workload

WEB = workload("web")
DECIDED = NOW - timedelta(minutes=10)  # test_plan's process started 5 minutes before NOW: after this decision


def decision(*operations: str, action: str = "create", at=DECIDED, **fields) -> dict:
    return {"event": "decision", "resource": "Workload/web", "generation": 3, "action": action, "decision": "approve",
            "time": at if isinstance(at, str) else at.isoformat(), "operations": [{"op": op, "cause": "c"} for op in operations], **fields}


@pytest.mark.parametrize(("line", "observed", "result", "running"), [
    (decision("start"), ProcessObservation(ProcessState.running, process(WEB, pid=7)), "adopted", 7),
    (decision("stop", "start", at=NOW), ProcessObservation(ProcessState.running, process(WEB, pid=7)), "not done", 7),
    (decision("start"), ProcessObservation(ProcessState.exited, process(WEB, pid=7, exit=ended(pid=7))), "exited", None),
    (decision("stop", "start", action="recreate", at=NOW), ProcessObservation(ProcessState.absent), "not started", None),
    (decision("remove", action="delete", decision=None), ProcessObservation(ProcessState.absent), "stopped", None),
    (decision("start", at="not a time"), ProcessObservation(ProcessState.running, process(WEB, pid=7)), "not done", 7),
])
def test_the_outcome_says_what_the_restart_found(line: dict, observed: ProcessObservation, result: str,
                                                 running: int | None) -> None:
    """The status keeps the note while the pid that ran at the restart (None: nothing) is what runs."""
    assert acted_on(line)
    written, note = cut_short_outcome(line, "ab" * 32, observed, NOW)
    started = result in ("adopted", "exited")  # the start made a run: its pid and start time are on the line
    assert (written["event"], written["action"], written["result"]) == ("action", line["action"], result)
    assert written.get("pid") == (7 if started or running else None) and ("startedAt" in written) == started
    assert written["closes"] == "ab" * 32 and written["generation"] == 3 and "cut short by a crash" in written["cause"]
    assert (note.result, note.pid) == (result, running)


@pytest.mark.parametrize("line", [
    decision("start", decision="deny"), decision("start", decision="needs-approval"), decision(action="hold"),
    decision("start", action="hold"), {**decision("start"), "event": "action"}, {**decision("start"), "operations": "x"},
    decision("start", action="x" * 10_000), decision("start", action=["create"]), decision("start", action="none"),
])
def test_only_a_decision_carried_out_is_waiting_for_an_outcome(line: dict) -> None:
    assert not acted_on(line)


def test_a_forged_generation_is_not_copied_into_the_reconcilers_line() -> None:
    written, _ = cut_short_outcome(decision("start", generation="x" * 10_000), "00" * 32,
                                   ProcessObservation(ProcessState.absent), NOW)
    assert written["generation"] is None


@pytest.mark.parametrize("field,value", [("result", "took over"), ("action", "hold")])
def test_a_recovered_note_holds_only_the_outcomes_and_actions_a_restart_can_find(field: str, value: str) -> None:
    note = {"action": "create", "result": "adopted", "cause": "c", "at": NOW, field: value}
    with pytest.raises(ValidationError):
        Recovered.model_validate(note)


def test_acting_files_no_open_decision_answers_are_settled_not_kept_forever(
        workspace: Workspace, caplog: pytest.LogCaptureFixture) -> None:
    """A non-Workload's (no driver carries its decisions out) and one whose decision is in no evidence line (the
    evidence went elsewhere, or the file was edited) were read again by every restart, and never removed."""
    workspace.write("app.yaml", workload_yaml("app"))
    store = StateStore(workspace.state)
    store.vouch(ResourceKey("Model", "tiny"), "0" * 64)
    store.vouch(ResourceKey("Workload", "app"), "f" * 64)  # no line of app.yaml's evidence has this hash
    reconciler = Reconciler(workspace.desired, workspace.state)
    reconciler.refresh()
    reconciler.adopt()
    assert store.acting_on() == []
    assert "Workload/app: the decision named in" in caplog.text and "nothing to close" in caplog.text
