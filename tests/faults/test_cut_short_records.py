"""The daemon SIGKILLed between carrying out an action and appending its outcome line: the restart adopts what runs
(or finds it gone) and says so in the evidence, so the chain never ends on a decision nobody can tell was carried out.

A start (a process, a container) is cut short at the crash point right after its driver has started and recorded it
(base/crash_points.py); a stop is held by a workload that takes its SIGTERM slowly, and the daemon is killed while it waits."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
from pathlib import Path

import psutil
import pytest

from reconciler.base.crash_points import CRASH_VARIABLE
from tests.conftest import SLEEPER, Workspace, wait_for, workload_yaml
from tests.docker_engine import EngineUnderTest
from tests.faults.conftest import Ledger
from tests.faults.test_disk_full import fill, small_disk  # noqa: F401 (a fixture)
from tests.test_containers import container_yaml, policy_yaml, the_container


def takes_its_stop_slowly(stopping: Path) -> str:
    """Says it got its SIGTERM, then ends only once the daemon that sent it is dead."""
    return (f"import os, signal, sys, time\ndef ending(*_):\n    open({str(stopping)!r}, 'w').close()\n"
            "    parent = os.getppid()\n    while os.getppid() == parent:\n        time.sleep(0.05)\n    sys.exit(0)\n"
            "signal.signal(signal.SIGTERM, ending)\ntime.sleep(600)\n")


def raw_lines(workspace: Workspace, spec_file: str) -> list[str]:
    return (workspace.desired / spec_file.replace(".yaml", ".evidence.jsonl")).read_text().splitlines()


def closing(workspace: Workspace, spec_file: str) -> dict | None:
    return next((line for line in workspace.evidence(spec_file) if "closes" in line), None)


def closed_decision(workspace: Workspace, spec_file: str, what: str) -> tuple[dict, str]:
    """The restart's outcome line for `spec_file` and the raw decision line before it, which it names by hash."""
    ended = wait_for(lambda: closing(workspace, spec_file), 30, what=what)
    decision_line = raw_lines(workspace, spec_file)[workspace.evidence(spec_file).index(ended) - 1]
    assert ended["closes"] == hashlib.sha256(decision_line.encode()).hexdigest()
    return ended, decision_line


def assert_chain_verifies(workspace: Workspace) -> None:
    verified = workspace.cli("verify", str(workspace.desired), "--state-dir", str(workspace.state))
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_a_start_whose_outcome_a_crash_cut_short_is_adopted_and_says_so(workspace: Workspace, ledger: Ledger) -> None:
    row = ledger.row("daemon SIGKILLed after a start, before its outcome line",
                     "the restart adopts the same pid and appends its outcome naming the decision; the chain verifies")
    row.runs += 1
    workspace.write("held.yaml", workload_yaml("held", SLEEPER))
    daemon = workspace.start_daemon(env={**os.environ, CRASH_VARIABLE: "started"})
    assert daemon.wait(timeout=60) == -signal.SIGKILL
    workspace.stop_daemon()
    assert [line["event"] for line in workspace.evidence("held.yaml")] == ["decision"]  # what a crash there leaves
    pid = json.loads((workspace.state / "processes" / "held.json").read_text())["pid"]

    workspace.start_daemon()
    ended, _ = closed_decision(workspace, "held.yaml", "the cut-short start's outcome")
    assert (ended["event"], ended["action"], ended["result"], ended["pid"]) == ("action", "create", "adopted", pid), ended
    assert "cut short by a crash" in ended["cause"] and ended["startedAt"], ended
    status = wait_for(lambda: (s := workspace.resource_status("held.yaml", "held")) and s.get("recovered") and s, 30,
                      what="the status showing it")
    assert status["pid"] == pid and status["recovered"]["result"] == "adopted", status
    assert psutil.pid_exists(pid) and workspace.actions("held.yaml") == ["create"], "adopted, never started twice"
    listed = workspace.cli("status")
    assert "create adopted after a crash cut its record short" in listed.stdout, listed.stdout
    described = workspace.cli("describe", "held")
    assert "Recovered:" in described.stdout and "adopted" in described.stdout, described.stdout
    assert_chain_verifies(workspace)
    row.passed += 1


