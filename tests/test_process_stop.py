"""The process driver tells a stop it made from a process that ended by itself, and one exit from another (real
processes)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from reconciler.api.kinds import Workload
from reconciler.api.launch import render_launch
from reconciler.api.meta import API_VERSION
from reconciler.api.resource_record import ResourceRecord
from reconciler.diff.plan import note_observations
from reconciler.drive.process import ProcessDriver
from reconciler.observe.processes import ProcessState
from tests.conftest import PYTHON, wait_for


def job(code: str) -> Workload:
    return Workload.model_validate({"apiVersion": API_VERSION, "kind": "Workload", "metadata": {"name": "job"},
                                    "spec": {"command": [sys.executable, "-c", code]}})


def run(driver: ProcessDriver, code: str) -> None:
    driver.start("job", render_launch(job(code).spec, (sys.executable, "-c", code), (), "/", sys.executable), 1)


def test_a_stop_the_reconciler_made_is_marked_and_an_exit_of_its_own_is_not(tmp_path: Path) -> None:
    driver = ProcessDriver(tmp_path)
    run(driver, "import time; time.sleep(60)")
    stopped = driver.stop("job", grace_seconds=5.0, forget=False)
    assert stopped is not None and stopped.stopped_by_reconciler and stopped.signal == 15
    assert driver.observe("job").record.exit.stopped_by_reconciler  # type: ignore[union-attr]
    run(driver, "raise SystemExit(3)")
    ended = wait_for(lambda: (seen := driver.observe("job")).state is ProcessState.exited and seen, timeout=10,
                     what="the exit")
    assert ended.record.exit.code == 3 and not ended.record.exit.stopped_by_reconciler
    assert driver.stop("job", grace_seconds=1.0, forget=False).stopped_by_reconciler is False  # it had already ended


def test_an_exit_no_reconciler_noted_is_one_exit_however_often_it_is_looked_at(tmp_path: Path) -> None:
    """Each look at a process whose exit is not on record yet takes its finish time anew: an exit identified by that
    time would be counted again on every look (as one identified by a converted engine time was, container side)."""
    crash = "import time; time.sleep(0.5); raise SystemExit(3)"
    # a reconciler that starts it and is gone before it ends (killed; this test's pidfd watcher is not its)
    starter = (f"import sys; from pathlib import Path; from tests.test_process_stop import run; "
               f"from reconciler.drive.process import ProcessDriver; run(ProcessDriver(Path({str(tmp_path)!r})), {crash!r})")
    subprocess.run([PYTHON, "-c", starter], check=True, timeout=30)
    looks = [ProcessDriver(tmp_path, readonly=True) for _ in range(2)]
    first = wait_for(lambda: (seen := looks[0].observe("job")).state is ProcessState.exited and seen.record.exit,
                     timeout=10, what="the exit")
    again = looks[1].observe("job").record.exit  # type: ignore[union-attr]
    assert again is not None and again.finished_at != first.finished_at  # what made it look like another exit
    workload = job(crash)
    record = ResourceRecord(kind="Workload", name="job", source="job.yaml", generation=1, spec_hash="h",
                            resource=workload.model_dump(mode="json", by_alias=True), created_at=datetime.now(timezone.utc))
    for exit_info in (first, again):
        record = note_observations(record, 1, exit_info, workload)
    assert record.consecutive_failures == 1, "one exit is one failure, however often it is looked at"


def test_a_run_of_another_boot_with_the_same_pid_and_start_tick_is_another_exit(tmp_path: Path) -> None:
    """Pid and start tick repeat across reboots (a service started early in each boot): the launch's nonce tells
    the runs apart, or the later run's exit would be taken for the earlier one's and not counted."""
    driver = ProcessDriver(tmp_path)
    run(driver, "raise SystemExit(3)")
    first = wait_for(lambda: (seen := driver.observe("job")).state is ProcessState.exited and seen.record, timeout=10,
                     what="the exit")
    next_boot = first.model_copy(update={"nonce": "launched-after-the-reboot", "exit": None})
    again = ProcessDriver(tmp_path, readonly=True)._note_exit(next_boot).exit
    assert again is not None and first.exit is not None and not again.same_exit(first.exit)


def test_a_record_replaced_within_one_timestamp_tick_is_a_new_records_version(tmp_path: Path) -> None:
    """The listen watch maps sockets again when a record changes; a filesystem's coarse timestamps can give an
    atomic replacement the mtime of the record it replaced, never its inode."""
    driver = ProcessDriver(tmp_path)
    run(driver, "import time; time.sleep(60)")
    try:
        path = next((tmp_path / "processes").glob("*.json"))
        before, stat = driver.records_version(), path.stat()
        replacement = path.with_suffix(".new")
        replacement.write_bytes(path.read_bytes())
        os.utime(replacement, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        os.replace(replacement, path)
        assert driver.records_version() != before
    finally:
        driver.stop("job", grace_seconds=1.0, forget=True)
