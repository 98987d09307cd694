"""Hostile spec files under a running daemon with a workload already running (issue 18, items 2, 3, 4, 8): a link
out of the folder, a FIFO and a socket named *.yaml, a secret-looking number where text belongs, an alias bomb
spread over documents, 10,000 tiny documents in one file. Each is refused with its reason, no byte of a link's
target and no value is repeated in a status file or the daemon's log, passes go on, and a workload declared
elsewhere that is SIGKILLed is restarted promptly (a bounded wait, not a timing of the parse)."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Workspace, wait_for, workload_yaml
from tests.faults.conftest import Ledger
from tests.test_parse_budget import laughs, tiny_models

SECRET, TOKEN = "hunter2-0a1b2c3d4e5f", 8134971574
RESTART_SECONDS = 15  # a restart normally takes about a second; before the budgets it took minutes


def said_about(workspace: Workspace, spec_file: str) -> str:
    return "\n".join((workspace.status(spec_file) or {}).get("errors") or [])


def within(predicate: Callable[[], object], seconds: float, what: str) -> bool:
    try:
        wait_for(predicate, seconds, what=what)
    except AssertionError:
        return False
    return True


def restarted_after_kill(workspace: Workspace, spec_file: str, name: str) -> bool:
    before = wait_for(lambda: workspace.pid(spec_file, name), 30, what=f"{name} running")
    os.kill(before, signal.SIGKILL)
    return within(lambda: (workspace.pid(spec_file, name) or before) != before, RESTART_SECONDS, f"{name} restarted")


def test_a_huge_file_never_delays_the_restart_of_a_workload_declared_elsewhere(workspace: Workspace, ledger: Ledger) -> None:
    row = ledger.row("hostile input: parse cost (an alias bomb over 12 and 30 documents, 10,000 documents in one file)",
                     "refused by the per-file budget with its reason; a workload declared elsewhere SIGKILLed is "
                     f"restarted within {RESTART_SECONDS} s; daemon up")
    workspace.write("steady.yaml", workload_yaml("steady"))
    workspace.start_daemon("--resync", "2")
    wait_for(lambda: workspace.pid("steady.yaml", "steady"), 30, what="the steady workload")
    workspace.write("huge.yaml", tiny_models(10_000).decode())
    workspace.write("bombs.yaml", "---\n".join([laughs(3, "l")] * 12))
    workspace.write("aliases.yaml", "---\n".join([laughs(3, "l")] * 30))
    wait_for(lambda: (workspace.desired / "huge.status.yaml").exists(), 60, what="the huge file loaded")
    row.runs += 1
    restarted = restarted_after_kill(workspace, "steady.yaml", "steady")
    refused = [file for file, expected in (("huge.yaml", "the file holds more than 100 documents"),
                                           ("bombs.yaml", "the file expands to more than 50000 values (an alias bomb?)"),
                                           ("aliases.yaml", "the file uses more than 1000 aliases"))
               if within(lambda: expected in said_about(workspace, file), 30, f"{file} refused")]
    row.passed += restarted and len(refused) == 3 and workspace._daemon.poll() is None
    assert restarted, f"a workload in another file was not restarted within {RESTART_SECONDS} s of its SIGKILL"
    assert refused == ["huge.yaml", "bombs.yaml", "aliases.yaml"]
    assert workspace._daemon.poll() is None


def test_links_out_special_files_and_secret_values_are_refused_and_never_repeated(
        workspace: Workspace, ledger: Ledger, tmp_path: Path) -> None:
    files = ledger.row("hostile input: spec files that are links out of the folder, FIFOs, sockets",
                       "refused unopened with the reason; no byte of the target in a status file or the log; "
                       "passes go on (a workload beside them starts, a killed one restarts)")
    values = ledger.row("hostile input: secret-looking values where another type belongs",
                        "named by field and type; the value in no status file, validate output or log line")
    outside = tmp_path / "elsewhere.yaml"
    outside.write_text(f"apiVersion: localaistack.dev/v1alpha1\nkind: {SECRET}\nspec: {{a: !!int {SECRET}}}\n")
    workspace.write("steady.yaml", workload_yaml("steady"))
    workspace.start_daemon("--resync", "2")
    wait_for(lambda: workspace.pid("steady.yaml", "steady"), 30, what="the steady workload")
    os.symlink(outside, workspace.desired / "link.yaml")
    os.mkfifo(workspace.desired / "pipe.yaml")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(workspace.desired / "sock.yaml"))
    with listener:
        workspace.write("token.yaml", workload_yaml("token").replace("spec:\n", f"spec:\n  env:\n    HF_TOKEN: {TOKEN}\n"))
        workspace.write("later.yaml", workload_yaml("later"))
        expected = {"link.yaml": "refused, not opened: it is a symbolic link to a file outside the desired-state folder",
                    "pipe.yaml": "refused, not opened: it is a FIFO, not a regular file",
                    "sock.yaml": "refused, not opened: it is a socket, not a regular file",
                    "token.yaml": "spec.env.HF_TOKEN: expected a valid string, got a number"}
        for file, reason in expected.items():
            wait_for(lambda: reason in said_about(workspace, file), 30, what=f"{file} refused: {reason}")
        started = wait_for(lambda: workspace.pid("later.yaml", "later"), 30, what="a workload written after them")
        restarted = restarted_after_kill(workspace, "steady.yaml", "steady")
        validated = workspace.cli("validate", timeout=60)
    written = [path.read_text() for path in workspace.desired.glob("*.status.yaml")]
    written += [workspace.daemon_log.read_text(), validated.stdout, validated.stderr]
    leaked = [text for text in written if SECRET in text or str(TOKEN) in text]
    files.runs += 1
    files.passed += bool(started) and restarted and not leaked and workspace._daemon.poll() is None
    values.runs += 1
    values.passed += not leaked and "got a number" in validated.stdout
    assert not leaked, "a link's target or a value was repeated"
    assert started and restarted and workspace._daemon.poll() is None