def test_a_container_start_whose_outcome_a_crash_cut_short_is_adopted_and_says_so(
    workspace: Workspace, docker_engine: EngineUnderTest, ledger: Ledger
) -> None:
    row = ledger.row("daemon SIGKILLed after a container start, before its outcome line",
                     "the restart adopts the same container and appends its outcome naming the decision")
    row.runs += 1
    workspace.write("policy.yaml", policy_yaml())
    workspace.write("boxed.yaml", container_yaml("boxed", command=["sleep", "600"]))
    daemon = workspace.start_daemon(env={**os.environ, CRASH_VARIABLE: "started"})
    assert daemon.wait(timeout=90) == -signal.SIGKILL
    workspace.stop_daemon()
    assert [line["event"] for line in workspace.evidence("boxed.yaml")] == ["decision"]
    started = the_container(docker_engine, workspace, "boxed").id

    workspace.start_daemon()
    ended = wait_for(lambda: closing(workspace, "boxed.yaml"), 60, what="the cut-short start's outcome")
    assert (ended["action"], ended["result"], ended["containerId"]) == ("create", "adopted", started), ended
    status = wait_for(lambda: (s := workspace.resource_status("boxed.yaml", "boxed")) and s.get("recovered") and s, 30,
                      what="the status showing it")
    assert status["containerId"] == started and status["recovered"]["containerId"] == started, status
    assert the_container(docker_engine, workspace, "boxed").id == started and workspace.actions("boxed.yaml") == ["create"]
    row.passed += 1


def test_a_stop_whose_outcome_a_crash_cut_short_is_recorded_as_done(workspace: Workspace, ledger: Ledger) -> None:
    row = ledger.row("daemon SIGKILLed during a stop, before its outcome line",
                     "the restart finds the process gone and appends the stop's outcome naming the decision")
    row.runs += 1
    stopping = workspace.daemon_log.parent / "signals" / "stopping"
    stopping.parent.mkdir(mode=0o777)
    stopping.parent.chmod(0o777)  # the workload may run as a user of its own (a root daemon's default)
    workspace.write("slow.yaml", workload_yaml("slow", takes_its_stop_slowly(stopping),
                                               terminationGracePeriodSeconds=60))
    workspace.start_daemon()
    pid = wait_for(lambda: workspace.pid("slow.yaml", "slow"), 30, what="Running")
    (workspace.desired / "slow.yaml").unlink()  # deleted: the daemon stops it
    wait_for(stopping.exists, 30, what="the stop under way")
    workspace.stop_daemon(signal.SIGKILL)
    wait_for(lambda: not psutil.pid_exists(pid), 30, what="the workload ending its stop")
    assert workspace.evidence("slow.yaml")[-1]["event"] == "decision"

    workspace.start_daemon()
    ended, decision_line = closed_decision(workspace, "slow.yaml", "the cut-short stop's outcome")
    assert json.loads(decision_line)["action"] == "delete"
    assert (ended["action"], ended["result"]) == ("delete", "stopped") and "pid" not in ended, ended
    assert "stop's record was cut short by a crash" in ended["cause"], ended
    assert_chain_verifies(workspace)
    row.passed += 1


def test_a_pass_that_fails_after_its_decision_writes_the_failure_not_a_crash_later(
    workspace: Workspace, small_disk: Path, ledger: Ledger
) -> None:
    """A replacement refused for want of room in the state directory (drivers.check_room) is a failed action with an
    outcome line at once; the next start finds no decision left open, so it never calls it a crash."""
    row = ledger.row("the state directory full when a replacement begins",
                     "the failure follows its decision as its outcome; a restart closes nothing")
    row.runs += 1
    from reconciler.api.meta import ResourceKey
    from reconciler.control.reconciler import Reconciler

    key = ResourceKey("Workload", "kept")
    workspace.write("kept.yaml", workload_yaml("kept", SLEEPER, ("v1",)))
    reconciler = Reconciler(workspace.desired, small_disk)
    reconciler.refresh()
    reconciler.adopt()
    reconciler.reconcile(key)
    first = workspace.pid("kept.yaml", "kept")
    # its one line written before the disk fills: a print into a full log would end it (not what is tested)
    wait_for(lambda: any(b"up" in log.read_bytes() for log in (small_disk / "logs").rglob("kept*")),
             what="the workload's first line in its log")
    workspace.write("kept.yaml", workload_yaml("kept", SLEEPER, ("v2",)))  # a replacement: a stop, then a start
    reconciler.refresh()
    filler = fill(small_disk)
    with pytest.raises(OSError) as full:
        reconciler.reconcile(key)
    assert full.value.errno == errno.ENOSPC
    decision, outcome = workspace.evidence("kept.yaml")[-2:]
    assert (decision["event"], decision["action"]) == ("decision", "recreate"), decision
    assert (outcome["event"], outcome["action"], outcome["result"]) == ("action", "recreate", "failed"), outcome
    assert outcome["failure"]["reason"] == "StorageUnavailable" and outcome["failedOperation"]["op"] == "stop", outcome
    assert psutil.pid_exists(first), "what ran is not stopped for a replacement the state cannot record"

    filler.unlink()
    restarted = Reconciler(workspace.desired, small_disk)
    restarted.refresh()
    restarted.adopt()
    assert closing(workspace, "kept.yaml") is None, workspace.evidence("kept.yaml")[-1]
    row.passed += 1


