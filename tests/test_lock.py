"""Who holds a reconciler's lock, read without taking it: real processes, real lock files."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reconciler.base.lock import STATE_LOCK, exclusive, holder


def test_the_holder_is_named_while_it_lives_and_forgotten_once_it_is_gone(tmp_path: Path) -> None:
    folder, state = tmp_path / "desired", tmp_path / "state"
    folder.mkdir()
    with exclusive(folder, state, "run"):
        held = holder(state / STATE_LOCK)
        assert held is not None and (held.pid, held.command, held.state_dir) == (os.getpid(), "run", state)
    assert holder(state / STATE_LOCK) is not None, "this process still lives: the file alone cannot tell it let go"

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (state / STATE_LOCK).write_text(f"pid {gone.pid} ('reconciler run', state {state})\n")
    assert holder(state / STATE_LOCK) is None, "a holder that exited holds nothing"
    assert holder(tmp_path / "absent") is None


def test_a_pid_taken_by_a_later_process_is_not_the_holder(tmp_path: Path) -> None:
    lock = tmp_path / STATE_LOCK
    lock.write_text(f"pid {os.getpid()} ('reconciler run', state {tmp_path})\n")
    before = time.time() - 3600  # written an hour before this process started
    os.utime(lock, (before, before))
    assert holder(lock) is None


def test_a_lock_that_cannot_be_read_is_not_taken_for_no_daemon(tmp_path: Path) -> None:
    (tmp_path / STATE_LOCK).mkdir()  # unreadable as a file (root reads any mode, so a folder stands in)
    with pytest.raises(OSError):
        holder(tmp_path / STATE_LOCK)
