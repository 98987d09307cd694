"""One mutating reconciler per desired-state folder and per state directory.

Two reconcilers on one state directory would race on the same processes and logs; two on one
folder (a systemd daemon and a user's `apply` with another state directory) would each start
the folder's workloads. Locks are flock(2)s: the kernel drops them when a holder dies, however.
"""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import psutil

FOLDER_LOCK = ".reconciler.lock"
STATE_LOCK = "lock"
_HOLDER = re.compile(r"pid (\d+) \('reconciler (\w+)', state (.+)\)")


@dataclass(frozen=True)
class Holder:
    pid: int
    command: str  # run, apply, down, forget
    state_dir: Path
    since: datetime  # when it took the lock


def holder(lock_file: Path) -> Holder | None:
    """Who holds a lock now, read without taking it (a look must never make a concurrent `apply` find it busy):
    the process its holder wrote in, while that process lives and is older than what it wrote. Raises OSError
    when that cannot be told (a lock file another account keeps to itself)."""
    try:
        written, stat = lock_file.read_text(), lock_file.stat()
    except FileNotFoundError:
        return None
    found = _HOLDER.fullmatch(written.strip())
    if found is None:
        return None
    try:
        alive = psutil.Process(int(found[1])).create_time() <= stat.st_mtime + 1.0  # else a later process got the pid
    except psutil.NoSuchProcess:
        return None
    except psutil.AccessDenied:
        alive = True  # another account's process: its age cannot be read, but it lives
    since = datetime.fromtimestamp(stat.st_mtime, timezone.utc)
    return Holder(int(found[1]), found[2], Path(found[3]), since) if alive else None


class Busy(Exception):
    pass


@contextmanager
def exclusive(desired_root: Path, state_dir: Path, command: str) -> Iterator[None]:
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with ExitStack() as stack:
        for path in (state_dir / STATE_LOCK, desired_root / FOLDER_LOCK):
            stack.enter_context(_flock(path, f"pid {os.getpid()} ('reconciler {command}', state {state_dir})"))
        yield


@contextmanager
def _flock(path: Path, holder: str) -> Iterator[None]:
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = path.read_text().strip() or "another process"
            raise Busy(f"{path} is held by {other}; stop it first (the daemon applies changes itself)") from None
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{holder}\n".encode())
        yield
    finally:
        os.close(descriptor)
