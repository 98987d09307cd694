"""An idle daemon stays asleep: reading the desired-state folder (as every pass does, as editors and backups do)
and the approvals wakes none of its threads. Counted as the kernel counts wake-ups (voluntary context switches
of every thread of the daemon's process), not timed."""

from __future__ import annotations

import time

from tests.conftest import POLICY_YAML, Workspace, wait_for, workload_yaml
from tests.wakeups import wake_ups

READS = 300


def test_reading_the_folder_and_the_answers_wakes_no_thread_of_the_daemon(workspace: Workspace) -> None:
    workspace.write("policy.yaml", POLICY_YAML)
    spec = workspace.write("app.yaml", workload_yaml("app"))
    daemon = workspace.start_daemon("--resync", "3600")
    wait_for(lambda: (workspace.resource_status("app.yaml", "app") or {}).get("phase") == "Running", 30, what="Running")
    answers = workspace.state / "approvals"
    wait_for(answers.is_dir, 10, what="the approvals folder")
    (answers / "other.json").write_text("{}")  # an answer file as a pass reads it (not one for a workload here)
    time.sleep(1.0)  # the writes above and the start-up's last status write are behind us
    before = wake_ups(daemon.pid)
    for _ in range(READS):  # spaced out, so the kernel cannot fold the events of one read into another's
        spec.read_bytes()
        (answers / "other.json").read_bytes()
        time.sleep(0.002)
    after = wake_ups(daemon.pid)
    # each read opened and closed two watched files: with those events delivered, every read woke the watcher's threads
    assert after - before < READS / 10, f"{after - before} wake-ups over {READS} reads"