def forge_decision(workspace: Workspace, spec_file: str, name: str, time: str) -> None:
    """What someone who can write the desired-state folder can append: a decision that chains, as if the reconciler
    had begun to start `name` and been killed before its outcome."""
    path = workspace.desired / spec_file.replace(".yaml", ".evidence.jsonl")
    lines = path.read_bytes().splitlines() if path.exists() else []
    prev = hashlib.sha256(lines[-1]).hexdigest() if lines else "0" * 64
    forged = {"time": time, "resource": f"Workload/{name}", "generation": 1, "event": "decision", "action": "create",
              "cause": "not running", "decision": "approve", "reasons": [],
              "operations": [{"op": "start", "cause": "not running"}], "prev": prev}
    with path.open("ab") as log:
        log.write(json.dumps(forged, sort_keys=True, separators=(",", ":")).encode() + b"\n")


def test_a_forged_decision_in_the_evidence_is_never_closed_in_the_reconcilers_name(workspace: Workspace,
                                                                                  ledger: Ledger) -> None:
    """Only a decision the state directory names as being carried out is closed: a forged one that chains is not
    called 'adopted' for a run the reconciler started otherwise, and gives no record to a workload never started."""
    row = ledger.row("a forged decision appended to the evidence before a restart",
                     "no outcome line in the reconciler's name; no record made from it")
    row.runs += 1
    from reconciler.api.meta import ResourceKey
    from reconciler.control.reconciler import Reconciler

    workspace.write("real.yaml", workload_yaml("real", SLEEPER))
    first = Reconciler(workspace.desired, workspace.state)
    first.refresh()
    first.adopt()
    first.reconcile(ResourceKey("Workload", "real"))
    assert workspace.pid("real.yaml", "real")
    forge_decision(workspace, "real.yaml", "real", "2000-01-01T00:00:00+00:00")  # before its run: 'it started it'
    workspace.write("ghost.yaml", workload_yaml("ghost", SLEEPER))
    forge_decision(workspace, "ghost.yaml", "ghost", "2000-01-01T00:00:00+00:00")

    restarted = Reconciler(workspace.desired, workspace.state)
    restarted.refresh()
    restarted.adopt()
    assert closing(workspace, "real.yaml") is None, workspace.evidence("real.yaml")[-1]
    assert closing(workspace, "ghost.yaml") is None, workspace.evidence("ghost.yaml")[-1]
    assert ResourceKey("Workload", "ghost") not in restarted.records, "a record made from a forged line"
    row.passed += 1


def test_a_spawn_a_crash_left_unrecorded_is_stopped_first_and_its_start_closed_naming_it(workspace: Workspace,
                                                                                       ledger: Ledger) -> None:
    """Killed between spawning a workload and recording it: the restart stops that spawn (adopt), and only then says
    what became of the start, naming the pid it stopped, not 'nothing it would have started runs'."""
    row = ledger.row("daemon SIGKILLed after a spawn, before its driver recorded it",
                     "adopt stops the spawn; the start's outcome names that pid, written after adopt")
    row.runs += 1
    from reconciler.control.reconciler import Reconciler

    workspace.write("spawned.yaml", workload_yaml("spawned", SLEEPER, ("spawn-marker",)))
    daemon = workspace.start_daemon(env={**os.environ, CRASH_VARIABLE: "spawned"})
    assert daemon.wait(timeout=60) == -signal.SIGKILL
    workspace.stop_daemon()
    spawned = next(process.pid for process in psutil.process_iter(["cmdline"])
                   if "spawn-marker" in (process.info["cmdline"] or []))

    restarted = Reconciler(workspace.desired, workspace.state)
    restarted.refresh()  # `apply`'s order: the snapshot first, then adopt
    assert closing(workspace, "spawned.yaml") is None, "judged before what the crash left was stopped"
    assert restarted.adopt() == {"spawned": spawned}
    ended = closing(workspace, "spawned.yaml")
    assert ended is not None and (ended["result"], ended["stoppedPid"]) == ("not started", spawned), ended
    assert f"pid {spawned} it spawned was never recorded, and is stopped" in ended["cause"], ended
    row.passed += 1
