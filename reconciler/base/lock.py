"""One mutating reconciler per desired-state folder and per state directory.

Two reconcilers on one state directory would race on the same processes and logs; two on one
folder (a systemd daemon and a user's `apply` with another state directory) would each start
the folder's workloads. Locks are flock(2)s: the kernel drops them when a holder dies, however.
A lock name planted as a link (or a FIFO) is refused: a lock taken on a link's target would not exclude a
holder of the real lock, and the holder line written into it would overwrite someone else's file.
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

from reconciler.base.atomic import UnsafeFile, open_regular

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
        # without following a link, never blocking on a FIFO, and only as much as a holder writes (the folder's
        # writer may plant a huge file there)
        fd = open_regular(lock_file, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        written, stat = os.read(fd, 4096).decode(errors="replace"), os.fstat(fd)
    finally:
        os.close(fd)
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
    try:
        descriptor = open_regular(path, os.O_RDWR | os.O_CREAT, 0o600)
    except UnsafeFile as unsafe:
        raise Busy(f"cannot lock: {unsafe}") from None
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(descriptor, 4096, 0).decode("utf-8", "replace").strip() or "another process"
            raise Busy(f"{path} is held by {other}; stop it first (the daemon applies changes itself)") from None
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{holder}\n".encode())
        yield
    finally:
        os.close(descriptor)
