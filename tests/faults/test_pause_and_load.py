"""The daemon frozen (SIGSTOP, a laptop's sleep) while its workloads die and specs change: after SIGCONT it
notices and converges. Overload: hundreds of specs at once and a file rewritten 50 times a second: passes
coalesce, `reconciler status` keeps answering, the daemon's memory stays bounded."""

from __future__ import annotations

import os
import signal
import time

import psutil
import yaml

from tests.conftest import PYTHON, Workspace, wait_for, workload_yaml
from tests.faults.conftest import Ledger, runs

SLEEP = "/usr/bin/sleep" if os.path.exists("/usr/bin/sleep") else "/bin/sleep"


def sleeper(name: str, version: str = "3600") -> str:
    return yaml.safe_dump({"apiVersion": "localaistack.dev/v1alpha1", "kind": "Workload", "metadata": {"name": name},
                           "spec": {"command": [SLEEP, version]}}, sort_keys=False)


def trust_sleep(workspace: Workspace) -> None:
    workspace.write("policy.yaml", yaml.safe_dump({
        "apiVersion": "localaistack.dev/v1alpha1", "kind": "Policy", "metadata": {"name": "test-host"},
        "spec": {"native": {"trustedExecutables": [{"executable": PYTHON}, {"executable": os.path.realpath(SLEEP)}]}}}))


def timed_status(workspace: Workspace) -> float:
    started = time.monotonic()
    answer = workspace.cli("status")
    assert answer.returncode == 0, answer.stderr
    return time.monotonic() - started


def test_a_daemon_frozen_while_its_workloads_die_converges_when_it_thaws(workspace: Workspace, ledger: Ledger) -> None:
    frozen_for = runs(5, 60)
    row = ledger.row("daemon SIGSTOPped (sleep/resume analogue)", f"frozen {frozen_for}s while a workload is killed "
                     "and another's spec changes; after SIGCONT: restarted, recreated, within 15 s")
    workspace.write("dies.yaml", workload_yaml("dies"))
    workspace.write("edited.yaml", workload_yaml("edited", args=("v1",)))
    daemon = workspace.start_daemon("--resync", "3600")
    dies = wait_for(lambda: workspace.pid("dies.yaml", "dies"), timeout=20, what="dies running")
    wait_for(lambda: workspace.pid("edited.yaml", "edited"), timeout=20, what="edited running")

    daemon.send_signal(signal.SIGSTOP)
    try:
        os.kill(dies, signal.SIGKILL)
        workspace.write("edited.yaml", workload_yaml("edited", args=("v2",)))
        time.sleep(frozen_for)
    finally:
        daemon.send_signal(signal.SIGCONT)
    thawed = time.monotonic()
    wait_for(lambda: (workspace.pid("dies.yaml", "dies") or dies) != dies, timeout=15, what="the dead one restarted")
    wait_for(lambda: "v2" in " ".join((workspace.resource_status("edited.yaml", "edited") or {}).get("command") or []),
             timeout=15, what="the edited one recreated")
    row.runs += 1
    row.passed += 1
    restart = (workspace.resource_status("dies.yaml", "dies") or {}).get("lastExit") or {}
    assert restart.get("signal") == 9 or "SIGKILL" in str(restart), restart  # what happened meanwhile is told
    ledger.row("daemon SIGSTOPped (sleep/resume analogue)", f"converged {time.monotonic() - thawed:.1f}s after SIGCONT")


def test_hundreds_of_specs_at_once_and_a_file_rewritten_50_times_a_second(workspace: Workspace, ledger: Ledger) -> None:
    count = runs(100, 500)
    row = ledger.row("overload", f"{count} specs appear at once, then 50 edits/s to one file for 10 s: all Running, "
                     "last edit wins, passes coalesce, `status` latency, daemon RSS")
    trust_sleep(workspace)
    workspace.write("edited.yaml", sleeper("edited", "1000"))
    daemon = workspace.start_daemon("--resync", "3600")
    wait_for(lambda: workspace.pid("edited.yaml", "edited"), timeout=30, what="the first workload")
    idle = min(timed_status(workspace) for _ in range(3))
    baseline = psutil.Process(daemon.pid).memory_info().rss

    for number in range(count):
        (workspace.desired / f".w{number}.swp").write_text(sleeper(f"w{number}"))
    for number in range(count):  # renamed into place together: the daemon sees them appear at once
        os.replace(workspace.desired / f".w{number}.swp", workspace.desired / f"w{number}.yaml")
    started = time.monotonic()
    busy = timed_status(workspace)  # while it starts them all
    wait_for(lambda: all(workspace.pid(f"w{n}.yaml", f"w{n}") for n in range(count)), timeout=runs(120, 300),
             interval=0.5, what=f"{count} workloads running")
    all_up = time.monotonic() - started

    edits, latencies = 0, []
    until = time.monotonic() + 10
    while time.monotonic() < until:
        edits += 1
        workspace.write("edited.yaml", sleeper("edited", str(1000 + edits)))
        if edits % 50 == 0:
            latencies.append(timed_status(workspace))
        time.sleep(max(0.0, 0.02 - 0.001))
    wait_for(lambda: f"{1000 + edits}" in " ".join(workspace.resource_status("edited.yaml", "edited").get("command") or []),
             timeout=30, what="the last edit running")
    recreates = workspace.actions("edited.yaml").count("recreate")
    rss = psutil.Process(daemon.pid).memory_info().rss
    assert len(workspace.owned_processes()) == count + 1
    assert recreates < edits / 2, f"{recreates} recreates for {edits} edits: passes did not coalesce"
    worst = max([busy, *latencies])
    row.runs += 1
    row.passed += 1
    ledger.row("overload", f"{count} up in {all_up:.0f}s; {edits} edits -> {recreates} recreates; status "
                           f"{idle:.2f}s idle, {worst:.2f}s worst under load; RSS {baseline >> 20} -> {rss >> 20} MiB")
    assert worst < max(3 * idle, 2.0), f"status took {worst:.2f}s under load ({idle:.2f}s idle)"
    assert rss < baseline + (200 << 20), f"RSS grew from {baseline >> 20} to {rss >> 20} MiB"
