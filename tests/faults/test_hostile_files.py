"""The desired-state folder's files are hostile input too. Names where the reconciler writes, planted as links to
files outside the folder or as FIFOs, are refused with their reason, never written through, never block a pass;
a planted lock link stops `down` rather than letting it truncate the link's target. A sub-folder of specs removed
with `rm -r` under running workloads: they are stopped and the removal is recorded in the host's evidence chain,
with no traceback, and `down` stops everything it can."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import psutil

from reconciler.drive.process import NAME_VARIABLE
from tests.conftest import Workspace, wait_for, workload_yaml
from tests.faults.conftest import Ledger

UNTERMINATED = b"someone else's first line\nsomeone else's last line, no newline"


def host_evidence(workspace: Workspace) -> list[dict[str, Any]]:
    path = workspace.state / "host.evidence.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def running(workspace: Workspace) -> dict[str, int]:
    found = {}
    for process in workspace.owned_processes():
        try:
            found[process.environ().get(NAME_VARIABLE, "")] = process.pid
        except psutil.NoSuchProcess:
            continue  # ended since it was listed: one being stopped
    return found


def test_links_and_fifos_planted_where_the_reconciler_writes_are_refused(workspace: Workspace, ledger: Ledger,
                                                                         tmp_path: Path) -> None:
    row = ledger.row("hostile input: links and FIFOs planted as status, evidence and lock files",
                     "refused with its reason (status, host evidence, daemon log); the link's target byte-identical; "
                     "nothing blocks; the workload runs; `down` refuses a lock link; daemon up, no traceback")
    victims = {name: tmp_path / f"victim-{name}" for name in ("evidence", "status", "lock")}
    for victim in victims.values():
        victim.write_bytes(UNTERMINATED)
    workspace.write("steady.yaml", workload_yaml("steady"))
    workspace.start_daemon("--resync", "2")
    steady = wait_for(lambda: workspace.pid("steady.yaml", "steady"), 30, what="the steady workload")

    (workspace.desired / "web.evidence.jsonl").symlink_to(victims["evidence"])
    (workspace.desired / "web.status.yaml").symlink_to(victims["status"])
    os.mkfifo(workspace.desired / "fifo.evidence.jsonl")
    workspace.write("web.yaml", workload_yaml("web"))
    workspace.write("fifo.yaml", workload_yaml("fifo"))

    wait_for(lambda: {"web", "fifo"} <= running(workspace).keys(), 30, what="web and fifo running")
    refused = wait_for(lambda: "\n".join((workspace.status("fifo.yaml") or {}).get("errors") or []), 30,
                       what="fifo's status naming its refused evidence file")
    assert "fifo.evidence.jsonl is a FIFO, not a regular file: refused" in refused
    wait_for(lambda: {("web.yaml", "decision"), ("web.yaml", "action"), ("fifo.yaml", "decision")} <= {
        (line.get("specFile"), line.get("event")) for line in host_evidence(workspace) if "diverted" in line}, 10,
             what="web's and fifo's evidence in the host chain")
    wait_for(lambda: "web.status.yaml is a symbolic link, not a regular file: refused" in workspace.daemon_log.read_text(),
             10, what="the refused status file in the daemon log")
    said = workspace.daemon_log.read_text()
    assert "web.evidence.jsonl is a symbolic link" in said and "Traceback" not in said
    described = workspace.cli("describe", "fifo", timeout=20)  # reads the evidence for its events: must not block
    assert described.returncode == 0 and "Events" in described.stdout, described.stderr
    assert all(victim.read_bytes() == UNTERMINATED for victim in victims.values())
    assert (workspace.desired / "web.evidence.jsonl").is_symlink() and (workspace.desired / "web.status.yaml").is_symlink()
    assert workspace.pid("steady.yaml", "steady") == steady and workspace._daemon.poll() is None
    verify = workspace.cli("verify", str(workspace.desired), "--state-dir", str(workspace.state))
    assert verify.returncode == 1 and "web.evidence.jsonl: BROKEN" in verify.stdout and "host.evidence.jsonl: OK" in verify.stdout

    workspace.stop_daemon()
    lock = workspace.desired / ".reconciler.lock"
    lock.unlink()
    lock.symlink_to(victims["lock"])
    down = workspace.cli("down")
    assert down.returncode == 1 and ".reconciler.lock is a symbolic link" in down.stderr, down.stderr
    assert victims["lock"].read_bytes() == UNTERMINATED and {"steady", "web", "fifo"} <= running(workspace).keys()
    lock.unlink()
    assert workspace.cli("down").returncode == 0 and not running(workspace)
    assert all(victim.read_bytes() == UNTERMINATED for victim in victims.values())
    row.runs += 4  # an evidence link, a status link, a FIFO, a lock link
    row.passed += 4


def test_a_removed_sub_folder_stops_its_workloads_and_records_it_in_the_host_chain(workspace: Workspace, ledger: Ledger) -> None:
    row = ledger.row("specs' sub-folder removed (rm -r) under running workloads",
                     "its workloads stopped by the daemon, or by `down` when the daemon is away; the removals in the "
                     "host evidence chain (verified); others untouched; no traceback; `down` stops all it can record "
                     "and names the rest")
    for folder, suffix in (("team", ""), ("gone", "-down")):
        (workspace.desired / folder).mkdir()
        for name in ("a", "b"):
            (workspace.desired / folder / f"{name}.yaml").write_text(workload_yaml(f"{name}{suffix}"))
    workspace.write("steady.yaml", workload_yaml("steady"))
    workspace.start_daemon("--resync", "2")
    wait_for(lambda: {"a", "b", "a-down", "b-down", "steady"} <= running(workspace).keys(), 30, what="all running")
    steady = running(workspace)["steady"]

    shutil.rmtree(workspace.desired / "team")
    wait_for(lambda: not {"a", "b"} & running(workspace).keys(), 30, what="team/'s workloads stopped")
    wait_for(lambda: {line["resource"] for line in host_evidence(workspace) if line.get("event") == "action"
                      and line.get("action") == "delete"} == {"Workload/a", "Workload/b"}, 10,
             what="both removals in the host evidence")
    assert "Traceback" not in workspace.daemon_log.read_text()
    assert running(workspace)["steady"] == steady and workspace._daemon.poll() is None

    workspace.stop_daemon(signal.SIGKILL)  # `down` without the daemon: the case that crashed before the rest stopped
    shutil.rmtree(workspace.desired / "gone")
    host_log = workspace.state / "host.evidence.jsonl"
    kept = host_log.rename(workspace.state / "kept.jsonl")
    os.mkfifo(host_log)  # now gone/'s removals cannot be recorded anywhere: they wait, the rest still goes
    down = workspace.cli("down")
    assert down.returncode == 1 and "host.evidence.jsonl is a FIFO" in down.stdout, down.stdout + down.stderr
    assert "Workload/a-down: not removed" in down.stdout and "Workload/steady: removed" in down.stdout
    assert running(workspace).keys() == {"a-down", "b-down"} and "Traceback" not in down.stderr
    host_log.unlink()
    kept.rename(host_log)
    down = workspace.cli("down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert "Traceback" not in down.stderr and not running(workspace)
    removed = {line["resource"] for line in host_evidence(workspace) if line.get("action") == "delete"
               and line.get("event") == "action" and line.get("specFile", "").startswith("gone/")}
    assert removed == {"Workload/a-down", "Workload/b-down"}
    verify = workspace.cli("verify", str(workspace.desired), "--state-dir", str(workspace.state))
    assert verify.returncode == 0 and "host.evidence.jsonl: OK" in verify.stdout, verify.stdout
    row.runs += 2
    row.passed += 2
