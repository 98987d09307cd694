"""The process driver tells a stop it made from a process that ended by itself (real processes)."""

from __future__ import annotations

import sys
from pathlib import Path

from reconciler.api.kinds import Workload
from reconciler.api.launch import render_launch
from reconciler.api.meta import API_VERSION
from reconciler.drive.process import ProcessDriver
from reconciler.observe.processes import ProcessState
from tests.conftest import wait_for


def run(driver: ProcessDriver, code: str) -> None:
    spec = Workload.model_validate({"apiVersion": API_VERSION, "kind": "Workload", "metadata": {"name": "job"},
                                    "spec": {"command": [sys.executable, "-c", code]}}).spec
    driver.start("job", render_launch(spec, (sys.executable, "-c", code), (), "/", sys.executable), 1)


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
