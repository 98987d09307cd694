"""A full disk under the desired-state folder and the state directory (a 3 MiB tmpfs): no status file is ever
torn, the daemon stays up and says why, and once space returns it catches up on what it could not write."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from reconciler.record.evidence import verify_chain
from tests.conftest import POLICY_YAML, Workspace, wait_for, workload_yaml
from tests.faults.conftest import Ledger

QUIET = "import time\nwhile True: time.sleep(1)"  # writes nothing: a full disk must not be what stops it


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0755", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=False)


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as handle:  # unbuffered: nothing is left to flush on close
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError as error:
            assert error.errno == errno.ENOSPC
    return filler


def parsed(workspace: Workspace) -> bool:
    return all(isinstance(yaml.safe_load(path.read_text()), dict) for path in workspace.desired.glob("*.status.yaml"))


def test_a_full_disk_tears_no_file_keeps_the_daemon_up_and_is_caught_up_on(small_disk: Path, ledger: Ledger,
                                                                          tmp_path: Path) -> None:
    row = ledger.row("disk full under status, evidence, records and logs", "status files always parse; daemon up; "
                     "a clear message; after space returns: converged, chains verify")
    workspace = Workspace(small_disk)
    workspace.daemon_log = tmp_path / "daemon.log"  # the journal, elsewhere: it must be able to say why
    try:
        workspace.write("policy.yaml", POLICY_YAML)
        workspace.write("app.yaml", workload_yaml("app", QUIET, ("v1",)))
        daemon = workspace.start_daemon("--resync", "1")
        first = wait_for(lambda: workspace.pid("app.yaml", "app"), timeout=30, what="v1 running")

        daemon.send_signal(signal.SIGSTOP)  # the edit lands while there is room for it, the writes after it do not
        workspace.write("app.yaml", workload_yaml("app", QUIET, ("v2",)))
        filler = fill(small_disk)
        daemon.send_signal(signal.SIGCONT)
        for _ in range(20):  # a few seconds of passes on a full disk
            assert parsed(workspace), "a status file was torn"
            assert daemon.poll() is None, "the daemon died of a full disk"
            time.sleep(0.2)
        told = workspace.daemon_log.read_text()
        assert "cannot write its records ([Errno 28] No space left on device" in told, told[-2000:]
        assert [process.pid for process in workspace.owned_processes()] == [first], "v1 must run on, untouched"

        filler.unlink()
        wait_for(lambda: "v2" in " ".join((workspace.resource_status("app.yaml", "app") or {}).get("command") or []),
                 timeout=30, what="v2 running once space returned")
        assert workspace.pid("app.yaml", "app") != first and len(workspace.owned_processes()) == 1
        assert all(verify_chain(chain).ok for chain in workspace.desired.glob("*.evidence.jsonl"))
        row.runs += 1
        row.passed += 1
    finally:
        workspace.cleanup()
