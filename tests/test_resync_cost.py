"""What a resync's reconcile of an unchanged, running workload reads: each input once, and nothing of the other
resources (a pass reconciles every key, so whatever one reconcile reads of all of them makes a pass quadratic).
Counted, not timed; each count is of a real reconcile of a real process."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import pytest

from reconciler.api.kinds import Workload
from reconciler.api.meta import ResourceKey
from reconciler.control import recording
from reconciler.control.reconciler import Reconciler
from reconciler.drive import process as process_module
from reconciler.drive.groups import start_ticks_and_state
from reconciler.drive.process import ProcessDriver
from reconciler.observe import clock
from reconciler.observe.processes import ProcessState
from reconciler.record.recorder import DECISIONS, sibling
from reconciler.record import approvals
from tests.conftest import POLICY_YAML, Workspace, wait_for, workload_yaml


def running(workspace: Workspace, *names: str) -> Reconciler:
    workspace.write("policy.yaml", POLICY_YAML)
    workspace.write("app.yaml", "---\n".join(workload_yaml(name) for name in names))
    reconciler = Reconciler(workspace.desired, workspace.state)
    reconciler.adopt()
    reconciler.refresh()

    def all_running() -> bool:
        for key in reconciler.keys():
            reconciler.reconcile(key)
        return all((workspace.resource_status("app.yaml", name) or {}).get("phase") == "Running" for name in names)

    wait_for(all_running, 30, what="running")
    return reconciler


def test_a_reconcile_reads_each_answer_about_its_workload_once(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    reconciler = running(workspace, "app")
    read: list[str] = []
    real_read = approvals._read
    monkeypatch.setattr(approvals, "_read", lambda path, what: read.append(Path(path).name) or real_read(path, what))
    reconciler.reconcile(ResourceKey("Workload", "app"))
    # the approval, the hosted consent (read three times), a rollback request
    assert sorted(read) == ["app.hosted.json", "app.json", "app.rollback.json"]


def test_a_reconcile_of_a_workload_no_route_reads_reads_no_other_resource_s_status_or_record(
        workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each reconcile publishes the gateway's routes; it read every status and every record to do so."""
    reconciler = running(workspace, "app", "other")
    recorder, remembered = reconciler.parts.recorder, reconciler.parts.remembered
    statuses_read: list[int] = []
    real_statuses = recorder.statuses
    monkeypatch.setattr(recorder, "statuses", lambda *keys: statuses_read.append(len(found := real_statuses(*keys)))
                        or found)
    monkeypatch.setattr(remembered, "snapshot", lambda: pytest.fail("every record was copied"))
    reconciler.reconcile(ResourceKey("Workload", "app"))
    assert sum(statuses_read) == 0


def test_an_unchanged_decision_record_is_not_hashed_again_and_a_changed_one_is_evidence(
        workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    reconciler = running(workspace, "app")
    key = ResourceKey("Workload", "app")
    hashed: list[object] = []
    real_digest = recording.record_digest
    monkeypatch.setattr(recording, "record_digest", lambda document: hashed.append(document) or real_digest(document))
    shown = reconciler.parts.recorder.statuses([key])[key].decision_record
    reconciler.reconcile(key)
    reconciler.reconcile(key)
    assert hashed == []  # the same record as the last pass's, rebuilt: its digest is known
    assert reconciler.parts.recorder.statuses([key])[key].decision_record is shown  # the status file compares at once
    record = reconciler.parts.remembered.get(key)
    document = copy.deepcopy(reconciler.parts.recorder.statuses([key])[key].decision_record)
    assert record is not None and document is not None
    document["placement"] = {**document["placement"], "reason": "SomethingElse"}
    changed = recording.record_runtime_decision_change(reconciler.parts, record, document, clock.now())
    assert len(hashed) == 1 and changed.decision_record_digest == real_digest(document) != record.decision_record_digest
    assert workspace.evidence("app.yaml")[-1]["digest"] == changed.decision_record_digest


def test_an_adopted_process_is_judged_alive_or_a_zombie_from_one_read_of_its_stat(
        workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """A restarted daemon adopts every workload: none is its child, so each reconcile asks the kernel. psutil read
    /proc/PID/stat three times for it (its identity, the start ticks, the state)."""
    running(workspace, "app")
    adopted = ProcessDriver(workspace.state, readonly=True)
    monkeypatch.setattr(process_module.psutil, "Process", lambda pid: pytest.fail("asked psutil"))
    assert adopted.observe("app").state is ProcessState.running
    zombie = subprocess.Popen(["true"])  # this process's child, never waited for: a zombie once it exits
    try:
        wait_for(lambda: start_ticks_and_state(zombie.pid)[1] == "Z", 10, what="a zombie")
        record = adopted.observe("app").record
        assert record is not None
        (workspace.state / "processes" / "app.json").write_text(record.model_copy(update={
            "pid": zombie.pid, "start_ticks": start_ticks_and_state(zombie.pid)[0]}).model_dump_json(by_alias=True))
        assert adopted.observe("app").state is ProcessState.exited  # read-only: noted, not written
    finally:
        zombie.wait()
        (workspace.state / "processes" / "app.json").write_text(record.model_dump_json(by_alias=True))


def test_an_unchanged_spec_is_turned_into_data_once_not_at_each_reconcile(
        workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    reconciler = running(workspace, "app")
    dumped: list[str] = []
    real_dump = Workload.model_dump
    monkeypatch.setattr(Workload, "model_dump", lambda self, **options: dumped.append(self.name) or real_dump(self, **options))
    for _ in range(3):
        reconciler.refresh()
        reconciler.reconcile(ResourceKey("Workload", "app"))
    assert dumped == []
    workspace.write("app.yaml", workload_yaml("app", args=("changed",)))
    reconciler.refresh()
    reconciler.reconcile(ResourceKey("Workload", "app"))
    record = reconciler.parts.remembered.get(ResourceKey("Workload", "app"))
    assert dumped == ["app"] and record is not None and "changed" in str(record.resource["spec"])


def test_a_status_file_found_equal_to_what_it_holds_is_compared_by_identity_next_time(workspace: Workspace) -> None:
    """After a restart a file holds what the seed made for each of its resources; the reconcile of one flushes the
    whole file, and each later, equal status of the others was compared deeply with the seed's for as long as the
    daemon ran."""
    running(workspace, "app", "other")
    reconciler = Reconciler(workspace.desired, workspace.state)  # a restart: it adopts what runs
    reconciler.adopt()
    reconciler.refresh()
    keys = [ResourceKey("Workload", "app"), ResourceKey("Workload", "other")]
    for key in keys:
        reconciler.reconcile(key)
    held = reconciler.parts.recorder._written[sibling("app.yaml", DECISIONS)][0]["resources"]
    shown = reconciler.parts.recorder.statuses(keys)
    assert [resource["decisionRecord"] is shown[key].decision_record for resource, key in zip(held, keys)] == [True, True]
