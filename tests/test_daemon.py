"""The real daemon (`reconciler run`) against real processes: events, exits, crashes and restarts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import psutil
import yaml

from tests.conftest import POLICY_YAML, PYTHON, Workspace, wait_for, workload_yaml

CRASH = "import sys; print('crashing', flush=True); sys.exit(3)"


def running_pid(workspace: Workspace, spec: str, name: str, other_than: int | None = None) -> int | None:
    status = workspace.resource_status(spec, name) or {}
    pid = status.get("pid")
    return pid if pid and pid != other_than and status.get("phase") == "Running" else None


def test_daemon_follows_edits_and_leaves_workloads_running_on_sigterm(workspace: Workspace) -> None:
    workspace.start_daemon()
    workspace.write("web.yaml", workload_yaml("web", args=("v1",)))
    first = wait_for(lambda: running_pid(workspace, "web.yaml", "web"), what="web to start")

    workspace.write("web.yaml", workload_yaml("web", args=("v2",)))
    second = wait_for(lambda: running_pid(workspace, "web.yaml", "web", other_than=first), what="web to be recreated")
    assert psutil.Process(second).cmdline()[-1] == "v2"
    wait_for(lambda: not psutil.pid_exists(first) or psutil.Process(first).status() == psutil.STATUS_ZOMBIE)

    assert workspace.stop_daemon(signal.SIGTERM) == 0
    assert psutil.Process(second).is_running(), "SIGTERM of the daemon must leave workloads running"

    workspace.start_daemon()
    (workspace.desired / "web.yaml").unlink()
    wait_for(lambda: not workspace.owned_processes("web"), what="web to be pruned")
    wait_for(lambda: workspace.actions("web.yaml") == ["create", "recreate", "delete"], what="the delete on record")


def test_kill_9_of_the_daemon_then_restart_adopts_the_same_process(workspace: Workspace) -> None:
    workspace.write("web.yaml", workload_yaml("web"))
    workspace.start_daemon()
    pid = wait_for(lambda: running_pid(workspace, "web.yaml", "web"), what="web to start")
    workspace.stop_daemon(signal.SIGKILL)

    workspace.start_daemon()
    time.sleep(0.5)  # give a wrong implementation the chance to start a duplicate
    wait_for(lambda: workspace.resource_status("web.yaml", "web"), what="status after restart")
    assert [p.pid for p in workspace.owned_processes("web")] == [pid]
    assert workspace.cli("plan").returncode != 1
    assert workspace.actions("web.yaml") == ["create"], "adoption is not a new action"

    os.kill(pid, signal.SIGKILL)  # the adopted process is watched too: its death is noticed at once
    replacement = wait_for(lambda: running_pid(workspace, "web.yaml", "web", other_than=pid), what="adopted process replaced")
    assert [p.pid for p in workspace.owned_processes("web")] == [replacement]


def test_exit_is_noticed_and_restarted_with_its_cause(workspace: Workspace) -> None:
    workspace.write("web.yaml", workload_yaml("web"))
    workspace.start_daemon()
    pid = wait_for(lambda: running_pid(workspace, "web.yaml", "web"), what="web to start")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: running_pid(workspace, "web.yaml", "web", other_than=pid), what="restart", timeout=15)
    status = workspace.resource_status("web.yaml", "web")
    assert status["restartCount"] == 1
    assert status["lastExit"]["signal"] == signal.SIGKILL
    decision = [r for r in workspace.evidence("web.yaml") if r["event"] == "decision"][-1]
    assert (decision["action"], decision["cause"]) == ("create", "process was killed by signal 9")


STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3600)"


def test_an_exit_is_restarted_while_another_workloads_stop_waits_out_its_grace_period(workspace: Workspace) -> None:
    """The daemon's second worker takes a key only behind a reconcile that has run a while (one worker serves a pass
    of quick ones): a stop blocked in its grace period must not hold up the restart of a workload that died."""
    def stubborn_yaml(version: str) -> str:
        return workload_yaml("stubborn", code=STUBBORN, args=(version,), terminationGracePeriodSeconds=60)

    workspace.write("stubborn.yaml", stubborn_yaml("v1"))
    workspace.write("web.yaml", workload_yaml("web"))
    workspace.start_daemon()
    stubborn = wait_for(lambda: running_pid(workspace, "stubborn.yaml", "stubborn"), what="stubborn to start")
    web = wait_for(lambda: running_pid(workspace, "web.yaml", "web"), what="web to start")
    try:
        workspace.write("stubborn.yaml", stubborn_yaml("v2"))
        wait_for(lambda: len([r for r in workspace.evidence("stubborn.yaml") if r["event"] == "decision"]) >= 2,
                 what="the replacement decided: its stop waits up to 60 s for a process that ignores SIGTERM")
        os.kill(web, signal.SIGKILL)
        wait_for(lambda: running_pid(workspace, "web.yaml", "web", other_than=web), what="web restarted", timeout=15)
        assert psutil.Process(stubborn).is_running(), "the restart came while the stop was still waiting"
    finally:
        os.kill(stubborn, signal.SIGKILL)  # the stop ends: `down` at clean-up need not wait out the grace period


def test_crash_loop_backs_off_and_shows_it(workspace: Workspace) -> None:
    backoff = {"policy": "Always", "backoff": {"initialSeconds": 0.2, "maxSeconds": 30}}
    workspace.write("crash.yaml", workload_yaml("crash", code=CRASH, restart=backoff))
    workspace.start_daemon()
    status = wait_for(
        lambda: (s := workspace.resource_status("crash.yaml", "crash")) and s.get("restartCount", 0) >= 3 and s["phase"] == "BackOff" and s,
        timeout=20, what="three restarts and a back-off",
    )
    assert status["lastExit"]["code"] == 3
    assert status["nextRetryTime"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "BackOff" and "process exited with code 3" in ready["message"]
    starts = [r["time"] for r in workspace.evidence("crash.yaml") if r["event"] == "action"]
    gaps = [b - a for a, b in zip(_seconds(starts), _seconds(starts)[1:])]
    assert gaps == sorted(gaps) and gaps[-1] >= 0.2 * 2 ** (len(gaps) - 1) * 0.9, f"back-off must grow: {gaps}"
    log = (workspace.state / "logs" / "crash.previous.log").read_text()
    assert "crashing" in log, "the crashed run's output is kept"


def test_bad_yaml_keeps_the_daemon_and_good_workloads_up(workspace: Workspace) -> None:
    workspace.start_daemon()
    workspace.write("good.yaml", workload_yaml("good"))
    pid = wait_for(lambda: running_pid(workspace, "good.yaml", "good"), what="good to start")
    workspace.write("bad.yaml", "apiVersion: localaistack.dev/v1alpha1\nkind: Workload\nmetadata: {name: bad}\nspec: {command: [[x]]}\n")
    errors = wait_for(lambda: (workspace.status("bad.yaml") or {}).get("errors"), what="bad.yaml status")
    assert errors[0].endswith("bad.yaml:4:18 spec.command[0]: expected a valid string, got a list")
    garbage = {
        b"\xff\xfe binary": "not UTF-8 text: byte 0xff at offset 0",
        b"a: &a [*a]\n": "recursive alias",
        b"- just\n- a list\n": "expected a mapping with apiVersion, kind, metadata and spec, got a list",
    }
    for content, message in garbage.items():
        (workspace.desired / "bad.yaml").write_bytes(content)
        wait_for(lambda: message in str((workspace.status("bad.yaml") or {}).get("errors")), what=message)
    assert [p.pid for p in workspace.owned_processes("good")] == [pid]
    workspace.write("bad.yaml", workload_yaml("bad"))
    wait_for(lambda: running_pid(workspace, "bad.yaml", "bad"), what="the fixed spec to start")
    assert workspace.status("bad.yaml")["errors"] == []


def test_a_half_written_file_is_never_applied(workspace: Workspace) -> None:
    workspace.start_daemon()
    workspace.write("web.yaml", workload_yaml("web", args=("zero",)))
    first = wait_for(lambda: running_pid(workspace, "web.yaml", "web"), what="web to start")
    full = workload_yaml("web", args=("one", "two"))
    cut = full.index("- two")
    with (workspace.desired / "web.yaml").open("w") as handle:  # an in-place writer, mid-save
        handle.write(full[:cut])
        handle.flush()
        time.sleep(0.6)
        assert running_pid(workspace, "web.yaml", "web") == first, "the truncated file (args: [one]) must not be applied"
        handle.write(full[cut:])
    second = wait_for(lambda: running_pid(workspace, "web.yaml", "web", other_than=first), what="the full file")
    assert psutil.Process(second).cmdline()[-2:] == ["one", "two"]


def test_status_and_evidence_writes_trigger_no_pass(workspace: Workspace) -> None:
    workspace.start_daemon("--resync", "3600")
    workspace.write("web.yaml", workload_yaml("web"))
    wait_for(lambda: running_pid(workspace, "web.yaml", "web"), what="web to start")
    time.sleep(0.3)
    passes = workspace.daemon_log.read_text().count("pass: spec change")
    time.sleep(1.0)
    assert workspace.daemon_log.read_text().count("pass: spec change") == passes
    assert passes <= 2


def _seconds(stamps: list[str]) -> list[float]:
    from datetime import datetime

    return [datetime.fromisoformat(stamp).timestamp() for stamp in stamps]


def test_a_workload_that_died_while_the_daemon_was_down_leaves_no_false_evidence(workspace: Workspace) -> None:
    workspace.write("web.yaml", workload_yaml("web"))
    workspace.start_daemon("--resync", "3600")
    pid = wait_for(lambda: running_pid(workspace, "web.yaml", "web"), what="web to start")
    workspace.stop_daemon(signal.SIGTERM)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    before = len(workspace.evidence("web.yaml"))

    workspace.start_daemon("--resync", "3600")  # adopting notices the exit at once, before the first pass loads
    wait_for(lambda: running_pid(workspace, "web.yaml", "web", other_than=pid), what="web restarted")
    written = [line for line in workspace.evidence("web.yaml")[before:] if line["event"] != "rollout"]  # died soaking
    assert [(line["event"], line.get("action")) for line in written] == [("decision", "create"), ("action", "create")], \
        "nothing may be written from a view the desired state is not loaded into yet (a hold, a placement flip)"


def test_a_status_file_edited_by_hand_is_made_true_again_by_the_next_pass(workspace: Workspace) -> None:
    policy = yaml.safe_load(POLICY_YAML)
    policy["spec"]["approvals"] = {"required": ["NativeExecutable"]}
    workspace.write("policy.yaml", yaml.safe_dump(policy))
    workspace.write("web.yaml", workload_yaml("web"))
    workspace.start_daemon("--resync", "1")
    wait_for(lambda: (workspace.resource_status("web.yaml", "web") or {}).get("phase") == "PendingApproval",
             what="the pending approval")
    status_file = workspace.desired / "web.status.yaml"
    forged = yaml.safe_load(status_file.read_text())
    forged["resources"][0] |= {"phase": "Running", "pid": 1}
    for condition in forged["resources"][0]["conditions"]:
        condition |= {"status": "True", "reason": "Approved"}
    status_file.write_text(yaml.safe_dump(forged))

    wait_for(lambda: (workspace.resource_status("web.yaml", "web") or {}).get("phase") == "PendingApproval",
             timeout=5, what="the forged status file rewritten by a resync")
    assert "pid" not in workspace.resource_status("web.yaml", "web")
    assert workspace.condition("web.yaml", "web", "PolicyApproved")["status"] == "False"
    assert not workspace.owned_processes("web"), "a status file is never read back: nothing started"


def test_status_and_describe_say_first_whether_a_daemon_keeps_them_true(workspace: Workspace) -> None:
    workspace.write("web.yaml", workload_yaml("web"))
    assert workspace.cli("apply", "--wait").returncode == 0
    assert workspace.cli("status").stdout.startswith("No daemon watches this folder: what follows is as last recorded")
    assert workspace.cli("describe", "web").stdout.startswith("No daemon watches this folder")
    elsewhere = workspace.state.parent / "another-state"
    read_elsewhere = [PYTHON, "-m", "reconciler", "status", str(workspace.desired), "--state-dir", str(elsewhere)]
    alone = subprocess.run(read_elsewhere, capture_output=True, text=True).stdout
    assert f"Warning: state directory {elsewhere} holds no records of this folder" in alone, alone

    daemon = workspace.start_daemon("--resync", "3600")
    wait_for(lambda: workspace.cli("status").stdout.startswith(f"Daemon: pid {daemon.pid} keeps this up to date, since "),
             what="status to name the daemon")
    assert workspace.cli("describe", "web").stdout.startswith(f"Daemon: pid {daemon.pid}")
    listed = workspace.cli("status", "-o", "json")
    assert listed.stderr.startswith(f"Daemon: pid {daemon.pid}") and json.loads(listed.stdout), "json stays json"
    misread = subprocess.run(read_elsewhere, capture_output=True, text=True).stdout
    assert misread.startswith(f"Warning: this reads state directory {elsewhere}, but the daemon watching this folder "
                              f"(pid {daemon.pid}) keeps its records in {workspace.state}"), misread


def test_a_hold_seen_by_every_resync_during_a_back_off_is_evidence_once(workspace: Workspace) -> None:
    crashing = workload_yaml("web", CRASH, restart={"backoff": {"initialSeconds": 8, "maxSeconds": 8}})
    workspace.write("web.yaml", crashing)
    workspace.start_daemon("--resync", "1")
    wait_for(lambda: (workspace.resource_status("web.yaml", "web") or {}).get("phase") == "BackOff", what="the back-off")
    workspace.write("web.yaml", crashing.replace("restart:", "restartt:"))  # rejected: the version on record is held
    time.sleep(5)  # five resyncs, all within the 8 s back-off
    holds = [line["cause"] for line in workspace.evidence("web.yaml") if line.get("action") == "hold"]
    assert len(holds) == 1, holds
    assert "next start at " in workspace.resource_status("web.yaml", "web")["message"]
