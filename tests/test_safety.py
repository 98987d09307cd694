"""Regressions from review: what must never be pruned, killed, trusted or misreported."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import psutil

from tests.conftest import PYTHON, Workspace, wait_for, workload_yaml
from reconciler.drive.process import NAME_VARIABLE, OWNER_VARIABLE, owner_id


def plan_row(workspace: Workspace, resource: str) -> dict:
    return next(row for row in json.loads(workspace.cli("plan", "-o", "json").stdout) if row["resource"] == resource)


def test_plan_is_a_dry_run_that_leaves_status_files_alone(workspace: Workspace) -> None:
    workspace.write("web.yaml", workload_yaml("web"))
    workspace.cli("apply", "--wait")
    before = {path.name: path.read_text() for path in workspace.desired.glob("*.status.yaml")}
    assert "web.status.yaml" in before
    workspace.cli("plan")
    workspace.cli("status")
    assert {path.name: path.read_text() for path in workspace.desired.glob("*.status.yaml")} == before


def test_a_renamed_file_with_a_syntax_error_prunes_nothing(workspace: Workspace) -> None:
    workspace.write("a.yaml", workload_yaml("web"))
    workspace.cli("apply", "--wait")
    pid = workspace.pid("a.yaml", "web")
    (workspace.desired / "a.yaml").rename(workspace.desired / "b.yaml")
    (workspace.desired / "b.yaml").write_text(workload_yaml("web") + "  oops: [\n")
    row = plan_row(workspace, "Workload/web")
    assert row["action"] == "none" and "nothing is removed while a spec fails to load" in row["cause"]
    workspace.cli("apply")
    assert [p.pid for p in workspace.owned_processes("web")] == [pid]


def test_a_moved_spec_keeps_its_process_and_moves_its_status(workspace: Workspace) -> None:
    workspace.write("web.yaml", workload_yaml("web"))
    workspace.cli("apply", "--wait")
    pid = workspace.pid("web.yaml", "web")
    (workspace.desired / "web.yaml").rename(workspace.desired / "moved.yaml")
    workspace.cli("apply")
    assert workspace.pid("moved.yaml", "web") == pid, "moving a file is not a change of spec"
    assert not (workspace.desired / "web.status.yaml").exists()


def test_the_gate_judges_the_file_the_child_would_run(workspace: Workspace, tmp_path: Path) -> None:
    real_sleep = os.path.realpath(shutil.which("sleep") or "/bin/sleep")
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "sleep").write_text("#!/bin/sh\nexec /bin/true\n")
    (evil / "sleep").chmod(0o755)
    workspace.write("policy.yaml", workspace.desired.joinpath("policy.yaml").read_text() + f"      - executable: {real_sleep}\n")
    honest = {"apiVersion": "localaistack.dev/v1alpha1", "kind": "Workload", "metadata": {"name": "honest"},
              "spec": {"command": ["sleep", "3600"]}}
    sneaky = {**honest, "metadata": {"name": "sneaky"}, "spec": {"command": ["sleep", "3600"], "env": {"PATH": str(evil)}}}
    workspace.write("sleepers.yaml", json.dumps(honest) + "\n---\n" + json.dumps(sneaky))
    assert plan_row(workspace, "Workload/honest")["decision"] == "approve"
    denied = plan_row(workspace, "Workload/sneaky")
    assert denied["decision"] == "deny" and str(evil / "sleep") in denied["reasons"][0]


def test_an_invalid_policy_keeps_the_last_valid_one_in_force(workspace: Workspace) -> None:
    # A back-off longer than one `apply` takes on a loaded machine: with 0.05 s that apply could already restart it,
    # and plan then never shows the start it judges (seen failing under load)
    workspace.write("web.yaml", workload_yaml("web", restart={"backoff": {"initialSeconds": 2}}))
    workspace.cli("apply", "--wait")
    pid = workspace.pid("web.yaml", "web")
    workspace.write("policy.yaml", workspace.desired.joinpath("policy.yaml").read_text() + "typo: [\n")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    workspace.cli("apply")  # notices the exit and starts its back-off
    row = wait_for(lambda: (row := plan_row(workspace, "Workload/web"))["action"] == "create" and row, what="restart due")
    assert row["decision"] == "approve" and "trusted by Policy/test-host" in row["reasons"][0]


def test_a_process_record_without_its_resource_record_is_still_cleaned_up(workspace: Workspace) -> None:
    """A kill -9 between writing the process record and the resource record must not orphan the process."""
    workspace.write("web.yaml", workload_yaml("web"))
    workspace.cli("apply", "--wait")
    pid = workspace.pid("web.yaml", "web")
    (workspace.state / "resources" / "Workload.web.json").unlink()
    (workspace.desired / "web.yaml").unlink()
    assert workspace.cli("down").returncode == 0
    wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, what="pid gone")
    assert not (workspace.state / "processes" / "web.json").exists()


def test_what_a_crashed_run_left_in_its_group_is_stopped_before_the_restart(workspace: Workspace) -> None:
    leaves_a_child = (
        "import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(3600)'])\n"
        "time.sleep(0.3)\n"
        "sys.exit(1)\n"
    )
    backoff = {"policy": "Always", "backoff": {"initialSeconds": 0.1, "maxSeconds": 1}}
    workspace.write("leaky.yaml", workload_yaml("leaky", code=leaves_a_child, restart=backoff))
    workspace.start_daemon()
    wait_for(lambda: (workspace.resource_status("leaky.yaml", "leaky") or {}).get("restartCount", 0) >= 3, timeout=20,
             what="three restarts")

    def leftovers() -> list[psutil.Process]:
        found = []
        for process in psutil.process_iter():
            try:
                env = process.environ()
            except psutil.Error:
                continue
            if env.get(OWNER_VARIABLE) == owner_id(workspace.state) and env.get(NAME_VARIABLE) == "leaky":
                found.append(process)
        return found

    assert len(leftovers()) <= 2, "at most the current run and its child: earlier runs' children must be gone"


def test_on_failure_does_not_restart_on_an_unknown_exit_code(workspace: Workspace) -> None:
    job = "import time; time.sleep(0.3)"
    workspace.write("job.yaml", workload_yaml("job", code=job, restart={"policy": "OnFailure"}))
    workspace.cli("apply")  # no --wait: the CLI exits, so no reconciler is the job's parent when it ends
    pid = workspace.pid("job.yaml", "job")
    wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, what="job end")
    workspace.cli("apply")
    status = workspace.resource_status("job.yaml", "job")
    assert status["phase"] == "Exited" and status["restartCount"] == 0
    assert "exit code unknown" in status["message"] and "does not restart it" in status["message"]


def test_apply_wait_succeeds_on_a_completed_job_and_fails_fast_on_a_start_failure(workspace: Workspace) -> None:
    workspace.write("job.yaml", workload_yaml("job", code="import time; time.sleep(0.2)", restart={"policy": "OnFailure"}))
    done = workspace.cli("apply", "--wait")
    assert done.returncode == 0, done.stderr
    assert workspace.resource_status("job.yaml", "job")["phase"] == "Succeeded"

    workspace.write("ghost.yaml", workload_yaml("ghost").replace(PYTHON, "ghost-binary-that-is-nowhere"))
    workspace.write("policy.yaml", workspace.desired.joinpath("policy.yaml").read_text() + "      - executable: ghost-binary-that-is-nowhere\n")
    for _ in range(2):  # the second run finds the start failure in its back-off and still fails at once
        result = workspace.cli("apply", "--wait", "--timeout", "30")
        assert result.returncode == 1 and "timed out" not in result.stderr, result.stderr
        assert "ExecutableNotFound" in str(workspace.condition("ghost.yaml", "ghost"))


def test_status_shows_what_runs_now_not_what_ran_at_the_last_pass(workspace: Workspace) -> None:
    workspace.write("web.yaml", workload_yaml("web", restart={"policy": "Never"}))
    workspace.cli("apply", "--wait")
    pid = workspace.pid("web.yaml", "web")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    rows = {row["name"]: row for row in json.loads(workspace.cli("status", "-o", "json").stdout)}
    status = rows["web"]["status"]
    assert status["phase"] == "Exited" and "pid" not in status, "killed while no reconciler was its parent: code unknown"
    assert "nextRetryTime" not in status, "restart policy Never: no retry is coming"


def test_a_file_held_open_by_its_writer_is_not_read_even_after_seconds(workspace: Workspace) -> None:
    workspace.start_daemon()
    workspace.write("ab.yaml", workload_yaml("a") + "---\n" + workload_yaml("b"))
    a = wait_for(lambda: workspace.pid("ab.yaml", "a"), what="a")
    b = wait_for(lambda: workspace.pid("ab.yaml", "b"), what="b")
    with (workspace.desired / "ab.yaml").open("w") as handle:
        handle.write(workload_yaml("a"))
        handle.flush()
        time.sleep(2.5)
        assert [p.pid for p in workspace.owned_processes("b")] == [b], "b must not be pruned from a half-written file"
        handle.write("---\n" + workload_yaml("b", args=("new",)))
    wait_for(lambda: workspace.pid("ab.yaml", "b") not in (None, b), what="b recreated from the whole file")
    assert workspace.pid("ab.yaml", "a") == a


def test_a_relative_state_dir_is_the_same_state_dir(workspace: Workspace) -> None:
    import subprocess

    workspace.write("web.yaml", workload_yaml("web"))
    workspace.cli("apply", "--wait")
    pid = workspace.pid("web.yaml", "web")
    relative = subprocess.run([PYTHON, "-m", "reconciler", "plan", str(workspace.desired), "--state-dir", workspace.state.name],
                              capture_output=True, text=True, cwd=workspace.state.parent)
    assert relative.returncode == 0, relative.stdout + relative.stderr
    assert workspace.pid("web.yaml", "web") == pid
