"""Binds the gate cannot see in a spec, under a running daemon: a trusted program whose own args, a late child or
a child that left its process tree listen beyond loopback. Each is seen, stopped with ExposureObserved and the
socket in its status, and not started again; the daemon stays up and the steady workload is untouched."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

import psutil

from reconciler.drive.process import NAME_VARIABLE
from tests.conftest import Workspace, wait_for, workload_yaml
from tests.faults.conftest import Ledger, runs
from tests.test_engines import free_port
from tests.test_listening import http_server, ipv6_works

BIND_LATER_IN_A_CHILD = textwrap.dedent("""\
    import socket, subprocess, sys, time
    subprocess.Popen([sys.executable, "-c", "import socket, time; time.sleep(1.5); "
                      "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 0)); time.sleep(600)"])
    time.sleep(600)
    """)
BIND_FROM_AN_ESCAPED_CHILD = textwrap.dedent("""\
    import os, socket, time
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            server = socket.create_server(("0.0.0.0", 0))
            time.sleep(600)
        os._exit(0)
    time.sleep(600)
    """)


@dataclass(frozen=True)
class Slip:
    name: str
    spec: str
    seen: str  # in the Listening condition's message


def slips(round_: int) -> list[Slip]:
    v4, v6 = free_port(), free_port()
    named = {kind: f"{kind}-{round_}" for kind in ("args-v4", "args-v6", "late-child", "escaped-child")}
    return [
        Slip(named["args-v4"], http_server(named["args-v4"], "0.0.0.0", v4), f"0.0.0.0:{v4}/tcp"),
        *([Slip(named["args-v6"], http_server(named["args-v6"], "::", v6), f"[::]:{v6}/tcp")] if ipv6_works() else []),
        Slip(named["late-child"], workload_yaml(named["late-child"], BIND_LATER_IN_A_CHILD), "/udp: pid"),
        Slip(named["escaped-child"], workload_yaml(named["escaped-child"], BIND_FROM_AN_ESCAPED_CHILD), "/tcp: pid"),
    ]


def listening(workspace: Workspace, name: str) -> dict | None:
    status = workspace.resource_status(f"{name}.yaml", name) or {}
    return next((c for c in status.get("conditions", []) if c["type"] == "Listening"), None)


def running_names() -> set[str]:
    names = set()
    for process in psutil.process_iter():
        try:
            names.add(process.environ().get(NAME_VARIABLE))
        except psutil.Error:
            continue
    return names


def test_binds_that_slip_past_the_gate_are_seen_and_stopped(workspace: Workspace, ledger: Ledger) -> None:
    workspace.write("steady.yaml", workload_yaml("steady"))
    workspace.start_daemon("--resync", "600")  # the listen watch sees them, not a resync
    steady = wait_for(lambda: workspace.pid("steady.yaml", "steady"), 30, what="the steady workload")
    for round_ in range(runs(1, 5)):
        cases = slips(round_)
        for case in cases:
            workspace.write(f"{case.name}.yaml", case.spec)
        for case in cases:
            row = ledger.row("hostile input: binds slipped past the gate (own args v4/v6, a late child's UDP, a child "
                             "that left its tree)", "seen within seconds, stopped with ExposureObserved and the socket "
                             "in status; not started again; daemon up; the steady workload untouched")
            row.runs += 1
            found = wait_for(lambda: (condition := listening(workspace, case.name)) and
                             condition["reason"] == "ExposureObserved" and condition, 30, what=f"{case.name} stopped")
            gone = wait_for(lambda: case.name not in running_names(), 15, what=f"{case.name}'s processes gone")
            once = workspace.actions(f"{case.name}.yaml") == ["create", "stop"]
            row.passed += case.seen in found["message"] and found["message"].startswith("stopped: ") and gone and once
        for case in cases:
            (workspace.desired / f"{case.name}.yaml").unlink()
        wait_for(lambda: not {case.name for case in cases} & running_names(), 30, what="the slips removed")
        wait_for(lambda: not any(listening(workspace, case.name) for case in cases), 30, what="their statuses gone")
    assert row.passed == row.runs, f"{row.runs - row.passed} of {row.runs} slips were not seen and stopped as expected"
    assert workspace.pid("steady.yaml", "steady") == steady and workspace._daemon.poll() is None
    assert not [line for line in workspace.evidence("steady.yaml") if line["event"] == "exposure-observed"]
