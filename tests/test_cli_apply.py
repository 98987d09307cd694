"""The real CLI against a temp folder and real processes: validate, plan, apply, status, down."""

from __future__ import annotations

import json
import os
import signal

import psutil
import pytest
import yaml

from tests.conftest import POLICY_YAML, PYTHON, SLEEPER, Workspace, wait_for, workload_yaml


def test_validate_names_file_line_field_and_expectation(workspace: Workspace) -> None:
    workspace.write("chat.yaml", workload_yaml("chat") + "")
    bad = workload_yaml("chat").replace("spec:\n", "spec:\n  resources:\n    memory: lots\n")
    workspace.write("chat.yaml", bad)
    result = workspace.cli("validate")
    assert result.returncode == 1
    line = next(n for n, text in enumerate(bad.splitlines(), 1) if "memory" in text)
    assert f"{workspace.desired}/chat.yaml:{line}:5 spec.resources.memory: expected a quantity like 8Gi\n" in result.stdout


def test_validate_passes_on_the_shipped_examples() -> None:
    from pathlib import Path
    import subprocess

    root = Path(__file__).resolve().parent.parent
    for folder in (root / "desired-state", root / "examples" / "ai-engines", root / "examples" / "containers",
                   root / "examples" / "gateway"):
        result = subprocess.run([PYTHON, "-m", "reconciler", "validate", str(folder)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "are valid" in result.stdout


def test_plan_exit_codes_follow_terraform_detailed_exitcode(workspace: Workspace) -> None:
    workspace.write("web.yaml", workload_yaml("web"))
    pending = workspace.cli("plan", "-o", "json")
    assert pending.returncode == 2, pending.stderr
    rows = {row["resource"]: row for row in json.loads(pending.stdout)}
    assert rows["Workload/web"]["action"] == "create"
    assert rows["Workload/web"]["cause"] == "not running"
    assert rows["Workload/web"]["decision"] == "approve"
    assert rows["Workload/web"]["command"] == [PYTHON, "-c", SLEEPER]
    assert not workspace.owned_processes(), "plan must not start anything"

    assert workspace.cli("apply").returncode == 0
    in_sync = workspace.cli("plan")
    assert in_sync.returncode == 0, in_sync.stdout + in_sync.stderr

    workspace.write("broken.yaml", "kind: [unclosed\n")
    broken = workspace.cli("plan")
    assert broken.returncode == 1
    assert f"{workspace.desired}/broken.yaml:2:1: invalid YAML" in broken.stderr


def test_create_edit_delete_lifecycle(workspace: Workspace) -> None:
    workspace.write("web.yaml", workload_yaml("web", args=("v1",)))
    assert workspace.cli("apply", "--wait").returncode == 0
    first = workspace.pid("web.yaml", "web")
    assert first and psutil.pid_exists(first)
    assert [p.pid for p in workspace.owned_processes("web")] == [first]

    workspace.write("web.yaml", workload_yaml("web", args=("v2",)))
    plan = json.loads(workspace.cli("plan", "-o", "json").stdout)
    web = next(row for row in plan if row["resource"] == "Workload/web")
    assert (web["action"], web["cause"]) == ("recreate", "spec.args changed")
    recreate = [{"op": "stop", "cause": "replaced by the new start"}, {"op": "start", "cause": "spec.args changed"}]
    assert web["operations"] == recreate
    as_yaml = yaml.safe_load(workspace.cli("plan", "-o", "yaml").stdout)
    assert next(row for row in as_yaml if row["resource"] == "Workload/web")["operations"] == recreate
    assert "[operations: stop (replaced by the new start); start]" in workspace.cli("plan").stdout
    assert workspace.cli("apply", "--wait").returncode == 0
    outcome = [line for line in workspace.evidence("web.yaml") if line["event"] == "action"][-1]
    assert (outcome["action"], outcome["result"], outcome["operations"]) == ("recreate", "done", recreate)
    second = workspace.pid("web.yaml", "web")
    assert second != first
    assert not psutil.pid_exists(first) or psutil.Process(first).status() == psutil.STATUS_ZOMBIE
    assert workspace.resource_status("web.yaml", "web")["observedGeneration"] == 2

    (workspace.desired / "web.yaml").unlink()
    assert workspace.cli("apply").returncode == 0
    wait_for(lambda: not psutil.pid_exists(second), what="pruned process to end")
    assert not workspace.owned_processes()
    assert not (workspace.desired / "web.status.yaml").exists()
    assert workspace.actions("web.yaml") == ["create", "recreate", "delete"]
    decisions = [r for r in workspace.evidence("web.yaml") if r["event"] == "decision"]
    assert [d["action"] for d in decisions] == ["create", "recreate", "delete"]
    assert decisions[0]["executable"] == PYTHON or decisions[0]["executable"].endswith("python3")


def test_no_evidence_for_no_op_passes_and_chain_links(workspace: Workspace) -> None:
    from reconciler.record.evidence import verify_chain

    workspace.write("web.yaml", workload_yaml("web"))
    workspace.cli("apply")
    before = workspace.evidence("web.yaml")
    workspace.cli("apply")
    workspace.cli("apply")
    assert workspace.evidence("web.yaml") == before
    assert verify_chain(workspace.desired / "web.evidence.jsonl").ok


def test_without_a_policy_nothing_native_runs(workspace: Workspace) -> None:
    (workspace.desired / "policy.yaml").unlink()
    workspace.write("web.yaml", workload_yaml("web"))
    result = workspace.cli("apply", "--wait")
    assert result.returncode == 1
    assert not workspace.owned_processes()
    ready = workspace.condition("web.yaml", "web")
    assert ready["reason"] == "PolicyDenied"
    assert "not trusted by default policy" in ready["message"]
    approved = workspace.condition("web.yaml", "web", "PolicyApproved")
    assert (approved["status"], approved["reason"]) == ("False", "Denied")
    assert workspace.resource_status("web.yaml", "web")["placement"] == "unavailable"
    workspace.cli("apply")
    events = [r["event"] for r in workspace.evidence("web.yaml")]
    assert events == ["decision", "decision-record"], "a repeated refusal (and its unchanged decision record) is recorded once"


def test_missing_executable_is_an_explicit_condition(workspace: Workspace) -> None:
    text = workload_yaml("ghost").replace(PYTHON, "/nonexistent/bin/ghost")
    workspace.write("ghost.yaml", text)
    workspace.write("policy.yaml", workspace.desired.joinpath("policy.yaml").read_text() + "      - executable: /nonexistent/bin/ghost\n")
    result = workspace.cli("apply", "--wait")
    assert result.returncode == 1
    ready = workspace.condition("ghost.yaml", "ghost")
    assert ready["reason"] == "ExecutableNotFound"
    assert "/nonexistent/bin/ghost" in ready["message"]
    assert workspace.resource_status("ghost.yaml", "ghost")["nextRetryTime"]


def test_bad_file_beside_a_good_one(workspace: Workspace) -> None:
    workspace.write("good.yaml", workload_yaml("good"))
    workspace.write("bad.yaml", "apiVersion: localaistack.dev/v1alpha1\nkind: Workload\nmetadata: {name: bad}\nspec:\n  comand: [x]\n")
    result = workspace.cli("apply", "--wait")
    assert result.returncode == 1, "load errors make apply fail"
    assert workspace.pid("good.yaml", "good")
    report = workspace.status("bad.yaml")
    assert report["errors"] == [
        f"{workspace.desired}/bad.yaml:5:3 spec.comand: unknown field 'comand' (did you mean 'command'?)",
    ]


def test_invalid_edit_keeps_the_last_valid_version_running(workspace: Workspace) -> None:
    workspace.write("web.yaml", workload_yaml("web"))
    workspace.cli("apply", "--wait")
    pid = workspace.pid("web.yaml", "web")
    workspace.write("web.yaml", workload_yaml("web").replace("args: []", "args: []\n  restart: {policy: Sometimes}"))
    workspace.cli("apply")
    assert psutil.pid_exists(pid) and [p.pid for p in workspace.owned_processes("web")] == [pid]
    accepted = workspace.condition("web.yaml", "web", "Accepted")
    assert accepted["status"] == "False" and accepted["reason"] == "Rejected"
    assert "spec.restart.policy" in accepted["message"] and "generation 1 stays in force" in accepted["message"]
    workspace.cli("apply")
    held = [r for r in workspace.evidence("web.yaml") if r.get("action") == "hold"]
    assert len(held) == 1 and "new version rejected: " in held[0]["cause"], "the rejection is recorded once"

    os.kill(pid, signal.SIGKILL)  # the last valid version stays in force: it is restarted, unchanged
    wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    workspace.cli("apply")
    restarted = wait_for(lambda: workspace.cli("apply") and workspace.pid("web.yaml", "web") not in (None, pid),
                         timeout=15, what="the held version restarted")
    assert restarted
    assert workspace.resource_status("web.yaml", "web")["generation"] == 1
    pid = workspace.pid("web.yaml", "web")

    workspace.write("web.yaml", "garbage: [")
    workspace.cli("apply")
    assert [p.pid for p in workspace.owned_processes("web")] == [pid], "an unreadable file prunes nothing"


def test_mass_deletion_guard_and_prune_annotation(workspace: Workspace) -> None:
    workspace.write("web.yaml", workload_yaml("web"))
    keep = workload_yaml("keep").replace("metadata:\n  name: keep\n", "metadata:\n  name: keep\n  annotations:\n    localaistack.dev/prune: disabled\n")
    workspace.write("keep.yaml", keep)
    workspace.cli("apply", "--wait")
    web, kept = workspace.pid("web.yaml", "web"), workspace.pid("keep.yaml", "keep")

    for spec in workspace.desired.glob("*.yaml"):
        if not spec.name.endswith(".status.yaml"):
            spec.unlink()
    plan = workspace.cli("plan")
    assert "nothing is pruned without --allow-empty" in plan.stdout
    workspace.cli("apply")
    assert psutil.pid_exists(web) and psutil.pid_exists(kept)

    workspace.cli("apply", "--allow-empty")
    wait_for(lambda: not psutil.pid_exists(web), what="web to be pruned")
    assert psutil.pid_exists(kept), "prune: disabled is left running"
    status = workspace.cli("status", "-o", "json")
    rows = {row["name"]: row for row in json.loads(status.stdout)}
    assert rows["keep"]["status"]["phase"] == "Orphaned"
    assert "localaistack.dev/prune: disabled keeps it" in rows["keep"]["status"]["message"]


def test_down_stops_everything_including_stubborn_groups(workspace: Workspace) -> None:
    stubborn = (
        "import os, signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(3600)'])\n"
        "print('ready', flush=True)\n"
        "while True: time.sleep(1)\n"
    )
    workspace.write("stubborn.yaml", workload_yaml("stubborn", code=stubborn, terminationGracePeriodSeconds=0.5))
    workspace.cli("apply", "--wait")
    leader = psutil.Process(workspace.pid("stubborn.yaml", "stubborn"))
    wait_for(lambda: leader.children(), what="the workload's child")
    members = [leader, *leader.children(recursive=True)]
    result = workspace.cli("down")
    assert result.returncode == 0, result.stderr
    gone, alive = psutil.wait_procs(members, timeout=5)
    assert not alive, f"left running: {alive}"


def test_status_table_lists_every_resource(workspace: Workspace) -> None:
    workspace.write("web.yaml", workload_yaml("web"))
    workspace.cli("apply", "--wait")
    notes, *table = workspace.cli("status").stdout.splitlines()
    assert notes.startswith("No daemon watches this folder")
    assert table[0].split() == ["NAME", "KIND", "RUNTIME", "READY", "PLACEMENT", "ENDPOINT", "RESTARTS", "AGE", "MESSAGE"]
    web = next(line for line in table if line.startswith("web "))
    assert web.split()[1:5] == ["Workload", "native", "True", "local"]


def test_a_spawn_cut_short_by_a_crash_is_stopped_but_a_workloads_own_children_are_not(workspace: Workspace) -> None:
    """An intent without a record: the reconciler died between spawn and record. Only that spawn is stopped."""
    import subprocess

    from reconciler.drive.process import NAME_VARIABLE, NONCE_VARIABLE, OWNER_VARIABLE, owner_id

    daemonizing = (
        "import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(3600)'], start_new_session=True)\n"
        "while True: time.sleep(1)\n"
    )
    workspace.write("parent.yaml", workload_yaml("parent", code=daemonizing))
    assert workspace.cli("apply", "--wait").returncode == 0
    parent = psutil.Process(workspace.pid("parent.yaml", "parent"))
    detached = wait_for(lambda: [p for p in psutil.process_iter() if p.ppid() == parent.pid], what="the detached child")[0]

    env = dict(os.environ, **{OWNER_VARIABLE: owner_id(workspace.state), NAME_VARIABLE: "web", NONCE_VARIABLE: "cafe0001"})
    stray = subprocess.Popen([PYTHON, "-c", SLEEPER], env=env, start_new_session=True)
    (workspace.state / "processes" / "web.intent").write_text("cafe0001")
    workspace.write("web.yaml", workload_yaml("web"))
    assert workspace.cli("apply", "--wait").returncode == 0
    assert stray.wait(timeout=10) == -signal.SIGTERM
    assert [p.pid for p in workspace.owned_processes("web")] == [workspace.pid("web.yaml", "web")]
    assert detached.is_running(), "a workload's own detached child carries a recorded nonce: it is not a stray"
    assert not (workspace.state / "processes" / "web.intent").exists()
    assert workspace.cli("down").returncode == 0
    psutil.wait_procs([detached], timeout=5)
    assert not detached.is_running(), "stopping a workload also ends what it detached with setsid"


def test_one_mutating_reconciler_per_folder_even_with_another_state_dir(workspace: Workspace) -> None:
    workspace.write("web.yaml", workload_yaml("web"))
    workspace.start_daemon()
    wait_for(lambda: workspace.pid("web.yaml", "web"), what="web to start")
    import subprocess

    other = subprocess.run(
        [PYTHON, "-m", "reconciler", "apply", str(workspace.desired), "--state-dir", str(workspace.state.parent / "other")],
        capture_output=True, text=True, timeout=30,
    )
    assert other.returncode == 1 and ".reconciler.lock is held by pid" in other.stderr
    assert len(workspace.owned_processes()) == 1
    assert not (workspace.state.parent / "other" / "processes").exists()


def test_describe_and_logs_tell_a_crash_story(workspace: Workspace) -> None:
    crash = "import sys\nprint('loading weights', flush=True)\nprint('fatal: out of cheese', file=sys.stderr, flush=True)\nsys.exit(7)\n"
    workspace.write("job.yaml", workload_yaml("job", code=crash, restart={"policy": "Never"}))
    assert workspace.cli("apply", "--wait").returncode == 1
    logs = workspace.cli("logs", "job")
    assert logs.returncode == 0 and logs.stdout.splitlines() == ["loading weights", "fatal: out of cheese"]
    described = workspace.cli("describe", "Workload/job").stdout
    assert "Phase:       Failed" in described and "process exited with code 7" in described
    assert "Spec:        runtime native, engine process, restart Never" in described
    assert "Last log lines:" in described and "  fatal: out of cheese" in described
    assert "decision create" in described and "action   create   done" in described
    missing = workspace.cli("logs", "job", "--previous")
    assert missing.returncode == 1 and "no log of a previous run" in missing.stderr


def test_apply_wait_waits_out_a_back_off_shorter_than_its_timeout(workspace: Workspace) -> None:
    workspace.write("web.yaml", workload_yaml("web", restart={"backoff": {"initialSeconds": 2}}))
    assert workspace.cli("apply", "--wait").returncode == 0
    pid = workspace.pid("web.yaml", "web")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not psutil.pid_exists(pid))

    waited = workspace.cli("apply", "--wait", "--timeout", "30")
    assert waited.returncode == 0, waited.stderr
    restarted = workspace.pid("web.yaml", "web")
    assert restarted and restarted != pid and psutil.pid_exists(restarted)

    os.kill(restarted, signal.SIGKILL)
    wait_for(lambda: not psutil.pid_exists(restarted))
    short = workspace.cli("apply", "--wait", "--timeout", "1")  # the back-off (4 s now) outlasts the wait
    assert short.returncode == 1 and "BackOff" in short.stderr, short.stderr


def test_apply_wait_reports_a_start_that_fails_again_after_its_back_off(workspace: Workspace) -> None:
    crash = "import sys; sys.exit(3)"
    workspace.write("web.yaml", workload_yaml("web", crash, restart={"backoff": {"initialSeconds": 0.5}}))
    crashed = workspace.cli("apply", "--wait", "--timeout", "60")
    assert crashed.returncode == 1 and "Workload/web: BackOff" in crashed.stderr, crashed.stderr
    assert workspace.actions("web.yaml").count("create") == 2, "one restart waited for, not a minute of them"


def test_apply_wait_says_a_pending_approval_once_not_on_every_poll(workspace: Workspace) -> None:
    workspace.write("policy.yaml", POLICY_YAML.replace("spec:\n", "spec:\n  approvals: {required: [NativeExecutable]}\n"))
    workspace.write("web.yaml", workload_yaml("web"))
    waited = workspace.cli("apply", "--wait", "--timeout", "2")
    assert waited.returncode == 1 and "timed out" in waited.stderr
    assert waited.stderr.count("needs-approval, not done") == 1, waited.stderr


def test_a_status_file_reads_at_a_glance_and_the_decision_record_has_its_own_file(workspace: Workspace) -> None:
    workspace.write("web.yaml", workload_yaml("web"))
    assert workspace.cli("apply", "--wait").returncode == 0
    status_text = (workspace.desired / "web.status.yaml").read_text()
    assert "decisionRecord" not in status_text and len(status_text.splitlines()) < 60, status_text
    decided = workspace.decision_record("web.yaml", "web")
    assert decided and decided["placement"]["placement"] == "local"
    assert "Decision record (constraint -> trade-off):" in workspace.cli("describe", "web").stdout
    assert workspace.cli("validate").returncode == 0, "a decisions file is no spec"

    (workspace.desired / "web.yaml").rename(workspace.desired / "renamed.yaml")  # while no reconciler runs
    workspace.cli("apply", "--wait")
    assert not (workspace.desired / "web.decisions.yaml").exists() and not (workspace.desired / "web.status.yaml").exists()
    assert workspace.decision_record("renamed.yaml", "web")


def test_apply_without_wait_reports_what_its_pass_recorded_without_looking_at_each_workload_again(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing waits on a one-shot apply's judgement of readiness: the failures it prints are the statuses its pass
    just recorded. Each workload was observed and judged a third time for it (the seed, the round, readiness)."""
    import gc

    from click.testing import CliRunner

    import reconciler.control.reconciler as reconciler_module
    from reconciler.cli import main

    workspace.write("web.yaml", workload_yaml("web"))
    workspace.write("ghost.yaml", workload_yaml("ghost").replace(PYTHON, "/nonexistent/bin/ghost"))
    workspace.write("policy.yaml", workspace.desired.joinpath("policy.yaml").read_text()
                    + "      - executable: /nonexistent/bin/ghost\n")
    assert workspace.cli("apply").returncode == 0
    planned: list[str] = []
    plan = reconciler_module.plan
    monkeypatch.setattr(reconciler_module, "plan", lambda parts, desired, key, *rest, **options: (
        planned.append(str(key)), plan(parts, desired, key, *rest, **options))[1])
    monkeypatch.setattr(gc, "freeze", lambda: None)  # what apply does to its own process, not to the test runner's
    again = CliRunner().invoke(main, ["apply", str(workspace.desired), "--state-dir", str(workspace.state)])
    assert again.exit_code == 0, again.output
    assert "Workload/ghost: BackOff: " in again.stderr and "/nonexistent/bin/ghost" in again.stderr, again.stderr
    assert "Workload/web" not in again.stderr, again.stderr
    # the seed (every status before the first write), the round: no third look
    assert {key: planned.count(key) for key in set(planned)} == {"Workload/web": 2, "Workload/ghost": 2,
                                                               "Policy/test-host": 2}, planned
