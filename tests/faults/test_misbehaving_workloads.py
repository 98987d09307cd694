"""Workloads that misbehave, each against the real daemon: one ignores SIGTERM (killed after its grace period),
one leaves children behind (the whole group goes), one exits 0 when it should serve (restarted, its exit told),
one crash-loops (backed off, its log kept), one never turns healthy (not Ready, said why, not restarted in a loop)."""

from __future__ import annotations

import os
import time

import psutil

from tests.conftest import Workspace, wait_for, workload_yaml
from tests.faults.conftest import Ledger

STUBBORN = ("import signal, sys, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('ignoring SIGTERM', sys.argv[1:], flush=True)\nwhile True: time.sleep(1)")
FORKS = ("import os, sys, time\nfor _ in range(3):\n    if os.fork() == 0:\n        while True: time.sleep(1)\n"
         "print('parent with 3 children', sys.argv[1:], flush=True)\nwhile True: time.sleep(1)")
EXITS_0 = "print('done already', flush=True)"
CRASHES = "import sys\nprint('crashing', flush=True)\nsys.exit(3)"
HANGS = "import time\nprint('never listens', flush=True)\nwhile True: time.sleep(1)"


def test_workloads_that_misbehave_end_in_explicit_states(workspace: Workspace, ledger: Ledger) -> None:
    def row(fault: str, checked: str) -> None:
        entry = ledger.row(f"workload {fault}", checked)
        entry.runs += 1
        entry.passed += 1

    workspace.write("stubborn.yaml", workload_yaml("stubborn", STUBBORN, ("v1",), terminationGracePeriodSeconds=1))
    workspace.write("forks.yaml", workload_yaml("forks", FORKS, ("v1",)))
    workspace.write("exits.yaml", workload_yaml("exits", EXITS_0))  # restart policy Always, the default
    workspace.write("crashes.yaml", workload_yaml("crashes", CRASHES))
    workspace.write("hangs.yaml", workload_yaml("hangs", HANGS, health={"tcp": {"port": 9}, "periodSeconds": 0.5,
                                                                          "failureThreshold": 2}))
    workspace.start_daemon("--resync", "3600")
    stubborn = wait_for(lambda: workspace.pid("stubborn.yaml", "stubborn"), timeout=20, what="stubborn running")
    forks = wait_for(lambda: workspace.pid("forks.yaml", "forks"), timeout=20, what="forks running")
    wait_for(lambda: len(psutil.Process(forks).children()) == 3, timeout=10, what="its children")
    children = [child.pid for child in psutil.Process(forks).children()]

    workspace.write("stubborn.yaml", workload_yaml("stubborn", STUBBORN, ("v2",), terminationGracePeriodSeconds=1))
    workspace.write("forks.yaml", workload_yaml("forks", FORKS, ("v2",)))
    asked = time.monotonic()
    wait_for(lambda: not psutil.pid_exists(stubborn) or psutil.Process(stubborn).status() == psutil.STATUS_ZOMBIE,
             timeout=10, what="the stubborn one killed")
    took = time.monotonic() - asked
    assert 1.0 <= took < 6.0, f"SIGKILL came {took:.1f}s after the stop (grace 1 s)"
    wait_for(lambda: (workspace.resource_status("stubborn.yaml", "stubborn") or {}).get("pid") not in (None, stubborn),
             timeout=10, what="v2 of the stubborn one")
    row("ignores SIGTERM", f"SIGKILLed {took:.1f}s after the stop (grace 1 s); v2 started")
    wait_for(lambda: not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                             for pid in children), timeout=10, what="the children of the old run gone")
    row("forks children that outlive it", "every child of the old run gone with its group before v2 runs")

    wait_for(lambda: (workspace.resource_status("exits.yaml", "exits") or {}).get("restartCount", 0) >= 2,
                     timeout=30, what="the one that exits 0 restarted")
    shown = workspace.resource_status("exits.yaml", "exits")
    assert shown["lastExit"]["code"] == 0, shown
    row("exits 0 unexpectedly", "restarted (restart policy Always), lastExit code 0 shown")

    wait_for(lambda: (workspace.resource_status("crashes.yaml", "crashes") or {}).get("phase") == "BackOff",
             timeout=30, what="the crash loop backed off")
    crashed = workspace.resource_status("crashes.yaml", "crashes")
    assert crashed["lastExit"]["code"] == 3 and crashed.get("nextRetryTime"), crashed
    logged = workspace.cli("logs", "crashes").stdout
    assert "crashing" in logged
    row("crash-loops", "BackOff with the next start time, exit code 3 shown, its log kept")

    wait_for(lambda: (workspace.condition("hangs.yaml", "hangs") or {}).get("status") == "False"
             and "9" in (workspace.condition("hangs.yaml", "hangs") or {}).get("message", ""),
             timeout=20, what="the hung one not Ready, with the probe's words")
    hung = workspace.pid("hangs.yaml", "hangs")
    time.sleep(2)
    assert workspace.pid("hangs.yaml", "hangs") == hung, "a workload that never turns healthy was restarted in a loop"
    row("hangs (health never passes)", "Ready False with the probe's words; not restarted in a loop")

    modes = {path.name: path.stat().st_mode & 0o777 for path in (workspace.state, workspace.state / "logs",
                                                                  workspace.state / "logs" / "crashes.log",
                                                                  workspace.desired / "crashes.status.yaml",
                                                                  workspace.desired / "crashes.evidence.jsonl")}
    # under root the workloads run as users of their own, who pass through the state dir to their folders, not list it
    state_mode = 0o711 if os.geteuid() == 0 else 0o700
    assert modes == {"state": state_mode, "logs": 0o700, "crashes.log": 0o600, "crashes.status.yaml": 0o644,
                     "crashes.evidence.jsonl": 0o644}, {name: oct(mode) for name, mode in modes.items()}
    modes_row = ledger.row("modes of the files the reconciler writes", "state dir 0700 (0711 as root), logs 0700, "
                                                                        "log files 0600, status and evidence 0644")
    modes_row.runs += 1
    modes_row.passed += 1
