"""The system clock stepped a day forward, then back, under a running daemon (libfaketime moves its wall clock
only): back-off waits are neither skipped nor stretched, a server still starting is not killed for a timeout
it has not reached, and health probes go on."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.conftest import Workspace, wait_for, workload_yaml
from tests.faults.conftest import Ledger
from tests.test_engines import free_port

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
BACKOFF = 6.0
CRASHER = "import sys; sys.exit(3)"
HEALTHY_WHILE_FLAG = """
import http.server, os, sys
flag, port = sys.argv[1], int(sys.argv[2])
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if os.path.exists(flag) else 503); self.end_headers()
    def log_message(self, *args): pass
http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
"""


class StepClock:
    """The daemon's wall clock, offset by whatever the file says ('+1d', '-1d'); its monotonic clocks stay true."""

    def __init__(self, folder: Path) -> None:
        if not LIBFAKETIME.exists():
            raise RuntimeError(f"no {LIBFAKETIME}: install Debian's faketime (the README's test command needs it)")
        self.file = folder / "faketime"
        self.file.write_text("+0\n")

    def env(self) -> dict[str, str]:
        return os.environ | {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME_TIMESTAMP_FILE": str(self.file),
                             "FAKETIME_NO_CACHE": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}

    def step(self, offset: str) -> None:
        self.file.write_text(offset + "\n")


class Starts:
    """When (on the test's own monotonic clock) each new start of a workload was seen."""

    def __init__(self, workspace: Workspace, spec_file: str, name: str) -> None:
        self.workspace, self.spec_file, self.name = workspace, spec_file, name
        self.count, self.seen_at = self._count(), [time.monotonic()]

    def _count(self) -> int:
        return (self.workspace.resource_status(self.spec_file, self.name) or {}).get("restartCount", 0)

    def watch(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            count = self._count()
            if count > self.count:
                self.count, self.seen_at = count, [*self.seen_at, time.monotonic()]
            time.sleep(0.1)

    def gaps(self) -> list[float]:
        return [later - earlier for earlier, later in zip(self.seen_at[1:], self.seen_at[2:])]


def test_a_stepped_system_clock_neither_skips_nor_stalls_any_timer(workspace: Workspace, ledger: Ledger,
                                                                  tmp_path: Path) -> None:
    row = ledger.row("system clock stepped +1 day, then -1 day", "back-off gaps stay the back-off; a starting "
                     "server is not timed out early; probes go on and catch an unhealthy server")
    clock, flag, port = StepClock(tmp_path), tmp_path / "healthy", free_port()
    flag.touch()
    backoff = {"backoff": {"initialSeconds": BACKOFF, "maxSeconds": BACKOFF}}
    workspace.write("crasher.yaml", workload_yaml("crasher", CRASHER, restart=backoff))
    workspace.write("loading.yaml", workload_yaml("loading", health={"tcp": {"port": free_port()}, "periodSeconds": 1,
                                                                      "startupSeconds": 40}))
    workspace.write("prober.yaml", workload_yaml("prober", HEALTHY_WHILE_FLAG, (str(flag), str(port)), health={
        "http": {"path": "/health", "port": port}, "periodSeconds": 1, "failureThreshold": 2}))
    workspace.start_daemon("--resync", "3600", env=clock.env())
    wait_for(lambda: (workspace.condition("prober.yaml", "prober") or {}).get("status") == "True", 30, what="prober Ready")
    wait_for(lambda: (workspace.resource_status("crasher.yaml", "crasher") or {}).get("restartCount", 0) >= 1, 30,
             what="the crasher's first restart")
    loading, prober = workspace.pid("loading.yaml", "loading"), workspace.pid("prober.yaml", "prober")
    assert loading and prober
    starts = Starts(workspace, "crasher.yaml", "crasher")

    clock.step("+1d")
    starts.watch(2 * BACKOFF + 1)
    forward_ok = workspace.pid("loading.yaml", "loading") == loading and len(starts.seen_at) >= 2

    clock.step("-1d")
    flag.unlink()  # the prober's server turns unhealthy while the clock is a day behind
    starts.watch(2 * BACKOFF + 1)
    unhealthy = wait_for(lambda: workspace.pid("prober.yaml", "prober") not in (None, prober), 15,
                         what="the unhealthy prober restarted")
    backward_ok = bool(unhealthy) and len(starts.seen_at) >= 4 and workspace.pid("loading.yaml", "loading") == loading

    gaps = starts.gaps()
    row.runs += 2
    row.passed += forward_ok + backward_ok
    assert len(starts.seen_at) >= 4, f"the crasher stalled: starts seen at {starts.seen_at}"
    assert all(gap >= BACKOFF - 1.0 for gap in gaps), f"a back-off was cut short: gaps {gaps}"
    assert all(gap <= 2 * BACKOFF for gap in gaps), f"a back-off was stretched: gaps {gaps}"
    assert workspace.pid("loading.yaml", "loading") == loading, workspace.resource_status("loading.yaml", "loading")
    assert forward_ok and backward_ok
